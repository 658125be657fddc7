"""Image-set metrics: Frechet distance, KID, and paired PSNR/SSIM.

Written out here (numpy/scipy) because the packaged FID implementations all fetch Inception weights
at run time, which cannot work offline; the formulas are the standard ones.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg
from scipy.ndimage import gaussian_filter


def gaussian_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(feats, dtype=np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """||mu1-mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)), with a small ridge if the product is singular."""
    diff = mu1 - mu2
    with warnings.catch_warnings():      # rank-deficient covariances are expected (dead ReLU features)
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        eps = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = np.real(covmean)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def feature_shift(reference: np.ndarray, feats: np.ndarray) -> float:
    """Squared distance between the two sets' mean features, over the reference's total variance:
    the first-moment part of the Frechet distance, scale-free. Unlike the full distance it is
    usable on a few dozen images (no covariance to estimate), and on the calibration prompts it
    orders candidates as the 1000-image Frechet distance does far more often than paired SSIM."""
    r = np.asarray(reference, dtype=np.float64)
    f = np.asarray(feats, dtype=np.float64)
    diff = f.mean(0) - r.mean(0)
    return float(diff @ diff / max(r.var(0).sum(), 1e-12))


def kid(real: np.ndarray, fake: np.ndarray, subsets: int = 50, subset_size: int = 500, seed: int = 0) -> float:
    """Kernel Inception Distance: unbiased MMD^2 with the cubic polynomial kernel, subset-averaged."""
    real = np.asarray(real, dtype=np.float64)
    fake = np.asarray(fake, dtype=np.float64)
    m = min(subset_size, len(real), len(fake))
    d = real.shape[1]
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(subsets):
        x = real[rng.choice(len(real), m, replace=False)]
        y = fake[rng.choice(len(fake), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        vals.append((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                    - 2 * kxy.mean())
    return float(np.mean(vals))


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB between two uint8 sets (N, H, W, C); identical images give inf."""
    d = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
    mse = d.reshape(len(d), -1).mean(1)
    with np.errstate(divide="ignore"):
        return 10 * np.log10(255.0 ** 2 / mse)


def ssim(a: np.ndarray, b: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """Per-image SSIM (Gaussian window sigma 1.5, as Wang et al.), averaged over channels."""
    x = np.asarray(a, np.float64)
    y = np.asarray(b, np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    blur = lambda t: gaussian_filter(t, sigma=(0, sigma, sigma, 0), truncate=3.5)
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.reshape(len(s), -1).mean(1)


def mean_psnr(a: np.ndarray, b: np.ndarray, cap: float = 100.0) -> float:
    """Mean PSNR with identical pairs counted at `cap` dB so the mean stays finite."""
    return float(np.minimum(psnr(a, b), cap).mean())
