"""The GPU fast path: every scale step and the decoder replayed as CUDA graphs.

A scale step has static shapes (its token count and KV-cache length are fixed by the schedule),
so for a given batch size each step can be captured once and replayed. At batch 1 a GPU step is
launch-bound (VAR-d16 on an H200: eager 108 ms per image, graphed 57 ms), and the accelerated
profile only pays off once its extra small kernels stop costing a launch each.

`GraphedModel` wraps any step-protocol model (`VARModel`, `AcceleratedModel`) and implements the
same protocol, so `generate_batch` drives it like any other. The first batch of a size captures
as it goes: each step runs once eagerly on a side stream (filling the per-device constants:
resampling matrices, selector projections), is captured into a shared memory pool reading the
previous step's graph outputs, then replayed. Later batches copy only the condition and the
noise into the graphs' input buffers. Outputs live in the graphs' buffers, so `step` returns
tokens and `decode` images as copies.

Each batch size's graphs hold their own KV caches and activations, so a long-lived server that
meets many batch sizes would grow without bound: past `max_batches` sizes, the least recently used
one's graphs are dropped (and recaptured if that size comes back).

The condition is any structure of tensors (VAR's labels, Infinity's prepared prompts). A text
condition's shapes follow the longest prompt of the batch: a batch of the same size whose
condition has other shapes recaptures that size's graphs, so a workload of one prompt length (or
prompts padded to one) replays and one of many lengths mostly captures.

Only the portable sampler is graphed (the official sampler's torch.Generator is host state).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

from .protocol import StepModel, StepOutput, StepState
from .sampling import SamplingSettings

MAX_BATCHES = 4                                 # batch sizes whose graphs stay captured at once


def _tensors(obj: Any) -> list[torch.Tensor]:
    """Every tensor in a step state (f_hat, KV caches, cached outputs), in a fixed order."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return []
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for x in obj for t in _tensors(x)]
    if isinstance(obj, dict):
        return [t for k in sorted(obj) for t in _tensors(obj[k])]
    if dataclasses.is_dataclass(obj):
        return [t for f in dataclasses.fields(obj) for t in _tensors(getattr(obj, f.name))]
    raise TypeError(f"unexpected {type(obj).__name__} in a step state")


