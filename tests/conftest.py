"""Shared fixtures: small seeded models and their checkpoints on disk."""

from __future__ import annotations

import pytest
import torch

from fastervar.models.loading import random_model


@pytest.fixture(scope="session")
def tiny_model():
    return random_model("tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory, tiny_model):
    """The tiny model saved as two plain .pth state dicts, like the released files."""
    d = tmp_path_factory.mktemp("ckpt")
    torch.save(tiny_model.var.state_dict(), d / "var_tiny.pth")
    torch.save(tiny_model.vae.state_dict(), d / "vae_tiny.pth")
    return d / "var_tiny.pth", d / "vae_tiny.pth"


@pytest.fixture
def one_thread():
    """Upstream references were recorded on one thread: the VAE decoders' convolutions reduce in
    another order with more, which moves a few pixels by a level."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
