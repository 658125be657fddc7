"""VAR's sampling inside a step: the linear guidance ramp, and one codebook index per token,
picked by the portable or the official sampler (with upstream's soft code mix as an option)."""

from __future__ import annotations

import torch

from ..sampling import SamplingSettings, filter_logits, portable_sample


def guidance_weight(cfg: float, step: int, steps: int) -> float:
    """The linear guidance ramp: 0 at the first step, `cfg` at the last."""
    return cfg * step / (steps - 1)


def apply_guidance(logits: torch.Tensor, t: float) -> torch.Tensor:
    """Combine a (2B, ...) conditional-then-unconditional batch into B guided logits."""
    b = logits.shape[0] // 2
    return (1 + t) * logits[:b] - t * logits[b:]


def smooth_tau(ratio: float) -> float:
    """Temperature of the `more_smooth` soft code mix, annealed over the steps."""
    return max(0.27 * (1 - ratio * 0.95), 0.005)


def sample_step(logits: torch.Tensor, noise: torch.Tensor | torch.Generator, settings: SamplingSettings,
                ratio: float, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick tokens (B, n) and their code vectors (B, n, Cvae) from guided logits (B, n, V).

    `noise` is a uniform (B, n) tensor for the portable sampler or a torch.Generator for the
    official one.
    """
    if not isinstance(noise, torch.Generator):
        idx = portable_sample(logits, noise, settings.top_k, settings.top_p)
        return idx, torch.nn.functional.embedding(idx, codebook)
    b, n, vocab = logits.shape
    filtered = filter_logits(logits, settings.top_k, settings.top_p)
    probs = filtered.softmax(dim=-1).view(-1, vocab)
    idx = torch.multinomial(probs, num_samples=1, replacement=True, generator=noise).view(b, n)
    if settings.more_smooth:
        gumbel = -torch.empty_like(filtered).exponential_(generator=noise).log()
        soft = ((filtered.mul(1 + ratio) + gumbel) / smooth_tau(ratio)).softmax(dim=-1)
        return idx, soft @ codebook.unsqueeze(0)
    return idx, torch.nn.functional.embedding(idx, codebook)
