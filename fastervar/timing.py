"""The one timing harness: every speed figure fastervar reports is measured here.

Its policy, the same for every caller (`bench`, `evaluate`, calibration's probes and speed check,
the scripts in `benchmarks/`):
- **The baseline is the batched path, as upstream runs it.** The model's own step loop with
  convolutions over the whole batch (per-image convolutions are a parity check's opt-in) and, on
  a GPU, the package's CUDA-graph fast path. Accelerated variants run through the same loop.
- **Warm-up at every timed batch size.** Each variant first runs one batch of each size the
  workload holds (a ragged last batch included) untimed: graph capture, allocator growth and
  onnxruntime's first call at a shape are not timed.
- **Interleaving.** Batch by batch, every variant runs in turn, so drift on a shared machine hits
  all of them alike; ratios come from one process.
- **Device sync.** A run is wall clock with the device synchronized at both ends; per-step times
  are the step loop's own marks (CUDA events on a GPU, so no extra syncs inside the loop).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from .memory import PeakMemory
from .utils.noise import NoiseKey, image_keys

if TYPE_CHECKING:
    from .models.protocol import StepModel
    from .models.sampling import SamplingSettings


@dataclass(frozen=True)
class Batch:
    """One batch of a workload: its prompts (class labels, or rows of a prompt set), each image's
    noise key, and the official sampler's
    generator seed for the batch (seed + batch index, as one upstream call per batch)."""

    labels: tuple[int, ...]
    keys: tuple[NoiseKey, ...]
    generator_seed: int


def batches(classes: Sequence[int], seed: int, batch_size: int) -> list[Batch]:
    """Split a request into batches; image i draws its noise as (seed, i)."""
    out = []
    for j, lo in enumerate(range(0, len(classes), batch_size)):
        idx = range(lo, min(lo + batch_size, len(classes)))
        out.append(Batch(tuple(int(classes[i]) for i in idx), tuple(image_keys(seed, idx)), seed + j))
    return out


@dataclass
class Run:
    """One variant on one batch."""

    images: np.ndarray                  # (B, H, W, 3) uint8
    tokens: list[np.ndarray]            # per step (B, p*p); (B, 0) for a skipped step
    step_seconds: list[float]           # per scale step (zeros when a single graph runs them all)
    decode_seconds: float
    graph_seconds: float = 0.0          # one call that runs every step and the decoder (a bundle's
                                        # whole-generation graph, upstream's sampler): not split by step
    wall_seconds: float = 0.0           # the whole call, device synchronized at both ends
    peak_bytes: int | None = None


Runner = Callable[[Batch], Run]


class TorchRunner:
    """A step-protocol model (baseline or accelerated) through the one step loop, on its device's
    fast path (CUDA graphs on a GPU with the portable sampler); `fast=False` times the eager loop,
    for the GPU benchmark's eager-against-graphs columns."""

    def __init__(self, model: StepModel, settings: SamplingSettings, fast: bool = True, prompts=None):
        from .models.cuda_graphs import fast_path
        self.model = fast_path(model, settings) if fast else model
        self.settings = settings
        self.device = model.device
        self.prompts = prompts            # a text model's prompt set (TextBatch): a batch's labels index it

    def __call__(self, batch: Batch) -> Run:
        import torch

        from .models.sampler import batch_generator, generate_batch
        inputs = torch.tensor(batch.labels, device=self.device) if self.prompts is None \
            else self.prompts.rows(list(batch.labels))
        gen = batch_generator(self.settings, self.device, batch.generator_seed)
        g = generate_batch(self.model, inputs, self.settings, batch.keys, gen)
        return Run(g.images.cpu().numpy(), [t.cpu().numpy() for t in g.tokens], g.step_seconds, g.decode_seconds)


class PipelineRunner:
    """An exported bundle on the torch-free runtime; for a text bundle, `prompts` (one (T, C)
    embedding array per prompt) are what a batch's labels index."""

    def __init__(self, pipeline, prompts: Sequence[np.ndarray] | None = None):
        self.pipeline, self.prompts = pipeline, prompts

    def __call__(self, batch: Batch) -> Run:
        conds = batch.labels if self.prompts is None else [self.prompts[c] for c in batch.labels]
        r = self.pipeline.generate_items([(c, s, i) for c, (s, i) in zip(conds, batch.keys)])
        return Run(r.images, r.tokens, r.step_seconds, r.decode_seconds, r.graph_seconds)


