"""STAR's "stable sampling": the late scales of the sampler model, filled over masked sub-steps.

At a scale from `sampler_from` on, the main transformer runs once; then over S sub-steps (8, or 15
past scale 12) the positions are unmasked in arccos-scheduled counts. The first five sub-steps of
scales below 13 draw tokens from the main head's (ramped-guidance) logits and first unmask the
most confident positions; every other sub-step asks the sampler head, given the codes unmasked so
far, with the full guidance. The first five sub-steps then pick positions at random, the rest by
confidence, always among the still-masked ones.

Two ways to draw, as for every family:
- `official` draws exactly what upstream's loop draws: tokens from the step's torch.Generator,
  and from a second CPU generator seeded as the demo seeds torch's global one
  (`torch.manual_seed(seed)`), both the scheduler's discarded (2B, l) draw and the random
  confidences;
- `portable` takes (B, `substep_noise`) uniforms per scale: one per token per sub-step, then one
  per position for each random-confidence sub-step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..sampling import SamplingSettings, filter_logits, portable_sample
from ..var.sampling import apply_guidance

RANDOM_SUBSTEPS = 5          # sub-steps whose positions are chosen at random
MAIN_HEAD_BELOW = 13         # scales below it take their first sub-steps' tokens from the main head


def substeps(step: int) -> int:
    return 15 if step > 12 else 8


def unmask_counts(count: int, tokens: int) -> list[int]:
    """Positions unmasked at each of `count` sub-steps: an arccos schedule, at least one each, the
    last taking the remainder (computed in float32 as upstream does)."""
    r = torch.linspace(1, 0, count)
    share = torch.arccos(r) / (math.pi * 0.5)
    n = ((share / share.sum()) * tokens).round().int()
    n[n == 0] = 1
    n[-1] += tokens - n.sum()
    return n.tolist()


def substep_noise(step: int, tokens: int) -> int:
    """Uniforms the portable sampler takes per image at a stable-sampling scale."""
    s = substeps(step)
    return tokens * (s + min(s, RANDOM_SUBSTEPS))


@dataclass
class Draws:
    """Where one scale's randomness comes from."""

    generator: torch.Generator | None = None      # official: the step's generator (tokens)
    global_rng: torch.Generator | None = None     # official: the demo's global CPU generator
    uniforms: torch.Tensor | None = None          # portable: (B, substep_noise)


def draw(logits: torch.Tensor, t: float, settings: SamplingSettings, draws: Draws, sub: int,
         codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Guided tokens (B, l), their codes (B, l, Cvae) and their probabilities (B, l, 1)."""
    guided = apply_guidance(logits, t)
    probs = filter_logits(guided, settings.top_k, settings.top_p).softmax(dim=-1)
    b, n, vocab = probs.shape
    if draws.uniforms is None:
        idx = torch.multinomial(probs.view(-1, vocab), 1, replacement=True, generator=draws.generator).view(b, n)
    else:
        idx = portable_sample(guided, draws.uniforms[:, sub * n:(sub + 1) * n], settings.top_k, settings.top_p)
    return idx, torch.nn.functional.embedding(idx, codebook), torch.gather(probs, 2, idx[..., None])


def random_confidence(shape: torch.Size, draws: Draws, sub: int, count: int, device: torch.device) -> torch.Tensor:
    if draws.uniforms is None:
        return torch.rand(shape, generator=draws.global_rng).to(device)
    n = shape[1]
    start = (count + sub) * n
    return draws.uniforms[:, start:start + n].to(torch.float32).reshape(shape)


def unmask(mask: torch.Tensor, conf: torch.Tensor, n: int) -> torch.Tensor:
    """The mask with the `n` most confident positions of each row set (torch.topk's tie order)."""
    picked = torch.topk(conf.view(conf.shape[0], -1), k=n, dim=-1).indices
    return mask.scatter(1, picked, 1.0)


Trace = Callable[[int, int, torch.Tensor, torch.Tensor], None]


def stable_scale(step: int, pn: int, logits: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor],
                 t: float, settings: SamplingSettings, draws: Draws, codebook: torch.Tensor,
                 trace: Trace | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens (B, l) and codes (B, l, Cvae) of one stable-sampling scale. `logits` are the main
    head's (2B, l, V); `head(codes)` gives the sampler head's for the codes unmasked so far;
    `trace(step, sub, tokens, mask)` sees every sub-step's draw and mask."""
    b, l = logits.shape[0] // 2, pn * pn
    count = substeps(step)
    counts = unmask_counts(count, l)
    codes = codebook.new_zeros(b, l, codebook.shape[1])
    tokens = torch.zeros(b, l, dtype=torch.long, device=logits.device)
    mask = codebook.new_zeros(b, l)
    for sub in range(count):
        if draws.global_rng is not None:
            torch.rand((2 * b, l), generator=draws.global_rng)       # the scheduler's draw, discarded
        n = counts[sub]
        if sub < RANDOM_SUBSTEPS and step < MAIN_HEAD_BELOW:
            idx, emb, conf = draw(logits, t, settings, draws, sub, codebook)
            mask, codes, tokens = _fill(mask, unmask(mask, conf, n), codes, tokens, idx, emb)
        else:
            idx, emb, conf = draw(head(codes * mask[..., None]), settings.cfg, settings, draws, sub, codebook)
        if sub < RANDOM_SUBSTEPS:
            conf = random_confidence(conf.shape, draws, sub, count, conf.device)
        mask, codes, tokens = _fill(mask, unmask(mask, conf * (1 - mask[..., None]), n), codes, tokens, idx, emb)
        if trace is not None:
            trace(step, sub, idx, mask)
    return tokens, codes


def _fill(mask: torch.Tensor, new_mask: torch.Tensor, codes: torch.Tensor, tokens: torch.Tensor,
          idx: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Add the codes of the newly unmasked positions (upstream adds emb * (new - old))."""
    fresh = new_mask - mask
    return new_mask, codes + emb * fresh[..., None], torch.where(fresh.bool(), idx, tokens)
