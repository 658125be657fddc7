"""Calibration's baseline measurements: what they record and that they round-trip through the cache."""

from __future__ import annotations

import numpy as np
import pytest

from fastervar.calibrate.measure import Measurements, effective_rank, measure
from fastervar.models.sampler import generate
from fastervar.models.sampling import SamplingSettings


@pytest.fixture(scope="module")
def measured(tiny_model):
    return measure(tiny_model, [0, 4, 9], [0, 1], SamplingSettings(cfg=3.0), batch_size=4)


def test_convergence_reaches_the_final_image(measured):
    assert measured.semantic[-1] == pytest.approx(1.0) and measured.structure[-1] == pytest.approx(1.0)
    assert measured.structure[0] < measured.structure[-2] < 1.0


def test_guidance_effect_follows_the_ramp(measured):
    assert measured.guidance_tv[0] == 0.0               # the ramp starts at zero guidance
    assert (measured.guidance_tv[1:] > 0).all()


def test_relevance_and_input_statistics(tiny_model, measured):
    assert [len(r) for r in measured.relevance] == [tiny_model.tokens_at(k) for k in range(7)]
    assert (measured.relevance[6] > 0).all()
    c = tiny_model.cfg.var.embed_dim
    cov = measured.input_cov["6/0/ffn.fc2"]
    assert cov.shape == (4 * c, 4 * c) and np.allclose(cov, cov.T)
    assert all(1 <= r <= 4 * c for r in measured.effective_rank.values())


def test_final_images_are_the_baseline(tiny_model, measured):
    """Same noise keys as the reference sampler: image (class c, seed s) is what generate gives."""
    g = generate(tiny_model, [0, 4, 9], SamplingSettings(cfg=3.0), seed=0, batch_size=4)
    assert np.array_equal(measured.final_images[:3], g.images.numpy())


def test_effective_rank():
    cov = np.diag([1.0, 1.0, 1e-6, 0.0])
    assert effective_rank(cov) == 2


def test_cache_round_trip(tmp_path, measured):
    measured.save(tmp_path / "m.npz")
    back = Measurements.load(tmp_path / "m.npz")
    assert np.array_equal(back.structure, measured.structure)
    assert back.effective_rank == measured.effective_rank
    assert all(np.array_equal(back.input_cov[k], v) for k, v in measured.input_cov.items())
