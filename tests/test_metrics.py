"""The quality metrics behave as their definitions say."""

from __future__ import annotations

import numpy as np
import pytest

from fastervar.evaluate.metrics import (
    feature_shift,
    frechet_distance,
    gaussian_stats,
    kid,
    mean_psnr,
    psnr,
    ssim,
)


def test_frechet_distance_zero_for_same_stats_and_grows_with_shift():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2000, 8))
    mu, s = gaussian_stats(a)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0, abs=1e-6)
    mu2, s2 = gaussian_stats(a + 1.0)
    assert frechet_distance(mu, s, mu2, s2) == pytest.approx(8.0, rel=1e-6)   # ||shift||^2, same cov


def test_feature_shift_is_zero_for_the_same_mean_scale_free_and_grows_with_the_offset():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(40, 8))
    assert feature_shift(ref, ref) == 0.0
    assert feature_shift(ref, ref[::-1] * 1.0) == pytest.approx(0.0, abs=1e-20)   # order does not matter
    near, far = feature_shift(ref, ref + 0.1), feature_shift(ref, ref + 0.5)
    assert 0 < near < far
    # the offset is measured against the reference's spread: scaling both changes nothing
    assert feature_shift(ref * 10, (ref + 0.5) * 10) == pytest.approx(far)
    # 0.5 on each of 8 unit-variance features: 8 * 0.25 over a total variance of about 8
    assert far == pytest.approx(8 * 0.25 / ref.var(0).sum())


def test_kid_near_zero_for_same_distribution_and_positive_otherwise():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((1000, 16)), rng.standard_normal((1000, 16))
    assert abs(kid(x, y, subsets=10, subset_size=300)) < 0.01
    assert kid(x, y + 0.5, subsets=10, subset_size=300) > 0.05


def test_psnr_and_ssim():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    assert np.isinf(psnr(a, a)).all() and mean_psnr(a, a) == 100.0
    assert np.allclose(ssim(a, a), 1.0)
    noisy = np.clip(a.astype(int) + rng.integers(-8, 9, a.shape), 0, 255).astype(np.uint8)
    p = psnr(a, noisy)
    assert (p > 25).all() and (p < 40).all()
    assert (ssim(a, noisy) < 1).all() and (ssim(a, noisy) > ssim(a, 255 - a)).all()
