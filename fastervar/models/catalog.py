"""A named model's spec from what a profile records of it, torch-free: how `profiles list` prices
shipped profiles of every family without building a model."""

from __future__ import annotations

from typing import Any

from ..errors import FastervarError
from ..profile import ModelSpec


def spec_for(model: dict[str, Any]) -> ModelSpec:
    """The spec of the model a profile's `model` field names (a released or shipped config)."""
    family = model.get("family", "var")
    if family == "var":
        from .var.configs import get_config
        return get_config(model["config"]).spec()
    if family == "infinity":
        from .infinity.configs import named_spec
        return named_spec(model["config"], model["pn"])
    raise FastervarError(f"unknown model family {family!r}")
