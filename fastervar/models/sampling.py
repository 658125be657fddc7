"""Token sampling inside a scale step: guidance, top-k/top-p filtering and the two samplers.

`portable` is Gumbel-max over the filtered logits, driven by supplied uniform noise, so any backend
given the same noise picks the same tokens. `official` draws with a torch.Generator in the same
order and with the same ops as the upstream VAR sampler, for comparisons with published numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import FastervarError

SAMPLERS = ("official", "portable")


@dataclass(frozen=True)
class SamplingSettings:
    """Guidance and filtering; the defaults are the upstream FID recipe."""

    cfg: float = 1.5
    top_k: int = 900
    top_p: float = 0.96
    more_smooth: bool = False
    sampler: str = "portable"

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise FastervarError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.top_k < 0:
            raise FastervarError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise FastervarError(f"top_p must be in [0, 1], got {self.top_p}")
        if self.cfg < 0:
            raise FastervarError(f"cfg must be >= 0, got {self.cfg}")


def guidance_weight(cfg: float, step: int, steps: int) -> float:
    """The linear guidance ramp: 0 at the first step, `cfg` at the last."""
    return cfg * step / (steps - 1)


def apply_guidance(logits: torch.Tensor, t: float) -> torch.Tensor:
    """Combine a (2B, ...) conditional-then-unconditional batch into B guided logits."""
    b = logits.shape[0] // 2
    return (1 + t) * logits[:b] - t * logits[b:]


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set everything outside the top-k and the top-p nucleus to -inf (the largest always stays)."""
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:                     # k >= vocab keeps everything: skip the sort
        kth = logits.topk(top_k, dim=-1, largest=True, sorted=False)[0].amin(dim=-1, keepdim=True)
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if top_p > 0:
        sorted_logits, order = logits.sort(dim=-1, descending=False)
        drop_sorted = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        drop_sorted[..., -1:] = False
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), -torch.inf)
    return logits


def gumbel_from_uniform(u: torch.Tensor) -> torch.Tensor:
    return -torch.log(-torch.log(u))


def smooth_tau(ratio: float) -> float:
    """Temperature of the `more_smooth` soft code mix, annealed over the steps."""
    return max(0.27 * (1 - ratio * 0.95), 0.005)


def sample_step(logits: torch.Tensor, noise: torch.Tensor | torch.Generator, settings: SamplingSettings,
                ratio: float, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick tokens (B, n) and their code vectors (B, n, Cvae) from guided logits (B, n, V).

    `noise` is a uniform (B, n, V) tensor for the portable sampler or a torch.Generator for the
    official one.
    """
    b, n, vocab = logits.shape
    filtered = filter_logits(logits, settings.top_k, settings.top_p)
    gumbel = None
    if isinstance(noise, torch.Generator):
        probs = filtered.softmax(dim=-1).view(-1, vocab)
        idx = torch.multinomial(probs, num_samples=1, replacement=True, generator=noise).view(b, n)
        if settings.more_smooth:
            gumbel = -torch.empty_like(filtered).exponential_(generator=noise).log()
    else:
        gumbel = gumbel_from_uniform(noise.to(filtered.dtype))
        idx = (filtered + gumbel).argmax(dim=-1)
    if settings.more_smooth:
        soft = ((filtered.mul(1 + ratio) + gumbel) / smooth_tau(ratio)).softmax(dim=-1)
        return idx, soft @ codebook.unsqueeze(0)
    return idx, torch.nn.functional.embedding(idx, codebook)
