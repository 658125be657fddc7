"""Turn the CLI's model options into a ready model: named config, checkpoints, or random weights."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import FastervarError
from .checkpoint import load_model
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
    """Load the model the options name; exactly one source of weights must be given."""
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
    elif model is not None:
        get_config(model)
        raise FastervarError(f"model {model!r} has no shipped weights: pass --var-checkpoint and "
                             f"--vae-checkpoint, or --random-weights for a test model")
    else:
        raise FastervarError("no model given: pass --var-checkpoint and --vae-checkpoint, "
                             "or --model NAME --random-weights")
    return m.to(dev)
