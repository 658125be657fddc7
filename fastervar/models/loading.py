"""Turn the CLI's model options into a ready model: named config, checkpoints, or random weights."""

from __future__ import annotations

import numpy as np
import torch

from ..assets import EMBEDDED_MODEL_DIR, EMBEDDED_MODEL_NAME
from ..errors import FastervarError
from .checkpoint import load_model, load_model_dir
from .configs import get_config
from .family import VARModel


def resolve_device(device: str) -> torch.device:
    """Check the requested device exists here, with a clear message when it does not."""
    if device == "cuda" and not torch.cuda.is_available():
        raise FastervarError(f"--device cuda: no CUDA GPU is available to torch {torch.__version__}")
    if device not in ("cpu", "cuda"):
        raise FastervarError(f"unknown device {device!r}; choose cpu or cuda")
    return torch.device(device)


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill every parameter from a seeded numpy stream, so random test models are identical on
    every platform and torch version. Norm gains stay near 1 and attention temperatures at their
    initial value, which keeps random models numerically well-behaved."""
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if name.endswith("scale_mul_1H11"):
            continue
        noise = torch.from_numpy(rng.standard_normal(tuple(p.shape), dtype=np.float32))
        if ".norm" in name and name.endswith(".weight"):
            p.copy_(1 + 0.02 * noise)
        elif name.endswith("embedding.weight"):
            p.copy_(noise)
        else:
            p.copy_(0.02 * noise)
    return model


def random_model(name: str, seed: int = 0) -> VARModel:
    """A named configuration with seeded random weights, for tests and speed benchmarks."""
    return randomize_(VARModel(get_config(name)), seed).eval()


def resolve_model(model: str | None, var_checkpoint: str | None, vae_checkpoint: str | None,
                  random_weights: bool, device: str = "cpu") -> VARModel:
    """Load the model the options name: checkpoints, random weights, or the embedded default."""
    dev = resolve_device(device)
    if random_weights:
        if var_checkpoint or vae_checkpoint:
            raise FastervarError("--random-weights cannot be combined with checkpoint files")
        if model is None:
            raise FastervarError("--random-weights needs --model NAME")
        m = random_model(model)
    elif var_checkpoint or vae_checkpoint:
        if not (var_checkpoint and vae_checkpoint):
            raise FastervarError("give both --var-checkpoint and --vae-checkpoint")
        m = load_model(var_checkpoint, vae_checkpoint, get_config(model) if model else None)
    elif model is None or model == EMBEDDED_MODEL_NAME:
        m = embedded_model()
    else:
        get_config(model)
        raise FastervarError(f"model {model!r} has no shipped weights: pass --var-checkpoint and "
                             f"--vae-checkpoint, or --random-weights for a test model")
    return m.to(dev)


def embedded_model() -> VARModel:
    """The Fashion-MNIST model shipped inside the package: the default everywhere."""
    if not (EMBEDDED_MODEL_DIR / "config.json").exists():
        raise FastervarError(f"the embedded model is missing from this install ({EMBEDDED_MODEL_DIR})")
    return load_model_dir(EMBEDDED_MODEL_DIR)
