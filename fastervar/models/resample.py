"""The fixed resamplings of the scale pyramid as constant matrices.

Area-downsampling to p_k and bicubic upsampling from p_k are linear maps with static shapes. As
small separable matrices they are exact, cheap at these sizes, and export to ONNX as plain MatMuls,
so the reference, the accelerated path and the compiled graphs all run the same arithmetic.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F


@lru_cache(maxsize=None)
def _matrix64(src: int, dst: int, mode: str) -> torch.Tensor:
    # Separable 2-D resampling: probe the 1-D map with a one-hot basis along the height axis;
    # the width axis (size 1 -> 1) is the identity for both modes.
    basis = torch.eye(src, dtype=torch.float64).reshape(src, 1, src, 1)
    out = F.interpolate(basis, size=(dst, 1), mode=mode) if mode == "bicubic" else \
        F.adaptive_avg_pool2d(basis, (dst, 1))
    return out.reshape(src, dst).T.contiguous()


def resample_matrix(src: int, dst: int, mode: str) -> torch.Tensor:
    """(dst, src) float32 matrix M with resample(x) = M @ x @ M.T for a (src, src) map."""
    if mode not in ("area", "bicubic"):
        raise ValueError(f"unknown resampling mode {mode!r}")
    return _matrix64(src, dst, mode).float()


def resample(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Resample a (B, C, h, h) map to (B, C, size, size) with the constant matrix."""
    src = x.shape[-1]
    if src == size:
        return x
    m = resample_matrix(src, size, mode).to(device=x.device, dtype=x.dtype)
    return torch.matmul(torch.matmul(m, x), m.T)
