"""How sure a calibration is of what it promises: held-out images and bootstrap margins.

A limit ("class accuracy drops at most 2 points") is estimated on a few dozen images and then
maximised over by the search, so the candidate that looks best is, on average, one whose error
was lucky (the winner's curse). Two guards: each limit is checked against a one-sided upper
confidence bound of the drop (a paired bootstrap over the calibration images), and the chosen
profile is re-measured on images the search never saw.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RESAMPLES = 2000
DEFAULT_HOLDOUT = 1 / 3
DEFAULT_CONFIDENCE = 0.9


def split(n: int, holdout: float) -> tuple[list[int], list[int]]:
    """(search, held-out) positions of the calibration list's `n` images: every image at which the
    running count `(i + 1) * holdout` passes an integer is held out, so the held-out share is even
    along the list (seed-major, so every prompt and seed is spread over both sets)."""
    held = [i for i in range(n) if int((i + 1) * holdout) > int(i * holdout)]
    hs = set(held)
    return [i for i in range(n) if i not in hs], held


def margin(drops: Sequence[float] | np.ndarray, confidence: float, resamples: int = RESAMPLES,
           seed: int = 0) -> float:
    """How far above the mean paired drop its one-sided `confidence` bound lies: the percentile
    bootstrap over images (each image's drop against its own baseline image). 0 at confidence 0
    (point estimates) or for one image (nothing to resample)."""
    d = np.asarray(drops, dtype=np.float64)
    if confidence <= 0 or len(d) < 2:
        return 0.0
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(1)
    return float(max(0.0, np.quantile(means, confidence) - d.mean()))


def bounds(per_image: dict[str, np.ndarray], confidence: float) -> dict[str, float]:
    """Each measure's margin from its per-image paired drops (see `margin`)."""
    return {name: margin(d, confidence) for name, d in per_image.items()}
