"""The traceable modules behind a bundle's graphs, and the state each step reads and writes.

A step graph is one accelerated scale step with its profile baked in: it takes the condition (class
labels, or prompt embeddings and their lengths), the accumulated latent, the step's noise (one uniform
per sampled value) and whatever state earlier steps left (KV caches,
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
from ..bundle_contract import (
    F_HAT,
    IMAGES,
    LOGITS,
    NOISE,
    TOKENS,
    branch_names,
    cache_names,
    condition_names,
    hidden_name,
    is_restore_state,
    output,
    state_name,
)
from ..models.sampling import SamplingSettings


@dataclass(frozen=True)
class StepIO:
    """Names a step graph reads and writes, in graph order."""

    step: int
    inputs: list[str]
    outputs: list[str]


def request_names(acc: AcceleratedModel) -> tuple[str, ...]:
    """The request tensors the graphs of this model take (its conditioning)."""
    return condition_names(acc.model.conditioning()["kind"])


def plan_io(acc: AcceleratedModel) -> list[StepIO]:
    """Inputs and outputs of every executed step; state nobody reads later is not output."""
    depth = acc.depth
    request = list(request_names(acc))
    steps = acc.profile.steps
    executed = [k for k, p in enumerate(steps) if p.mode != "skip"]
    reads: dict[int, list[str]] = {}
    for n, k in enumerate(executed):
        names = request + [F_HAT, NOISE] + (cache_names(depth) if n > 0 else [])
        p = steps[k]
        if p.mode == "reduce" and p.restore_level == "block":
            names.append(hidden_name(p.restore_from))
        elif p.mode == "reduce" and p.restore_level == "layer":
            names += branch_names(p.restore_from, depth, p.layers)
        reads[k] = names
    out: list[StepIO] = []
    for n, k in enumerate(executed):
        later = {name for j in executed[n + 1:] for name in reads[j]}
        later -= {name for name in reads[k] if is_restore_state(name)}   # the runtime keeps them
        produced = [F_HAT] + cache_names(depth) + [hidden_name(k)] + branch_names(k, depth)
        outputs = [TOKENS] + [output(name) for name in produced if name in later or name == F_HAT]
        out.append(StepIO(k, reads[k], outputs))
    return out


class StepGraph(nn.Module):
    """One scale step of an AcceleratedModel as a function of named tensors."""

    def __init__(self, acc: AcceleratedModel, io: StepIO, settings: SamplingSettings):
        super().__init__()
        self.acc, self.io, self.settings = acc, io, settings
        self.model = acc.model                       # registers the weights for the exporter
        self.request = request_names(acc)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feed = dict(zip(self.io.inputs, tensors))
        depth = self.acc.depth
        caches = None
        kv = cache_names(depth)
        if kv[0] in feed:
            caches = [(feed[kv[2 * i]], feed[kv[2 * i + 1]]) for i in range(depth)]
        state = AccelState(f_hat=feed[F_HAT], caches=caches)
        for j in range(self.io.step):
            if hidden_name(j) in feed:
                state.hidden[j] = feed[hidden_name(j)]
            names = branch_names(j, depth)
            if any(n in feed for n in names):         # None for blocks the step does not reduce
                state.branches[j] = [(feed.get(names[2 * i]), feed.get(names[2 * i + 1])) for i in range(depth)]
        inputs = self.acc.model.condition_inputs(tuple(feed[n] for n in self.request))
        cond = self.acc.condition(inputs, guided=self.acc.runs_guidance(self.settings))
        state, result = self.acc.step(self.io.step, state, cond, feed[NOISE], self.settings)
        produced = {TOKENS: result.tokens, LOGITS: result.logits, output(F_HAT): state.f_hat}
        for name, t in zip(kv, [t for pair in state.caches for t in pair]):
            produced[output(name)] = t
        for j, h in state.hidden.items():
            produced[output(hidden_name(j))] = h
        for j, br in state.branches.items():
            for name, t in zip(branch_names(j, depth), [t for pair in br for t in pair]):
                produced[output(name)] = t
        return tuple(produced[name] for name in self.io.outputs)


class DecoderGraph(nn.Module):
    """Latent to uint8 images (B, H, W, 3), rounding as the torch reference does."""

    def __init__(self, acc: AcceleratedModel):
        super().__init__()
        self.acc = acc
        self.model = acc.model

    def forward(self, f_hat: torch.Tensor) -> torch.Tensor:
        return self.acc.to_uint8(self.acc.decode(f_hat))


class PreviewGraph(nn.Module):
    """Latent to the small float image a per-image decision reads (`FamilyModel.preview`)."""

    def __init__(self, acc: AcceleratedModel, step: int):
        super().__init__()
        self.acc, self.step = acc, step
        self.model = acc.model

    def forward(self, f_hat: torch.Tensor) -> torch.Tensor:
        return self.acc.model.preview(f_hat, self.step).float()


@torch.no_grad()
def example_steps(acc: AcceleratedModel, ios: list[StepIO], settings: SamplingSettings,
                  batch: int, text_length: int) -> Iterator[dict[str, torch.Tensor]]:
    """Real tensors for each graph's inputs and outputs at one batch size, by running the steps:
    one dict per executed step, then the decoder's. Tracing needs example inputs, and running the
    steps gives every output's shape; prompts are `text_length` tokens long at most. Only the state a later step reads is kept, so the memory is
    that of one step's state, not of the whole generation's.
    """
    noise_gen = torch.Generator().manual_seed(0)
    state = dict(zip(request_names(acc), acc.model.example_condition(batch, text_length)))
    state[F_HAT] = acc.init_state(batch).f_hat
    for io in ios:
        state[NOISE] = torch.rand(batch, acc.noise_at(io.step), generator=noise_gen)
        ins = {name: state[name] for name in io.inputs}
        outs = dict(zip(io.outputs, StepGraph(acc, io, settings)(*ins.values())))
        yield {**ins, **outs}
        for name, t in outs.items():
            if state_name(name):
                state[state_name(name)] = t
        del ins, outs
    f_hat = state.pop(F_HAT)
    state.clear()
    yield {F_HAT: f_hat, IMAGES: DecoderGraph(acc)(f_hat)}


class TextEncoderGraph(nn.Module):
    """Prompt token ids (padded) and lengths to the embeddings the step graphs take."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.encoder.embed(ids, lengths)


def example_prompts(vocab: int, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of `batch` prompts, the first `length` long, the others shorter."""
    ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(length))
    return ids, (length - torch.arange(batch)).clamp(min=1)
