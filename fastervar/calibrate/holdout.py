"""Confirming a calibration's choice on images the search never saw.

The search judges candidates on its share of the calibration images and keeps the best-looking
one; `confirm` re-judges the choice on the held-out share and, when a limit breaks there, takes
the next candidate in the search's own order of preference, a few times at most. The held-out
check is on the estimate (the search's check already carries the confidence margin); the
margins on the held-out images are recorded beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..errors import FastervarError
from .search import Candidate, Searcher, meets, ranked

TRIES = 5          # held-out re-judgements before calibrate gives up


@dataclass(frozen=True)
class Limits:
    """What a chosen profile must keep: the targets `search.meets` checks."""

    target_speedup: float | None
    max_quality_drop: float | None
    max_accuracy_drop: float


def preference(tried: Sequence[Candidate], target_speedup: float | None) -> list[Candidate]:
    """The candidates that met the limits on the search images, in the order the search prefers
    them: closest to the baseline at a speed target, fastest under a quality limit."""
    ok = [c for c in tried if c.meets]
    return ranked(ok) if target_speedup is not None else sorted(ok, key=lambda c: -c.speedup)


def holds(held: Searcher, h: Candidate, limits: Limits) -> bool:
    """Whether a candidate judged on the held-out images keeps every limit by its estimates."""
    point = replace(h, margins={})
    return meets(point, limits.target_speedup, limits.max_quality_drop, held.base_accuracy, limits.max_accuracy_drop,
                 clip_limit=held.clip_limit)


def judged(held: Searcher, c: Candidate) -> Candidate:
    """The candidate's profile judged on the held-out images (its price is the profile's)."""
    return held.score(c.profile, c.knobs)


def confirm(held: Searcher, order: Sequence[Candidate], limits: Limits,
            tries: int = TRIES) -> tuple[Candidate, Candidate]:
    """(the first candidate of `order` that keeps the limits on the held-out images, its held-out
    judgement); one line naming the held-out figures when none of the first `tries` does."""
    seen = []
    for c in list(order)[:tries]:
        h = judged(held, c)
        if holds(held, h, limits):
            return c, h
        seen.append(h)
    if not seen:
        raise FastervarError("no candidate met the limits on the search images")
    raise FastervarError(f"no candidate keeps the limits on the {len(held.images)} held-out images (tried the "
                         f"{len(seen)} best on the search images; " + "; ".join(_short(held, h, limits) for h in seen[:3])
                         + "): loosen a limit, or give more prompts or seeds")


def _short(held: Searcher, h: Candidate, limits: Limits) -> str:
    parts = [f"SSIM drop {1 - h.ssim:.3f}" + (f" (limit {limits.max_quality_drop:g})"
                                              if limits.max_quality_drop is not None else "")]
    if h.class_accuracy is not None and held.base_accuracy is not None:
        parts.append(f"class accuracy drop {held.base_accuracy - h.class_accuracy:.3f} "
                     f"(limit {limits.max_accuracy_drop:g})")
    if h.clip_score is not None and held.clip_limit is not None:
        parts.append(f"CLIP score drop {held.clip_limit[0] - h.clip_score:.3f} (limit {held.clip_limit[1]:g})")
    return f"{h.speedup:.2f}x held out: " + ", ".join(parts)


def figures(s: Searcher, c: Candidate) -> dict:
    """A candidate's judgement on one set of images, each measure with its margin, for the
    profile and the report."""
    out: dict = {"images": len(s.images) * len(s.parts), "confidence": s.confidence,
                 "paired_ssim": c.ssim, "paired_ssim_margin": c.margins.get("ssim", 0.0), "paired_psnr": c.psnr}
    if c.class_accuracy is not None:
        out |= {"baseline_class_accuracy": s.base_accuracy, "class_accuracy": c.class_accuracy,
                "class_accuracy_margin": c.margins.get("class_accuracy", 0.0)}
    if c.shift is not None:
        out["feature_shift"] = c.shift
    if c.clip_score is not None:
        out |= {"baseline_clip_score": s.clip.base_score, "clip_score": c.clip_score,
                "clip_score_margin": c.margins.get("clip_score", 0.0)}
    return out
