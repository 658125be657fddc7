"""FLOPs of a network counted on an empty (meta) copy: the decoder's share of a step's cost,
without allocating or running anything."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def count_flops(build: Callable[[], nn.Module], input_shape: tuple[int, ...],
                extra: dict[type, Callable[[tuple], float]] | None = None) -> float:
    """2 x multiply-adds of every convolution (and of `extra` module types, by their own rule on
    their inputs) in one forward of `build()` on a meta tensor of `input_shape`."""
    with torch.device("meta"):
        net = build()
    total = 0.0

    def conv(mod: nn.Conv2d, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = mod.kernel_size
        total += 2 * output.numel() * (mod.in_channels // mod.groups) * kh * kw

    def rule(fn: Callable[[tuple], float]) -> Callable:
        def hook(_mod: nn.Module, inputs: tuple, _output) -> None:
            nonlocal total
            total += fn(inputs)
        return hook

    hooks = [m.register_forward_hook(conv) for m in net.modules() if isinstance(m, nn.Conv2d)]
    for kind, fn in (extra or {}).items():
        hooks += [m.register_forward_hook(rule(fn)) for m in net.modules() if isinstance(m, kind)]
    with torch.no_grad():
        net(torch.empty(input_shape, device="meta"))
    for h in hooks:
        h.remove()
    return total
