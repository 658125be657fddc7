"""The embedded Fashion-MNIST model and evaluator, as shipped inside the package."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastervar.assets import EMBEDDED_MODEL_NAME, ROOT, shipped_model_dir
from fastervar.evaluate.features import ClassifierFeatures
from fastervar.evaluate.judge import shipped_judge
from fastervar.evaluate.metrics import psnr
from fastervar.evaluate.run import real_test_images, reconstructions
from fastervar.models.loading import embedded_model
from fastervar.models.sampler import generate
from fastervar.models.sampling import SamplingSettings
from fastervar.models.var.configs import get_config

FIXTURE = 200   # the test fixture: the first 200 shipped real test images


@pytest.fixture(scope="module")
def model():
    return embedded_model()


@pytest.fixture(scope="module")
def fixture_images():
    images, labels = real_test_images(shipped_judge())
    return images[:FIXTURE], labels[:FIXTURE]


def test_shipped_files_fit_the_budget():
    weights = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())
    assert weights <= 25 * 2 ** 20
    judge = shipped_judge()
    assert judge.classifier.stat().st_size <= 2 * 2 ** 20
    assert (shipped_model_dir(EMBEDDED_MODEL_NAME) / "var.safetensors").exists() and judge.real_images.exists()


def test_configuration(model):
    """The default model is VAR-256's pyramid: its ten steps, 680 tokens, 62.5% in the last two."""
    cfg = model.cfg
    assert cfg == get_config("fashion-16") == get_config(EMBEDDED_MODEL_NAME)
    assert cfg.resolution == 32 and cfg.vae.in_channels == 3 and cfg.var.num_classes == 10
    pn = cfg.var.patch_nums
    assert pn == get_config("d16").var.patch_nums == (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    assert sum(p * p for p in pn) == 680
    assert (pn[-1] ** 2 + pn[-2] ** 2) / 680 == 0.625


def test_fixed_seed_generation_is_deterministic(model):
    s = SamplingSettings()
    a = generate(model, [0, 3, 8], s, seed=5).images
    b = generate(model, [0, 3, 8], s, seed=5).images
    assert torch.equal(a, b)
    assert a.shape == (3, 32, 32, 3)


def test_vqvae_reconstructs_fixture_at_20db(model, fixture_images):
    images, _ = fixture_images
    rec = reconstructions(model, images)
    assert float(np.mean(np.minimum(psnr(images, rec), 100))) >= 20.0


def test_classifier_accuracy_on_fixture(fixture_images):
    images, labels = fixture_images
    acc = float((ClassifierFeatures.load(shipped_judge()).predict(images) == labels).mean())
    assert acc >= 0.85


def test_generated_samples_are_recognisable(model):
    """A quick, loose version of the evaluate figure: most samples are judged their own class."""
    classes = [c for c in range(10) for _ in range(4)]
    images = generate(model, classes, SamplingSettings(), seed=0, batch_size=40).images.numpy()
    acc = float((ClassifierFeatures.load(shipped_judge()).predict(images) == np.array(classes)).mean())
    assert acc >= 0.6
