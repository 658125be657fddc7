"""Low-rank factors an accelerator installs into a family's linear layers for chosen steps.

A layer with installed factors (A, B) computes B @ (A @ x) + bias instead of W @ x + bias; every
family's linears go through `linear` so that one mechanism serves them all. Unfactorized layers
run as modules, so forward hooks (calibration's input statistics) see them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]
_observers: list[Callable[[nn.Linear, torch.Tensor], None]] = []


@contextmanager
def observing(fn: Callable[[nn.Linear, torch.Tensor], None]) -> Iterator[None]:
    """Call `fn(layer, input)` for every linear that runs through `linear` meanwhile (calibration's
    input statistics, whichever way a family calls its linears)."""
    _observers.append(fn)
    try:
        yield
    finally:
        _observers.remove(fn)


def linear(x: torch.Tensor, layer: nn.Linear, factors: tuple[torch.Tensor, torch.Tensor] | None,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """`layer(x)` (with `bias` in place of the layer's own if given), or its rank-r factorization
    (A, B) when the accelerator installed one."""
    for observe in _observers:
        observe(layer, x)
    b = layer.bias if bias is None else bias
    if factors is not None:
        return F.linear(F.linear(x, factors[0]), factors[1], b)
    return layer(x) if bias is None else F.linear(x, layer.weight, b)
