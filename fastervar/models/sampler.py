"""The step loop: the one place that chains a model's scale steps into images.

The reference sampler, the accelerated path, the CUDA-graph replay, calibration's instrumented
measurement and every timed benchmark all run `generate_batch`; they differ only in the
step-protocol object they hand it (`VARModel`, `AcceleratedModel`, `GraphedModel`) and in an
optional per-step callback. Each image's portable noise comes from its own (seed, index) key; in
`official` mode batch j reseeds one torch.Generator with seed + j, exactly as one upstream
`autoregressive_infer_cfg` call per batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from tqdm.auto import tqdm

from ..utils.noise import NoiseKey, batch_uniform, image_keys
from .protocol import StepModel, StepOutput, StepState
from .sampling import SamplingSettings

OnStep = Callable[[int, StepState, StepOutput | None], None]


@runtime_checkable
class PromptRows(Protocol):
    """A text model's prompt set (Infinity's TextBatch, STAR's StarText): batches are its rows."""

    def __len__(self) -> int: ...

    def rows(self, index: list[int]) -> PromptRows: ...


@dataclass
class Generation:
    images: torch.Tensor             # (N, H, W, 3) uint8
    tokens: list[torch.Tensor]       # per step, (N, p*p) int64; (N, 0) for a skipped step
    f_hat: torch.Tensor              # (N, Cvae, H', W') final latent
    step_seconds: list[float]        # per scale step (noise draw included), summed over batches
    decode_seconds: float

    @property
    def seconds_transformer(self) -> float:
        """Time in the scale steps (transformer, guidance, sampling, f_hat update)."""
        return sum(self.step_seconds)

    @property
    def seconds_total(self) -> float:
        return self.seconds_transformer + self.decode_seconds


class StepClock:
    """Marks between the pieces of one batch without stalling the device: CUDA events on a GPU
    (read once, after the batch), perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def intervals(self) -> list[float]:
        """Seconds between consecutive marks (waits for the device once)."""
        if self.cuda:
            self.marks[-1].synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


def step_noise(model: StepModel, settings: SamplingSettings, step: int, keys: Sequence[NoiseKey],
               generator: torch.Generator | None) -> torch.Tensor | torch.Generator:
    """The noise a step consumes: one uniform per token (portable) or the shared generator (official)."""
    if settings.sampler == "official":
        if generator is None:
            raise ValueError("the official sampler needs the batch's torch.Generator")
        return generator
    u = batch_uniform(keys, step, model.noise_at(step))
    return torch.from_numpy(u).to(model.device)


@torch.no_grad()
def generate_batch(model: StepModel, inputs, settings: SamplingSettings, keys: Sequence[NoiseKey],
                   generator: torch.Generator | None = None, on_step: OnStep | None = None,
                   progress: bool = False) -> Generation:
    """Run every scale step for one batch and decode it.

    `model` is anything with the step protocol (VARModel, AcceleratedModel, GraphedModel,
    InfinityModel) and `inputs` what it is conditioned on (labels, or a TextBatch); a step that
    returns no output was skipped. `keys` gives each image's (seed, index) noise key;
    `on_step(k, state, output)` sees every step's result (calibration's measurements).
    """
    clock = StepClock(model.device)
    clock.mark()
    cond = model.condition(inputs, guided=model.runs_guidance(settings))
    state: StepState = model.init_state(len(keys))
    tokens = []
    for k in tqdm(range(model.num_steps), desc="scale steps", leave=False, disable=not progress):
        noise = step_noise(model, settings, k, keys, generator)
        state, out = model.step(k, state, cond, noise, settings)
        if on_step is not None:
            on_step(k, state, out)
        tokens.append(out.tokens if out is not None
                      else torch.zeros(len(keys), 0, dtype=torch.long, device=model.device))
        clock.mark()
    images = model.pixels(state.f_hat)
    clock.mark()
    seconds = clock.intervals()
    return Generation(images, tokens, state.f_hat, seconds[:-1], seconds[-1])


def batch_generator(settings: SamplingSettings, device: torch.device, seed: int) -> torch.Generator | None:
    """The official sampler's generator for one batch (seeded seed + j for batch j, as one
    upstream call per batch); None for the portable sampler."""
    if settings.sampler != "official":
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


@torch.no_grad()
def generate(model: StepModel, inputs: Sequence[int] | PromptRows, settings: SamplingSettings, seed: int = 0,
             batch_size: int = 16, progress: bool = False) -> Generation:
    """Generate one image per class index (or per prompt, for a text model: a TextBatch, or
    any prompt set with `rows`), in order."""
    device = model.device
    parts: list[Generation] = []
    starts = range(0, len(inputs), batch_size)
    for j, lo in enumerate(tqdm(starts, desc="batches", disable=not progress or len(starts) < 2)):
        idx = list(range(lo, min(lo + batch_size, len(inputs))))
        batch = inputs.rows(idx) if isinstance(inputs, PromptRows) else \
            torch.tensor([inputs[i] for i in idx], device=device)
        parts.append(generate_batch(model, batch, settings, image_keys(seed, idx),
                                    batch_generator(settings, device, seed + j), progress=progress))
    return merge(parts)


def merge(parts: list[Generation]) -> Generation:
    """Concatenate the batches of one request, summing their timings."""
    steps = len(parts[0].tokens)
    return Generation(
        images=torch.cat([p.images for p in parts]),
        tokens=[torch.cat([p.tokens[k] for p in parts]) for k in range(steps)],
        f_hat=torch.cat([p.f_hat for p in parts]),
        step_seconds=[sum(p.step_seconds[k] for p in parts) for k in range(steps)],
        decode_seconds=sum(p.decode_seconds for p in parts),
    )