def clock_context(model: StepModel, batch: int, provider: str = "torch") -> dict:
    """Everything a measured time depends on besides the work itself: the machine, the device and
    dtype, the provider, the batch size, the threads and the code. A cached timing is reused only
    where all of it is the same."""
    import platform

    import torch

    from . import __version__
    from .utils.machine import cpu_model
    device = model.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {"machine": platform.node(), "arch": platform.machine(), "device": f"{device.type}: {name}",
            "dtype": str(model.dtype).removeprefix("torch."), "provider": provider, "batch": int(batch),
            "threads": torch.get_num_threads(), "fastervar": __version__, "torch": torch.__version__}


def _sync(device: str) -> None:
    if device == "cuda":
        import torch
        torch.cuda.synchronize()


def _device(runners: dict[str, Runner]) -> str:
    """Where the torch runners run: what the harness synchronizes around each run."""
    on_gpu = any(getattr(getattr(r, "device", None), "type", None) == "cuda" for r in runners.values())
    return "cuda" if on_gpu else "cpu"


def interleaved(runners: dict[str, Runner], work: Sequence[Batch], reps: int = 1, device: str | None = None,
                warmup: int = 1, memory: bool = False, min_seconds: float = 0.0, max_reps: int | None = None,
                progress: bool = True, desc: str = "timing") -> dict[str, list[list[Run]]]:
    """Run every runner on every batch, interleaved; returns runs[name][pass][batch].

    At least `reps` passes; more, up to `max_reps`, until `min_seconds` of timed work (short
    workloads get more samples). `memory` records each run's peak memory above its start.
    `device` defaults to the torch runners' own.
    """
    device = device or _device(runners)
    shapes = list({len(b.labels): b for b in reversed(work)}.values())[::-1]    # the first batch of each size
    for _ in range(warmup):
        for batch in shapes:
            for run in runners.values():
                run(batch)
    out: dict[str, list[list[Run]]] = {name: [] for name in runners}
    spent, rep = 0.0, 0
    limit = max(reps, max_reps or reps)
    with tqdm(total=reps * len(work), desc=desc, unit="batch", disable=not progress) as bar:
        while rep < reps or (spent < min_seconds and rep < limit):
            for name in runners:
                out[name].append([])
            for batch in work:
                for name, run in runners.items():
                    with PeakMemory(device) if memory else _NoMemory() as mem:
                        _sync(device)
                        t0 = time.perf_counter()
                        result = run(batch)
                        _sync(device)
                        result.wall_seconds = time.perf_counter() - t0
                    result.peak_bytes = mem.peak_bytes
                    spent += result.wall_seconds
                    out[name][-1].append(result)
                bar.update()
            rep += 1
    return out


class _NoMemory:
    peak_bytes = None

    def __enter__(self) -> _NoMemory:  # noqa: PYI034 -- typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc) -> None:
        return None


@dataclass
class Timing:
    """One variant's times per pass over the workload: medians over the timed passes."""

    seconds: float                      # wall clock per pass
    step_seconds: list[float]           # per scale step, per pass
    decode_seconds: float
    graph_seconds: float
    passes: list[float]                 # every pass's wall seconds, for the JSON

    @property
    def seconds_steps(self) -> float:
        return sum(self.step_seconds)


def summarize(passes: list[list[Run]]) -> Timing:
    """Medians over passes of the per-pass sums."""
    walls = [sum(r.wall_seconds for r in p) for p in passes]
    steps = [np.sum([r.step_seconds for r in p], axis=0) for p in passes]
    return Timing(statistics.median(walls), np.median(np.stack(steps), axis=0).tolist(),
                  statistics.median(sum(r.decode_seconds for r in p) for p in passes),
                  statistics.median(sum(r.graph_seconds for r in p) for p in passes), walls)


def speedup(baseline: list[list[Run]], other: list[list[Run]], what: str = "wall") -> float:
    """Median over passes of baseline/other, pass by pass: `wall` (end to end) or `steps`."""
    def total(p: list[Run]) -> float:
        return sum(r.wall_seconds if what == "wall" else sum(r.step_seconds) for r in p)
    return statistics.median(total(b) / max(total(o), 1e-12) for b, o in zip(baseline, other))


def first_pass(passes: list[list[Run]]) -> Run:
    """The first pass's runs joined into one: its images and tokens in request order."""
    runs = passes[0]
    return Run(np.concatenate([r.images for r in runs]),
               [np.concatenate([r.tokens[k] for r in runs]) for k in range(len(runs[0].tokens))],
               list(np.sum([r.step_seconds for r in runs], axis=0)), sum(r.decode_seconds for r in runs),
               sum(r.graph_seconds for r in runs), sum(r.wall_seconds for r in runs))
