"""The fixed resamplings of the scale pyramid as constant matrices.

Area-downsampling to p_k and bicubic upsampling from p_k are linear maps with static shapes. As
small separable matrices they are exact, cheap at these sizes, and export to ONNX as plain MatMuls,
so the reference, the accelerated path and the compiled graphs all run the same arithmetic. The
matrices are built in numpy (float64), so graph tracing sees constants, not the ops that made them.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import torch


def _cubic(t: float, a: float = -0.75) -> np.ndarray:
    """Weights of the 4 taps around a sample at fractional offset t (Keys' kernel, a = -0.75)."""
    def near(x: float) -> float:
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: float) -> float:
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.array([far(t + 1), near(t), near(1 - t), far(2 - t)])


@cache
def _matrix64(src: int, dst: int, mode: str) -> np.ndarray:
    m = np.zeros((dst, src))
    scale = src / dst
    for i in range(dst):
        if mode == "area":                      # adaptive average pooling bins
            lo, hi = math.floor(i * scale), math.ceil((i + 1) * scale)
            m[i, lo:hi] = 1.0 / (hi - lo)
        else:                                   # bicubic, half-pixel centres, edges clamped
            x = (i + 0.5) * scale - 0.5
            x0 = math.floor(x)
            for tap, w in zip(range(x0 - 1, x0 + 3), _cubic(x - x0)):
                m[i, min(max(tap, 0), src - 1)] += w
    return m


def resample_matrix(src: int, dst: int, mode: str) -> torch.Tensor:
    """(dst, src) float32 matrix M that resamples one axis of a map: M @ x along rows, x @ M.T
    along columns."""
    if mode not in ("area", "bicubic"):
        raise ValueError(f"unknown resampling mode {mode!r}")
    return torch.from_numpy(_matrix64(src, dst, mode)).float()


@cache
def _resident(src: int, dst: int, mode: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The matrix, made once per device and dtype: no host-to-device copy per call (which a CUDA
    graph could not capture, and which stalls an eager GPU step)."""
    return resample_matrix(src, dst, mode).to(device=device, dtype=dtype)


def resample(x: torch.Tensor, size: int | tuple[int, int], mode: str) -> torch.Tensor:
    """Resample a (B, C, h, w) map to (B, C, *size) (a square `size` x `size` for an int) with the
    constant matrices, rows and columns separately."""
    h, w = (size, size) if isinstance(size, int) else size
    src_h, src_w = x.shape[-2:]
    if (src_h, src_w) == (h, w):
        return x
    rows = _resident(src_h, h, mode, x.device, x.dtype)
    cols = rows if (src_w, w) == (src_h, h) else _resident(src_w, w, mode, x.device, x.dtype)
    return torch.matmul(torch.matmul(rows, x), cols.T)
