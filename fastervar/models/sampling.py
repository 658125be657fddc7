"""Sampling settings and the two samplers' building blocks, shared by every family.

`portable` inverts the CDF of the filtered distribution at one supplied uniform per token: any
backend given the same noise picks the same tokens, and the noise is (B, n), not (B, n, V). It
filters over the top-k candidates only (TopK, then top-p on those k), at most `CANDIDATE_CAP`
of them, so the graphs stay within TensorRT's TopK limit. `official` draws with a
torch.Generator in the same order and with the same ops as the upstream samplers, for
comparisons with published numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import FastervarError

SAMPLERS = ("official", "portable")
# TensorRT builds TopK only for k <= 3840; the portable sampler never asks for more candidates.
CANDIDATE_CAP = 3840
# The portable sampler's probability resolution: sums of up to 2^22 units stay exact in float32.
PROBABILITY_UNITS = float(2 ** 22)


@dataclass(frozen=True)
class SamplingSettings:
    """Guidance, temperature and filtering, for every family; the defaults are VAR's upstream FID
    recipe, and each family names its own published defaults (`default_settings`)."""

    cfg: float = 1.5
    top_k: int = 900
    top_p: float = 0.96
    more_smooth: bool = False
    sampler: str = "portable"
    tau: float = 1.0                      # logits are divided by it (Infinity's temperature)

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise FastervarError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.top_k < 0:
            raise FastervarError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise FastervarError(f"top_p must be in [0, 1], got {self.top_p}")
        if self.cfg < 0:
            raise FastervarError(f"cfg must be >= 0, got {self.cfg}")
        if not self.tau > 0:
            raise FastervarError(f"tau must be > 0, got {self.tau}")
        if self.more_smooth and self.sampler == "portable":
            raise FastervarError("--more-smooth (upstream's soft code mix) draws noise for every codebook entry; "
                                 "it needs --sampler official")


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Upstream's filter over the whole vocabulary: everything outside the top-k and the top-p
    nucleus becomes -inf (the largest always stays). The official sampler uses it."""
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


def candidate_count(vocab: int, top_k: int, top_p: float) -> int:
    """How many of the most likely codes the portable sampler ranks: top-k (when it filters),
    all codes for top-p alone, none (0: no ranking needed) without filtering; at most CANDIDATE_CAP."""
    k = top_k if 0 < top_k < vocab else (vocab if top_p > 0 else 0)
    return min(k, CANDIDATE_CAP)


def portable_sample(logits: torch.Tensor, u: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Tokens (B, n) from logits (B, n, V) and uniforms u (B, n): inverse CDF of the filtered
    distribution. With top-k and top-p this equals upstream's filter followed by a draw (up to ties).

    Probabilities are counted in units of 2^-22 (floored) so that every cumulative sum is an exact
    integer in float32: a float cumsum over thousands of small probabilities rounds differently on
    each backend (torch's CPU kernel even accumulates in double), which would move the token picked
    whenever u lands near a boundary. Only softmax's last-bit differences remain, a few units in 2^22.
    """
    k = candidate_count(logits.shape[-1], top_k, top_p)
    if k == 0:                                           # no filtering: the whole vocabulary, in code order
        probs, order = logits.softmax(dim=-1), None
    else:
        values, order = logits.topk(k, dim=-1, largest=True, sorted=True)
        probs = values.softmax(dim=-1)
    weight = (probs * PROBABILITY_UNITS).floor()
    cdf = weight.cumsum(dim=-1)
    if k and top_p > 0:
        # upstream drops a code when the mass of codes no more likely than it is <= 1 - top_p, i.e.
        # when the codes ranked above it already hold top_p; the most likely code always stays
        keep = (cdf - weight) < top_p * cdf[..., -1:]
        cdf = (weight * keep).cumsum(dim=-1)
    else:
        keep = torch.ones_like(weight, dtype=torch.bool)
    # counts as floats (exact below 2^24): integer reductions are what TensorRT supports least
    below = ((cdf <= u.unsqueeze(-1).to(cdf.dtype) * cdf[..., -1:]) & keep).float().sum(-1)
    pos = torch.minimum(below, keep.float().sum(-1) - 1).long()
    return pos if order is None else order.gather(-1, pos.unsqueeze(-1)).squeeze(-1)