def _clone(obj: Any) -> Any:
    """The same structure with every tensor copied: a graph's own input buffers."""
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone(x) for x in obj)
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(obj, **{f.name: _clone(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                                           if f.init})
    return obj


def _shapes(obj: Any) -> tuple:
    return tuple(tuple(t.shape) for t in _tensors(obj))


def _shallow(state: StepState) -> StepState:
    """A copy whose lists and dicts are new: accelerated steps assign into the state they get, and
    a graph's captured output state must survive being handed to the next step."""
    def copy(v: Any) -> Any:
        return list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v
    return dataclasses.replace(state, **{f.name: copy(getattr(state, f.name)) for f in dataclasses.fields(state)
                                         if f.init})


@dataclass
class _Captured:
    graph: Any                                  # torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]                  # the buffers the graph reads: cond, noise, state
    state: Any                                  # the graph's output state (decoder: the images)
    output: StepOutput | None


@dataclass
class _Plan:
    """The graphs of one batch size."""

    pool: Any
    cond: Any                                   # the condition's buffers (any structure of tensors)
    state0: StepState
    steps: dict[int, _Captured] = field(default_factory=dict)
    decoder: _Captured | None = None


def _feed(entry: _Captured, live: list[torch.Tensor]) -> None:
    """Copy live inputs into the graph's buffers, unless they already are those buffers."""
    if len(live) != len(entry.inputs):
        raise RuntimeError(f"step state has {len(live)} tensors; the graph was captured with {len(entry.inputs)}")
    for dst, src in zip(entry.inputs, live):
        if dst.data_ptr() != src.data_ptr():
            dst.copy_(src)


class GraphedModel:
    """A step-protocol model whose steps and decoder replay as CUDA graphs, per batch size."""

    def __init__(self, model: StepModel, max_batches: int = MAX_BATCHES):
        if max_batches < 1:
            raise ValueError(f"max_batches must be at least 1, got {max_batches}")
        self.model = model
        self.max_batches = max_batches
        self._plans: OrderedDict[int, _Plan] = OrderedDict()

    # -- the step protocol, delegated ---------------------------------------------------------
    @property
    def cfg(self) -> Any:
        return self.model.cfg

    @property
    def num_steps(self) -> int:
        return self.model.num_steps

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def captured_batches(self) -> list[int]:
        """Batch sizes whose graphs are held now, least recently used first."""
        return list(self._plans)

    def tokens_at(self, step: int) -> int:
        return self.model.tokens_at(step)

    def runs_guidance(self, settings: SamplingSettings) -> bool:
        return self.model.runs_guidance(settings)

    def spec(self) -> Any:
        return self.model.spec()

    def noise_at(self, step: int) -> int:
        return self.model.noise_at(step)

    def _plan(self, batch: int) -> _Plan:
        if batch in self._plans:
            self._plans.move_to_end(batch)
        else:
            while len(self._plans) >= self.max_batches:
                self._plans.popitem(last=False)          # its graphs, pool and caches go with it
            self._plans[batch] = _Plan(pool=self._new_pool(), cond=None, state0=self.model.init_state(batch))
        return self._plans[batch]

    @staticmethod
    def _new_pool() -> Any:
        return torch.cuda.graph_pool_handle()

    def condition(self, inputs: Any, guided: bool = True) -> Any:
        cond = self.model.condition(inputs, guided=guided)
        batch = len(inputs)
        plan = self._plan(batch)
        if plan.cond is not None and _shapes(plan.cond) != _shapes(cond):
            del self._plans[batch]                       # graphs read buffers of the old shapes
            plan = self._plan(batch)
        if plan.cond is None:
            plan.cond = _clone(cond)
        else:
            for dst, src in zip(_tensors(plan.cond), _tensors(cond)):
                dst.copy_(src)
        return plan.cond

    def init_state(self, batch: int) -> StepState:
        return self._plan(batch).state0

    def _skipped(self, k: int) -> bool:
        profile = getattr(self.model, "profile", None)
        return profile is not None and profile.steps[k].mode == "skip"

    @torch.no_grad()
    def step(self, k: int, state: StepState, cond: Any, noise: torch.Tensor | torch.Generator,
             settings: SamplingSettings) -> tuple[StepState, StepOutput | None]:
        if isinstance(noise, torch.Generator) or self._skipped(k):
            return self.model.step(k, _shallow(state), cond, noise, settings)
        plan = self._plan(state.f_hat.shape[0])
        entry = plan.steps.get(k)
        if entry is None:
            buffer = noise.clone()                   # the graph reads its noise from here
            entry = self._capture(plan, [*_tensors(cond), buffer, *_tensors(state)],
                                  lambda: self.model.step(k, _shallow(state), cond, buffer, settings))
            plan.steps[k] = entry
        else:
            _feed(entry, [*_tensors(cond), noise, *_tensors(state)])
            entry.graph.replay()
        out = entry.output
        return _shallow(entry.state), StepOutput(out.tokens.clone(), out.logits, out.hidden)

    @torch.no_grad()
    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        plan = self._plan(f_hat.shape[0])
        if plan.decoder is None:
            plan.decoder = self._capture(plan, [f_hat], lambda: (self.model.decode(f_hat), None))
        else:
            _feed(plan.decoder, [f_hat])
            plan.decoder.graph.replay()
        return plan.decoder.state.clone()

    def pixels(self, f_hat: torch.Tensor) -> torch.Tensor:
        return self.model.to_uint8(self.decode(f_hat))

    def to_uint8(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.to_uint8(images)

    @staticmethod
    def _capture(plan: _Plan, inputs: list[torch.Tensor], fn) -> _Captured:
        """Warm `fn` up on a side stream, capture it into the plan's pool, and replay it once so its
        outputs hold real values for the next step's capture."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=plan.pool):
            state, output = fn()
        graph.replay()
        return _Captured(graph, inputs, state, output)


def fast_path(model: StepModel, settings: SamplingSettings, max_batches: int = MAX_BATCHES) -> StepModel:
    """What the timed and user-facing paths run: CUDA graphs on a GPU with the portable sampler
    (holding at most `max_batches` batch sizes' graphs), the model itself otherwise."""
    dynamic = getattr(model, "dynamic", False)          # per-image decisions change a step's work
    if model.device.type == "cuda" and settings.sampler == "portable" and not dynamic \
            and not isinstance(model, GraphedModel):
        return GraphedModel(model, max_batches)
    return model
