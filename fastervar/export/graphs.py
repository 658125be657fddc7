"""The traceable modules behind a bundle's graphs, and the state each step reads and writes.

A step graph is one accelerated scale step with its profile baked in: it takes the class labels,
the accumulated latent, the step's noise (one uniform per token) and whatever state earlier steps left (KV caches,
cached block outputs or sublayer branches for restoration), and returns the new latent, the tokens
and only the state a later step still reads. State travels by name: a graph output `out.NAME`
becomes the input `NAME` of the next graph that needs it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..accel.accelerated import AcceleratedModel, AccelState
from ..models.family import to_uint8
from ..models.sampling import SamplingSettings

OUT = "out."


def cache_names(depth: int) -> list[str]:
    return [f"cache.{i}.{kv}" for i in range(depth) for kv in ("k", "v")]


def branch_names(step: int, depth: int, layers: list[int] | None = None) -> list[str]:
    """The cached sublayer outputs of `step`, for every block or only those in `layers` [first, end)."""
    lo, hi = layers or (0, depth)
    return [f"branch.{step}.{i}.{part}" for i in range(lo, hi) for part in ("attn", "ffn")]


@dataclass(frozen=True)
class StepIO:
    """Names a step graph reads and writes, in graph order."""

    step: int
    inputs: list[str]
    outputs: list[str]


def plan_io(acc: AcceleratedModel) -> list[StepIO]:
    """Inputs and outputs of every executed step; state nobody reads later is not output."""
    depth = acc.cfg.var.depth
    steps = acc.profile.steps
    executed = [k for k, p in enumerate(steps) if p.mode != "skip"]
    reads: dict[int, list[str]] = {}
    for n, k in enumerate(executed):
        names = ["labels", "f_hat", "noise"] + (cache_names(depth) if n > 0 else [])
        p = steps[k]
        if p.mode == "reduce" and p.restore_level == "block":
            names.append(f"hidden.{p.restore_from}")
        elif p.mode == "reduce" and p.restore_level == "layer":
            names += branch_names(p.restore_from, depth, p.layers)
        reads[k] = names
    out: list[StepIO] = []
    for n, k in enumerate(executed):
        later = {name for j in executed[n + 1:] for name in reads[j]}
        later -= {name for name in reads[k] if name.startswith(("hidden.", "branch."))}   # the runtime keeps them
        produced = ["f_hat", "tokens"] + cache_names(depth) + [f"hidden.{k}"] + branch_names(k, depth)
        outputs = ["tokens"] + [OUT + name for name in produced if name != "tokens" and (name in later or name == "f_hat")]
        out.append(StepIO(k, reads[k], outputs))
    return out


class StepGraph(nn.Module):
    """One scale step of an AcceleratedModel as a function of named tensors."""

    def __init__(self, acc: AcceleratedModel, io: StepIO, settings: SamplingSettings):
        super().__init__()
        self.acc, self.io, self.settings = acc, io, settings
        self.model = acc.model                       # registers the weights for the exporter

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feed = dict(zip(self.io.inputs, tensors))
        depth = self.acc.cfg.var.depth
        caches = None
        if "cache.0.k" in feed:
            caches = [(feed[f"cache.{i}.k"], feed[f"cache.{i}.v"]) for i in range(depth)]
        state = AccelState(f_hat=feed["f_hat"], caches=caches)
        for name, t in feed.items():
            if name.startswith("hidden."):
                state.hidden[int(name.split(".")[1])] = t
        for j in {int(n.split(".")[1]) for n in feed if n.startswith("branch.")}:
            state.branches[j] = [(feed.get(f"branch.{j}.{i}.attn"), feed.get(f"branch.{j}.{i}.ffn"))
                                 for i in range(depth)]               # None for blocks the step does not reduce
        cond = self.acc.condition(feed["labels"], guided=True)
        state, result = self.acc.step(self.io.step, state, cond, feed["noise"], self.settings)
        produced = {"tokens": result.tokens, OUT + "f_hat": state.f_hat}
        for i, (kk, vv) in enumerate(state.caches):
            produced[f"{OUT}cache.{i}.k"], produced[f"{OUT}cache.{i}.v"] = kk, vv
        for j, h in state.hidden.items():
            produced[f"{OUT}hidden.{j}"] = h
        for j, br in state.branches.items():
            for i, (a, f) in enumerate(br):
                produced[f"{OUT}branch.{j}.{i}.attn"], produced[f"{OUT}branch.{j}.{i}.ffn"] = a, f
        return tuple(produced[name] for name in self.io.outputs)


class DecoderGraph(nn.Module):
    """Latent to uint8 images (B, H, W, 3), rounding as the torch reference does."""

    def __init__(self, acc: AcceleratedModel):
        super().__init__()
        self.acc = acc
        self.model = acc.model

    def forward(self, f_hat: torch.Tensor) -> torch.Tensor:
        return to_uint8(self.acc.decode(f_hat))


@torch.no_grad()
def example_steps(acc: AcceleratedModel, ios: list[StepIO], settings: SamplingSettings,
                  batch: int) -> Iterator[dict[str, torch.Tensor]]:
    """Real tensors for each graph's inputs and outputs at one batch size, by running the steps:
    one dict per executed step, then the decoder's. Tracing needs example inputs, and running the
    steps gives every output's shape. Only the state a later step reads is kept, so the memory is
    that of one step's state, not of the whole generation's.
    """
    labels = torch.arange(batch) % acc.cfg.var.num_classes
    noise_gen = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {"labels": labels, "f_hat": acc.init_state(batch).f_hat}
    for io in ios:
        state["noise"] = torch.rand(batch, acc.tokens_at(io.step), generator=noise_gen)
        ins = {name: state[name] for name in io.inputs}
        outs = dict(zip(io.outputs, StepGraph(acc, io, settings)(*ins.values())))
        yield {**ins, **outs}
        for name, t in outs.items():
            if name.startswith(OUT):
                state[name[len(OUT):]] = t
        del ins, outs
    f_hat = state.pop("f_hat")
    state.clear()
    yield {"f_hat": f_hat, "images": DecoderGraph(acc)(f_hat)}
