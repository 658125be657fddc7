"""A per-image decision between steps, SkipVAR's kind: after step `after`, decode small previews of
the latent after that step and after the step before, measure how much high-frequency detail is
still arriving, and let a fitted rule pick each image's move for the remaining steps: skip the
last steps, or run them on the conditional half alone, or neither.

The two features are computed as SkipVAR's code computes them (`extract_high_freq_sobel`,
`extract_high_freq_ratio_fft_circle`): the mean absolute difference of the Sobel gradient
magnitude of the two previews (grey = channel mean), and the share of the newer preview's FFT
amplitude outside a central circle of radius int(freq_ratio * min(H, W) / 2). The rule is a
standardization followed by a multinomial logistic regression's argmax, stored as plain numbers
in the profile (`Profile.decision`), SkipVAR's released constants or ones `calibrate
--fit-decision` fitted; nothing is unpickled and scikit-learn is not needed to apply it.

Numpy only, so the toolchain and the torch-free runtime apply the same code to the previews they
decode (float32, as upstream's; the sums run in float64, within 1e-6 of upstream's features).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

MOVES = ("skip", "uncond")
# Sobel's x kernel, applied as a cross-correlation with zero padding (what conv2d does)
_SOBEL_X = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=np.float64)


def _gray(images: np.ndarray) -> np.ndarray:
    return np.asarray(images, dtype=np.float32).mean(axis=1, dtype=np.float64)


def sobel_magnitude(images: np.ndarray) -> np.ndarray:
    """(B, 3, H, W) -> (B, H, W) gradient magnitude of the channel-mean image."""
    gray = _gray(images)
    h, w = gray.shape[1:]
    padded = np.pad(gray, ((0, 0), (1, 1), (1, 1)))
    grad_x = np.zeros_like(gray)
    grad_y = np.zeros_like(gray)
    for i in range(3):
        for j in range(3):
            window = padded[:, i:i + h, j:j + w]
            grad_x += _SOBEL_X[i, j] * window
            grad_y += _SOBEL_X[j, i] * window
    return np.sqrt(grad_x ** 2 + grad_y ** 2)


def high_frequency_ratio(images: np.ndarray, freq_ratio: float) -> np.ndarray:
    """(B, 3, H, W) -> (B,) share of the FFT amplitude outside the central low-frequency circle
    (shifted per image over its own two axes)."""
    amplitude = np.abs(np.fft.fftshift(np.fft.fft2(_gray(images)), axes=(-2, -1)))
    h, w = amplitude.shape[1:]
    radius = int(freq_ratio * min(h, w) / 2)
    y, x = np.ogrid[:h, :w]
    outside = np.sqrt((y - h // 2) ** 2 + (x - w // 2) ** 2) > radius
    return (amplitude * outside).sum(axis=(1, 2)) / (amplitude.sum(axis=(1, 2)) + 1e-6)


def features(new: np.ndarray, old: np.ndarray, freq_ratio: float) -> np.ndarray:
    """(B, 2) [diff_hf, high-frequency ratio] of each image's two previews ((B, 3, H, W) arrays)."""
    diff = np.abs(sobel_magnitude(new) - sobel_magnitude(old)).reshape(len(new), -1).mean(axis=1)
    return np.stack([diff, high_frequency_ratio(new, freq_ratio)], axis=1)


@dataclass(frozen=True)
class Rule:
    """StandardScaler then a multinomial logistic regression, as numbers."""

    mean: np.ndarray
    scale: np.ndarray
    classes: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    first_step: dict[int, int]          # class -> the first step the move applies to (0: no move)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Rule:
        return cls(np.asarray(d["scaler"]["mean"], float), np.asarray(d["scaler"]["scale"], float),
                   np.asarray(d["model"]["classes"], int), np.asarray(d["model"]["coef"], float),
                   np.asarray(d["model"]["intercept"], float), {int(k): int(v) for k, v in d["first_step"].items()})

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class per row of (B, features)."""
        z = (x[:, : len(self.mean)] - self.mean) / self.scale
        return self.classes[np.argmax(z @ self.coef.T + self.intercept, axis=1)]


@dataclass(frozen=True)
class Decision:
    """A profile's per-image decision: when it runs, what it previews, and its two rules (the skip
    rule, then, for images it leaves alone, the uncond rule)."""

    after: int
    compare: int
    preview_step: int
    freq_ratio: float
    skip: Rule
    uncond: Rule

    @classmethod
    def from_profile(cls, d: dict[str, Any]) -> Decision:
        return cls(int(d["after_step"]), int(d["compare_step"]), int(d["preview_step"]), float(d["freq_ratio"]),
                   Rule.from_dict(d["skip"]), Rule.from_dict(d["uncond"]))

    def move_set(self) -> list[tuple[str, int]]:
        """Every move the two rules can pick, as (kind, first step), skips first."""
        skips = sorted({("skip", v) for v in self.skip.first_step.values() if v})
        unconds = sorted({("uncond", v) for v in self.uncond.first_step.values() if v})
        return skips + unconds

    def moves(self, x: np.ndarray) -> list[tuple[str, int]]:
        """Per image: ("skip", first skipped step), ("uncond", first cond-only step), or ("none", 0)."""
        out = []
        skip = self.skip.predict(x)
        uncond = self.uncond.predict(x)
        for s, u in zip(skip, uncond):
            if self.skip.first_step[int(s)]:
                out.append(("skip", self.skip.first_step[int(s)]))
            elif self.uncond.first_step.get(int(u), 0):
                out.append(("uncond", self.uncond.first_step[int(u)]))
            else:
                out.append(("none", 0))
        return out
