"""Low-rank factorization of linear layers for the refine steps.

W (out x in) becomes B @ A with A (r x in) and B (out x r), from a truncated SVD. With activation
statistics from calibration the SVD is whitened (SVD-LLM style): the truncation then minimises
the error on the inputs the layer actually sees rather than on all directions equally.
"""

from __future__ import annotations

import torch


def factorize(weight: torch.Tensor, rank: int, input_cov: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with B @ A ~ W, rank r; `input_cov` (in x in) = E[x x^T] whitens the truncation."""
    w = weight.detach().double()
    if input_cov is None:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        a = s[:rank, None] * vh[:rank]
        return a.to(weight.dtype), u[:, :rank].to(weight.dtype).contiguous()
    cov = input_cov.double()
    cov = (cov + cov.T) / 2
    # few calibration inputs leave E[x x^T] rank-deficient, and float32 statistics can dip below
    # zero there: raise the ridge until the factorization holds
    eye = torch.eye(len(cov), dtype=cov.dtype)
    ridge = 1e-6 * cov.diagonal().mean().clamp_min(1e-12)
    l, info = torch.linalg.cholesky_ex(cov + ridge * eye)
    while info.item() != 0:
        ridge = ridge * 10
        l, info = torch.linalg.cholesky_ex(cov + ridge * eye)
    u, s, vh = torch.linalg.svd(w @ l, full_matrices=False)
    a = torch.linalg.solve_triangular(l.T, (s[:rank, None] * vh[:rank]).T, upper=True).T
    return a.to(weight.dtype).contiguous(), u[:, :rank].to(weight.dtype).contiguous()


def relative_error(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, inputs: torch.Tensor) -> float:
    """||W x - B A x|| / ||W x|| over a set of inputs (N, in): the figure calibration reports."""
    exact = inputs @ weight.T
    approx = (inputs @ a.T) @ b.T
    return float((exact - approx).norm() / exact.norm().clamp_min(1e-12))
