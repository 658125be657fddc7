"""GPU speed of the VAR pipeline: torch eager vs CUDA graphs vs accelerated (vs TensorRT plans).

Times the scale steps and the decoder of VAR models with seeded random weights, per variant:

    eager          the model's own step loop, as the reference sampler runs it
    graphs         the same steps, one CUDA graph per scale step (and one for the decoder)
    accel          the paper-split profile through AcceleratedModel
    accel+graphs   that profile replayed as graphs
    *+hoisted      eager/accel with the constants the package builds on the host (resampling
                   matrices, selector projections) kept on the device: a diagnostic that splits
                   what graphs gain by not uploading them (a blocking copy per call) from what
                   they gain in launch overhead
    tensorrt       the runtime pipeline from a bundle's plans, when TensorRT imports and --bundle
                   is given

Every variant reads the same portable noise, drawn once onto the device before timing, so the
timings measure the GPU and not numpy. Graphed and hoisted variants must reproduce their eager
twin's tokens exactly (`tokens_match`). Reps are interleaved (eager, graphs, accel, ...) so clock
and thermal drift hit every variant alike. The JSON is rewritten after every model and batch.

    bash benchmarks/gpu.sh                      # = python benchmarks/gpu.py --json $OUT/gpu.json
    python benchmarks/gpu.py --models d16,d30 --batches 1,16 --reps 5 --dtype fp32 --json out/gpu.json
    python benchmarks/gpu.py --device cpu --models tiny --batches 1 --reps 1     # smoke test

The package need not be installed: the repository root is put on sys.path. Only torch and numpy
are required.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import json
import math
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _stub_missing_imports() -> list[str]:
    """Stand-ins for packages fastervar imports at module level but this benchmark never uses.

    The GPU host has torch and numpy only. `fastervar.models.loading` imports the checkpoint module,
    which imports safetensors (needed only to load the embedded model, skipped without it), and the
    reference sampler imports tqdm for its progress bar. A stub is installed only when the real
    package is missing, and the names stubbed are recorded in the JSON.
    """
    stubbed = []
    try:
        importlib.import_module("safetensors.torch")
    except ImportError:
        class SafetensorError(Exception):
            pass

        def unavailable(*_a: Any, **_k: Any) -> Any:
            raise ImportError("safetensors is not installed (stubbed by benchmarks/gpu.py)")

        st = types.ModuleType("safetensors")
        st.SafetensorError = SafetensorError
        st_torch = types.ModuleType("safetensors.torch")
        st_torch.load_file = st_torch.save_file = unavailable
        st.torch = st_torch
        sys.modules.update({"safetensors": st, "safetensors.torch": st_torch})
        stubbed.append("safetensors")
    try:
        importlib.import_module("tqdm.auto")
    except ImportError:
        def tqdm(iterable: Any = None, *_a: Any, **_k: Any) -> Any:    # pass-through, no bar
            return iterable

        tq = types.ModuleType("tqdm")
        tq_auto = types.ModuleType("tqdm.auto")
        tq.tqdm = tq_auto.tqdm = tqdm
        tq.auto = tq_auto
        sys.modules.update({"tqdm": tq, "tqdm.auto": tq_auto})
        stubbed.append("tqdm")
    return stubbed


STUBBED = _stub_missing_imports()

import fastervar.accel.accelerated as accelerated_mod
import fastervar.accel.selectors as selectors_mod
import fastervar.models.resample as resample_mod
from fastervar.accel.accelerated import AcceleratedModel
from fastervar.accel.presets import paper_split
from fastervar.errors import FastervarError
from fastervar.models.family import VARModel, to_uint8
from fastervar.models.loading import embedded_model, random_model
from fastervar.models.sampling import SamplingSettings
from fastervar.profile import Profile
from fastervar.profiles import resolve
from fastervar.runtime.noise import batch_uniform

VARIANTS = ("eager", "eager+hoisted", "graphs", "accel", "accel+hoisted", "accel+graphs", "tensorrt")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# whose tokens a variant must reproduce exactly
REFERENCE = {"eager+hoisted": "eager", "graphs": "eager", "accel+hoisted": "accel", "accel+graphs": "accel"}
Step = Any          # VARModel or AcceleratedModel: the scale-step protocol


# -- timing ------------------------------------------------------------------------------------
class Marks:
    """Timestamps between pieces of one run: CUDA events on the GPU (the device's own timeline,
    launch gaps included), perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = []

    def mark(self) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append(ev)
        else:
            self.marks.append(time.perf_counter())

    def intervals_ms(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:])]
        return [(b - a) * 1e3 for a, b in zip(self.marks, self.marks[1:])]


@dataclasses.dataclass
class RunResult:
    tokens: list[torch.Tensor | None] | None       # per step (B, p*p); None for a skipped step
    images: torch.Tensor | None                    # (B, H, W, 3) uint8
    step_ms: list[float] | None                    # per scale step, whole batch
    decode_ms: float | None
    total_ms: float                                # wall clock, device synchronized at both ends
    working_mb: float | None = None                # peak allocation above what was resident before
    peak_mb: float | None = None                   # torch.cuda.max_memory_allocated during the run


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measured(device: torch.device, fn: Callable[[], RunResult]) -> RunResult:
    """Run `fn` with wall time and peak memory around it (peak reset before, so per run)."""
    _sync(device)
    base = 0
    if device.type == "cuda":
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    res = fn()
    _sync(device)
    res.total_ms = (time.perf_counter() - t0) * 1e3
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
        res.peak_mb, res.working_mb = peak / 2**20, (peak - base) / 2**20
    return res


# -- the state of a run, as tensors ------------------------------------------------------------
def _tensors(obj: Any) -> list[torch.Tensor]:
    """Every tensor in a step state (f_hat, KV caches, cached outputs), in a fixed order."""
    if obj is None:
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


def _copy_state(state: Any) -> Any:
    """A shallow copy: the accelerator assigns into the state it is given, and a graph's stored
    output state must survive being passed to the next step."""
    def shallow(v: Any) -> Any:
        return list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v
    return dataclasses.replace(state, **{f.name: shallow(getattr(state, f.name))
                                         for f in dataclasses.fields(state) if f.init})


# -- constants a graph cannot upload -----------------------------------------------------------
def _device_random_projection(projections: dict) -> Callable[..., torch.Tensor]:
    """`selectors.random_projection` with its two host constants (the projection matrix and the
    row index) taken from the device: the same ops on the same values, so the same choice."""
    def random_projection(feats: torch.Tensor, keep: int, dim: int = 8, seed: int = 0) -> torch.Tensor:
        b, _, c = feats.shape
        key = (c, dim, seed, feats.device)
        if key not in projections:          # filled by the warm-up pass, read during capture
            rng = np.random.default_rng(seed)
            projections[key] = torch.from_numpy(rng.standard_normal((c, dim)) / math.sqrt(dim)).to(feats.device)
        proj = projections[key].to(feats)
        rows = torch.arange(b, device=feats.device)
        z = feats @ proj
        centred = z - z.mean(1, keepdim=True)
        first = centred.square().sum(-1).argmax(1)
        chosen = [first]
        dist = (z - z[rows, first].unsqueeze(1)).square().sum(-1)
        for _ in range(keep - 1):
            nxt = dist.argmax(1)
            chosen.append(nxt)
            dist = torch.minimum(dist, (z - z[rows, nxt].unsqueeze(1)).square().sum(-1))
        return torch.stack(chosen, 1).sort(dim=1).values
    return random_projection


class Hoisted:
    """Device-resident copies of the constants the steps build on the host and upload per call.

    `resample` uploads its numpy-built matrix and the selectors upload projections and index sets
    on every call; a CUDA graph cannot capture an upload from pageable memory (torch refuses it,
    or older versions capture a copy from freed host memory). Inside `active()` those functions
    return cached device tensors instead: the warm-up pass fills the cache, the capture only reads
    it. Eager variants never run under it, so they time the package exactly as it is.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.cache: dict[tuple, torch.Tensor] = {}
        self.projections: dict = {}
        self.rp = _device_random_projection(self.projections)
        self.rp_ok = self._check_random_projection()

    def _check_random_projection(self) -> bool:
        """Use the device copy only if it picks what the package's selector picks."""
        g = torch.Generator().manual_seed(0)
        feats = torch.randn(2, 64, 16, generator=g).to(self.device)
        try:
            return all(torch.equal(self.rp(feats, 9, seed=s), selectors_mod.random_projection(feats, 9, seed=s))
                       for s in (0, 7))
        except Exception:                      # noqa: BLE001 -- any failure: keep the package's own
            return False

    def _get(self, key: tuple, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    @contextmanager
    def active(self) -> Iterator[None]:
        orig_matrix, orig_rp, orig_select = (resample_mod.resample_matrix, selectors_mod.random_projection,
                                             accelerated_mod.select)

        def matrix(src: int, dst: int, mode: str) -> torch.Tensor:
            return self._get(("resample", src, dst, mode), lambda: orig_matrix(src, dst, mode).to(self.device))

        def select(name: str, feats: torch.Tensor, keep: int, pn: int, step: int,
                   scores: list[float] | None = None) -> torch.Tensor:
            if name in ("random", "grid", "relevance"):          # content-independent: constants
                return self._get(("select", name, feats.shape[0], pn, keep, step),
                                 lambda: orig_select(name, feats, keep, pn, step, scores))
            return orig_select(name, feats, keep, pn, step, scores)

        resample_mod.resample_matrix = matrix
        accelerated_mod.select = select
        if self.rp_ok:
            selectors_mod.random_projection = self.rp
        try:
            yield
        finally:
            resample_mod.resample_matrix, selectors_mod.random_projection = orig_matrix, orig_rp
            accelerated_mod.select = orig_select


# -- runners -----------------------------------------------------------------------------------
def autocast(device: torch.device, dtype: str, cache: bool = True) -> Any:
    """Mixed precision for bf16/fp16 (weights stay fp32); nothing for fp32. Capture needs the
    autocast weight cache off, since a cached cast made during capture would not be replayed."""
    if dtype == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype], cache_enabled=cache)


class EagerRunner:
    """The model's own step loop, exactly as the reference sampler runs it (noise pre-drawn).

    With `hoisted`, the host-built constants come from the device instead: a diagnostic that
    separates what graphs gain from no longer uploading (a blocking copy per call) from what they
    gain in launch overhead.
    """

    def __init__(self, name: str, model: Step, settings: SamplingSettings, device: torch.device, dtype: str,
                 hoisted: Hoisted | None = None):
        self.name, self.model, self.settings, self.device, self.dtype = name, model, settings, device, dtype
        self.hoisted = hoisted

    def run(self, labels: torch.Tensor, noises: Sequence[torch.Tensor]) -> RunResult:
        m, marks, tokens = self.model, Marks(self.device), []
        with autocast(self.device, self.dtype), (self.hoisted.active() if self.hoisted else nullcontext()):
            marks.mark()
            cond = m.condition(labels, guided=True)
            state = m.init_state(labels.shape[0])
            for k in range(m.num_steps):
                state, out = m.step(k, state, cond, noises[k], self.settings)
                tokens.append(None if out is None else out.tokens)
                marks.mark()
            images = to_uint8(m.decode(state.f_hat))
            marks.mark()
        ms = marks.intervals_ms()
        return RunResult(tokens, images, ms[:-1], ms[-1], 0.0)


@dataclasses.dataclass
class Captured:
    graph: Any                          # torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]          # the static buffers the graph reads
    state: Any                          # the output state (graph-owned tensors); decode: the images
    tokens: torch.Tensor | None


class GraphRunner:
    """One CUDA graph per scale step (and one for the decoder), replayed in order.

    A scale step has fixed shapes (its token count and KV-cache length are set by the schedule), so
    each is capturable on its own. The graphs share one memory pool and are captured in sequence,
    each reading the previous one's output tensors as its static inputs, so a full replay copies
    nothing but the condition. A step whose capture fails runs eagerly; its outputs are then copied
    into the next graph's input buffers. `captured` and `capture_errors` say which steps were graphed.
    """

    def __init__(self, name: str, model: Step, settings: SamplingSettings, device: torch.device, dtype: str,
                 hoisted: Hoisted):
        self.name, self.model, self.settings, self.device, self.dtype = name, model, settings, device, dtype
        self.hoisted = hoisted
        self.plan: list[Captured | None] = []
        self.decoder: Captured | None = None
        self.captured: list[str] = []
        self.capture_errors: dict[str, str] = {}
        self.capture_s = 0.0
        self.resident_mb = self.pool_mb = 0.0

    def _skipped(self, k: int) -> bool:
        m = self.model
        return isinstance(m, AcceleratedModel) and m.profile.steps[k].mode == "skip"

    def _eager_pass(self, labels: torch.Tensor, noises: Sequence[torch.Tensor]) -> None:
        m = self.model
        cond = m.condition(labels, guided=True)
        state = m.init_state(labels.shape[0])
        for k in range(m.num_steps):
            state, _ = m.step(k, state, cond, noises[k], self.settings)
        to_uint8(m.decode(state.f_hat))

    def capture(self, labels: torch.Tensor, noises: Sequence[torch.Tensor]) -> None:
        m, t0 = self.model, time.perf_counter()
        torch.cuda.synchronize()
        alloc0, reserved0 = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
        side = torch.cuda.Stream()                 # warm up off the default stream, as torch advises;
        side.wait_stream(torch.cuda.current_stream())      # this pass also fills the hoisted constants
        with torch.cuda.stream(side), self.hoisted.active(), autocast(self.device, self.dtype, cache=False):
            self._eager_pass(labels, noises)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        with autocast(self.device, self.dtype):
            self.cond = m.condition(labels, guided=True)
            self.state0 = m.init_state(labels.shape[0])
        pool = torch.cuda.graph_pool_handle()
        state = self.state0
        for k in range(m.num_steps):
            if self._skipped(k):
                self.plan.append(None)
                state, _ = m.step(k, _copy_state(state), self.cond, noises[k], self.settings)
                continue
            inputs = [self.cond, noises[k], *_tensors(state)]
            fn = (lambda k=k, s=state: m.step(k, _copy_state(s), self.cond, noises[k], self.settings))
            entry = self._capture_one(f"step {k}", fn, inputs, pool)
            if entry is None:                      # runs eagerly; outputs are real, as the graphs replayed
                with autocast(self.device, self.dtype):
                    state, _ = fn()
            else:
                state = entry.state
            self.plan.append(entry)
        decode = (lambda f=state.f_hat: (to_uint8(m.decode(f)), None))
        self.decoder = self._capture_one("decode", decode, [state.f_hat], pool)
        torch.cuda.synchronize()
        self.resident_mb = (torch.cuda.memory_allocated() - alloc0) / 2**20
        self.pool_mb = (torch.cuda.memory_reserved() - reserved0) / 2**20
        self.capture_s = time.perf_counter() - t0

    def _capture_one(self, what: str, fn: Callable[[], tuple[Any, Any]], inputs: list[torch.Tensor],
                     pool: Any) -> Captured | None:
        graph = torch.cuda.CUDAGraph()
        try:
            with self.hoisted.active(), torch.cuda.graph(graph, pool=pool), \
                    autocast(self.device, self.dtype, cache=False):
                state, out = fn()
            graph.replay()                         # real outputs now, for the next capture's eager fallback
        except Exception as exc:                   # noqa: BLE001 -- any failure: that piece runs eagerly
            torch.cuda.synchronize()
            self.capture_errors[what] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
            return None
        self.captured.append(what)
        tokens = None if out is None else out.tokens
        return Captured(graph, inputs, state if isinstance(state, torch.Tensor) else _copy_state(state), tokens)

    @staticmethod
    def _feed(entry: Captured, live: list[torch.Tensor]) -> None:
        """Copy live inputs into the graph's static buffers, unless they already are those buffers."""
        if len(live) != len(entry.inputs):
            raise RuntimeError(f"step state has {len(live)} tensors, the graph was captured with {len(entry.inputs)}")
        for dst, src in zip(entry.inputs, live):
            if dst.data_ptr() != src.data_ptr() or dst.shape != src.shape:
                dst.copy_(src)

    def run(self, labels: torch.Tensor, noises: Sequence[torch.Tensor]) -> RunResult:
        m, marks, tokens = self.model, Marks(self.device), []
        with autocast(self.device, self.dtype):
            marks.mark()
            cond = m.condition(labels, guided=True)
            state = self.state0
            for k, entry in enumerate(self.plan):
                if entry is None:
                    state, out = m.step(k, _copy_state(state), cond, noises[k], self.settings)
                    tokens.append(None if out is None else out.tokens)
                else:
                    self._feed(entry, [cond, noises[k], *_tensors(state)])
                    entry.graph.replay()
                    state = entry.state
                    tokens.append(entry.tokens)
                marks.mark()
            if self.decoder is None:
                images = to_uint8(m.decode(state.f_hat))
            else:
                self._feed(self.decoder, [state.f_hat])
                self.decoder.graph.replay()
                images = self.decoder.state
            marks.mark()
        ms = marks.intervals_ms()
        return RunResult(tokens, images, ms[:-1], ms[-1], 0.0)


class PipelineRunner:
    """The runtime pipeline built from a bundle's TensorRT plans; it draws its own noise on the host
    (the same portable noise, from the seed), so its time includes that draw."""

    def __init__(self, pipeline: Any, seed: int):
        self.name, self.pipeline, self.seed = "tensorrt", pipeline, seed

    def run(self, labels: torch.Tensor, noises: Sequence[torch.Tensor]) -> RunResult:
        out = self.pipeline.generate([int(c) for c in labels.tolist()], seed=self.seed)
        tokens = getattr(out, "tokens", None)
        if tokens is not None:
            tokens = [None if t is None else torch.as_tensor(np.asarray(t)) for t in tokens]
        return RunResult(tokens, None, None, None, 0.0)


def tensorrt_pipeline(bundle: str | None) -> tuple[Any, str]:
    """The bundle's TensorRT pipeline, or None and the reason it is not available."""
    if not bundle:
        return None, "not available: no --bundle given"
    try:
        importlib.import_module("tensorrt")
    except Exception as exc:                   # noqa: BLE001
        return None, f"not available: import tensorrt failed ({type(exc).__name__}: {exc})"
    try:
        from fastervar.runtime import Pipeline  # being written alongside this benchmark
        return Pipeline.from_bundle(bundle, provider="tensorrt"), "ok"
    except Exception as exc:                   # noqa: BLE001
        return None, f"not available: {type(exc).__name__}: {exc}"


# -- one model at one batch size ---------------------------------------------------------------
def load_model(name: str) -> VARModel:
    if name == "fashion-tiny":
        if "safetensors" in STUBBED:
            raise FastervarError("the embedded model needs safetensors, which is not installed")
        return embedded_model()
    return random_model(name)


def load_profile(spec: str | None, model: VARModel) -> Profile:
    """`--profile`, else the shipped MODEL-paper-split, else the paper-split template."""
    if spec:
        return resolve(spec)
    try:
        return resolve(f"{model.cfg.name}-paper-split")
    except FastervarError:
        return paper_split(model.cfg)


def draw_noise(model: VARModel, batch: int, seed: int, device: torch.device) -> list[torch.Tensor]:
    """Every step's portable noise for images 0..B-1 of `seed`, as `generate` draws it, on the device."""
    return [torch.from_numpy(batch_uniform(seed, range(batch), k, model.tokens_at(k), model.cfg.vae.vocab_size))
            .to(device) for k in range(model.num_steps)]


def _agreement(a: list[torch.Tensor | None] | None, b: list[torch.Tensor | None] | None) -> float | None:
    """Fraction of sampled tokens equal between two runs (steps both ran)."""
    if a is None or b is None or len(a) != len(b):
        return None
    same = total = 0
    for x, y in zip(a, b):
        if x is None or y is None:
            continue
        if x.shape != y.shape:
            return None
        same += int((x.cpu() == y.cpu()).sum())
        total += x.numel()
    return same / total if total else None


def _med(xs: list[float]) -> float:
    return statistics.median(xs)


def bench_section(model: VARModel, acc: AcceleratedModel, batch: int, args: argparse.Namespace,
                  device: torch.device, hoisted: Hoisted, pipeline: Any, pipeline_status: str,
                  deadline: float) -> dict:
    """Warm up, capture, verify and time every variant of one model at one batch size."""
    settings = SamplingSettings(cfg=args.cfg, top_k=args.top_k, top_p=args.top_p, sampler="portable")
    labels = torch.tensor([(7 * i) % model.cfg.var.num_classes for i in range(batch)], device=device)
    noises = draw_noise(model, batch, args.seed, device)
    wanted = [v for v in VARIANTS if v in args.variants]
    status: dict[str, str] = {}
    runners: dict[str, Any] = {}
    for name in wanted:
        if name.endswith("graphs") and device.type != "cuda":
            status[name] = "skipped: needs CUDA"
        elif name == "tensorrt" and pipeline is None:
            status[name] = pipeline_status
        elif name == "tensorrt" and model.cfg.name != args.bundle_model:
            status[name] = f"skipped: the bundle is timed with --bundle-model {args.bundle_model}"
        else:
            status[name] = "ok"
    for name in wanted:
        inner = acc if name.startswith("accel") else model
        if status[name] != "ok":
            continue
        if name == "tensorrt":
            runners[name] = PipelineRunner(pipeline, args.seed)
        elif name.endswith("graphs"):
            runners[name] = GraphRunner(name, inner, settings, device, args.dtype, hoisted)
        else:
            runners[name] = EagerRunner(name, inner, settings, device, args.dtype,
                                        hoisted if name.endswith("+hoisted") else None)

    def attempt(name: str, fn: Callable[[], Any]) -> Any:
        """A failing variant is reported and dropped; the others go on."""
        try:
            return fn()
        except Exception as exc:               # noqa: BLE001
            status[name] = f"failed: {type(exc).__name__}: {str(exc).strip()[:300]}"
            runners.pop(name, None)
            _sync(device)
            return None

    print(f"\n{model.cfg.name} batch {batch}: warm-up and capture ...", file=sys.stderr, flush=True)
    for name in [n for n in runners if isinstance(runners[n], EagerRunner)]:     # first pass: lazy init
        attempt(name, lambda r=runners[name]: r.run(labels, noises))
    for name in [n for n in runners if isinstance(runners[n], GraphRunner)]:
        attempt(name, lambda r=runners[name]: r.capture(labels, noises))
        if name in runners:
            r = runners[name]
            print(f"  {name}: graphed {len(r.captured)} pieces in {r.capture_s:.1f}s"
                  + (f", eager: {', '.join(r.capture_errors)}" if r.capture_errors else ""), file=sys.stderr, flush=True)
    last: dict[str, RunResult] = {}
    for _ in range(max(1, args.warmup)):                 # the last one is also the token check
        for name in list(runners):
            res = attempt(name, lambda r=runners[name]: r.run(labels, noises))
            if res is not None:
                last[name] = res
    # tokens and images of the last warm-up, cloned before the timed reps overwrite graph outputs
    check = {n: ([None if t is None else t.clone() for t in r.tokens] if r.tokens is not None else None,
                 None if r.images is None else r.images.clone()) for n, r in last.items()}
    runs: dict[str, list[RunResult]] = {n: [] for n in runners}
    for rep in range(args.reps):
        if rep > 0 and time.perf_counter() > deadline:
            print(f"  time budget reached after {rep} reps", file=sys.stderr)
            break
        for name in list(runners):
            res = attempt(name, lambda r=runners[name]: measured(device, lambda: r.run(labels, noises)))
            if res is not None:
                runs[name].append(res)
    return summarize(model, acc, batch, args, status, runners, runs, check)


def summarize(model: VARModel, acc: AcceleratedModel, batch: int, args: argparse.Namespace,
              status: dict[str, str], runners: dict[str, Any], runs: dict[str, list[RunResult]],
              check: dict[str, tuple]) -> dict:
    """Medians per step and in total, speedups against eager, token checks: the JSON section."""
    out: dict[str, Any] = {
        "model": model.cfg.name, "batch": batch, "profile": acc.profile.name,
        "plan": [{"step": k, "tokens": model.tokens_at(k), "mode": p.mode, "cfg": p.cfg,
                  "keep": p.keep if p.mode == "reduce" else None} for k, p in enumerate(acc.profile.steps)],
        "variants": {},
    }
    eager = runs.get("eager") or []
    eager_total = _med([r.total_ms for r in eager]) if eager else None
    eager_steps = _med([sum(r.step_ms) for r in eager]) if eager else None
    for name, st in status.items():
        rs = runs.get(name) or []
        v: dict[str, Any] = {"status": st if rs or st != "ok" else "failed: no timed rep"}
        if rs:
            total = _med([r.total_ms for r in rs])
            v.update({"reps": len(rs), "total_ms": total, "total_ms_per_image": total / batch,
                      "images_per_s": 1e3 * batch / total, "total_ms_all": [r.total_ms for r in rs]})
            if rs[0].step_ms is not None:
                per_step = [_med([r.step_ms[k] for r in rs]) for k in range(len(rs[0].step_ms))]
                steps = _med([sum(r.step_ms) for r in rs])
                v.update({"step_ms": per_step, "step_ms_per_image": [x / batch for x in per_step],
                          "steps_ms": steps, "steps_ms_per_image": steps / batch,
                          "decode_ms": _med([r.decode_ms for r in rs]),
                          "decode_ms_per_image": _med([r.decode_ms for r in rs]) / batch})
                if eager_steps:
                    v["speedup_steps"] = eager_steps / steps
            if eager_total:
                v["speedup_total"] = eager_total / total
            if rs[0].peak_mb is not None:
                v["peak_allocated_mb"] = max(r.peak_mb for r in rs)
                v["working_mb"] = max(r.working_mb for r in rs)
        runner = runners.get(name)
        if isinstance(runner, GraphRunner):
            steps_total = model.num_steps
            v.update({"captured": runner.captured, "capture_errors": runner.capture_errors,
                      "graphed_steps": f"{sum(e is not None for e in runner.plan)}/{steps_total}",
                      "capture_s": runner.capture_s, "graph_resident_mb": runner.resident_mb,
                      "graph_pool_reserved_mb": runner.pool_mb,
                      "hoisted_random_projection": runner.hoisted.rp_ok})
        ref = REFERENCE.get(name)
        if name in check and ref in check:
            agree = _agreement(check[name][0], check[ref][0])
            v["tokens_vs"] = ref
            v["token_agreement"] = agree
            v["tokens_match"] = agree == 1.0
            a, b = check[name][1], check[ref][1]
            v["images_match"] = None if a is None or b is None else bool(torch.equal(a, b))
        elif name == "accel" and "eager" in check:
            v["token_agreement_vs_eager"] = _agreement(check["accel"][0], check["eager"][0])
        elif name == "tensorrt" and name in check:
            v["token_agreement_vs_eager"] = _agreement(check[name][0], check.get("eager", (None,))[0])
            v["token_agreement_vs_accel"] = _agreement(check[name][0], check.get("accel", (None,))[0])
            v["note"] = "wall time of Pipeline.generate, host noise draw included"
        out["variants"][name] = v
    return out


# -- output ------------------------------------------------------------------------------------
def _f(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def print_section(sec: dict) -> None:
    """The summary table (per image, medians) and the per-step table of one model and batch."""
    print(f"\n== {sec['model']}  batch {sec['batch']}  profile {sec['profile']}  (ms per image, medians)")
    head = (f"{'variant':<13} {'steps':>9} {'decode':>8} {'total':>9} {'img/s':>8} {'steps x':>8} {'total x':>8} "
            f"{'tokens':>15} {'graphed':>8} {'work MB':>8} {'graph MB':>8}")
    print(head)
    print("-" * len(head))
    for name, v in sec["variants"].items():
        if "total_ms" not in v:
            print(f"{name:<13} {v['status']}")
            continue
        tok = "-" if "tokens_match" not in v else (
            ("same" if v["tokens_match"] else f"DIFF {_f(v['token_agreement'], '.3f')}") + f" as {v['tokens_vs']}")
        speed = [_f(v.get(key)) + ("x" if key in v else "") for key in ("speedup_steps", "speedup_total")]
        print(f"{name:<13} {_f(v.get('steps_ms_per_image'), '.3f'):>9} {_f(v.get('decode_ms_per_image'), '.3f'):>8} "
              f"{_f(v['total_ms_per_image'], '.3f'):>9} {_f(v['images_per_s'], '.1f'):>8} {speed[0]:>8} {speed[1]:>8} "
              f"{tok:>15} {v.get('graphed_steps', '-'):>8} {_f(v.get('working_mb'), '.0f'):>8} "
              f"{_f(v.get('graph_resident_mb'), '.0f'):>8}")
        for what, err in (v.get("capture_errors") or {}).items():
            print(f"{'':<13} eager at {what}: {err}")
    timed = [n for n, v in sec["variants"].items() if "step_ms" in v]
    if not timed:
        return
    width = max(9, *(len(n) for n in timed))
    print(f"\n{'step':>4} {'tokens':>6} {'plan':>15} " + " ".join(f"{n:>{width}}" for n in timed))
    for p in sec["plan"]:
        k = p["step"]
        plan = p["mode"] + ("" if p["keep"] is None else f" {p['keep']}") + ("" if p["cfg"] else " nocfg")
        cells = " ".join(f"{sec['variants'][n]['step_ms_per_image'][k]:>{width}.3f}" for n in timed)
        print(f"{k:>4} {p['tokens']:>6} {plan:>15} {cells}")
    cells = " ".join(f"{sec['variants'][n]['decode_ms_per_image']:>{width}.3f}" for n in timed)
    print(f"{'dec':>4} {'':>6} {'':>15} {cells}")


def environment(device: torch.device, dtype: str) -> dict:
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "numpy": np.__version__,
           "python": platform.python_version(), "device": device.type, "dtype": dtype,
           "stubbed_imports": STUBBED}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update({"gpu": torch.cuda.get_device_name(device), "gpu_memory_gb": props.total_memory / 2**30,
                    "cudnn": torch.backends.cudnn.version(),
                    "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                    "tf32_cudnn": torch.backends.cudnn.allow_tf32})
    else:
        env["threads"] = torch.get_num_threads()
    return env


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--models", type=_csv, default=["d16"],
                    help="comma list of named configs (random weights); fashion-tiny is the shipped model")
    ap.add_argument("--batches", type=lambda s: [int(x) for x in _csv(s)], default=[1, 16])
    ap.add_argument("--reps", type=int, default=5, help="timed reps per variant, interleaved")
    ap.add_argument("--warmup", type=int, default=2, help="untimed reps per variant, after capture")
    ap.add_argument("--dtype", default="fp32", choices=tuple(DTYPES), help="bf16/fp16: torch.autocast")
    ap.add_argument("--variants", type=_csv, default=list(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    ap.add_argument("--profile", default=None, help="profile file or shipped name [MODEL-paper-split]")
    ap.add_argument("--bundle", default=None, help="bundle directory with TensorRT plans")
    ap.add_argument("--bundle-model", default=None, help="model the bundle was built for [first of --models]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cfg", type=float, default=1.5)
    ap.add_argument("--top-k", type=int, default=900)
    ap.add_argument("--top-p", type=float, default=0.96)
    ap.add_argument("--budget-s", type=float, default=270.0,
                    help="start no model or batch, and no further timed rep, after this many seconds")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; choose from {','.join(VARIANTS)}")
    args.bundle_model = args.bundle_model or args.models[0]
    return args


def write_json(path: Path | None, result: dict) -> None:
    """Written after every section, so a run cut short still leaves what it measured."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(path)


@torch.no_grad()
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    deadline = start + args.budget_s
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device cuda: torch {torch.__version__} sees no CUDA GPU (use --device cpu for a smoke test)")
    device = torch.device(args.device)
    env = environment(device, args.dtype)
    print(" ".join(f"{k}={v}" for k, v in env.items()))
    pipeline, pipeline_status = (tensorrt_pipeline(args.bundle) if "tensorrt" in args.variants
                                 else (None, "not requested"))
    if "tensorrt" in args.variants:
        print(f"tensorrt: {pipeline_status}")
    result: dict[str, Any] = {
        "environment": env,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "notes": ["ms are medians over timed reps; steps/decode from CUDA events, total is wall clock",
                  "speedups are against the eager baseline (the model's own step loop) at the same batch",
                  ("graph and +hoisted variants use device-resident copies of the constants the package "
                   "builds on the host and uploads per call (Hoisted); plain eager/accel upload them"),
                  ("working_mb: peak allocation above the memory resident before the run; graph variants "
                   "also hold graph_resident_mb between runs")],
        "sections": [], "skipped": [],
    }
    hoisted = Hoisted(device)
    for name in args.models:
        if time.perf_counter() > deadline:
            result["skipped"].append({"model": name, "reason": "time budget"})
            continue
        t0 = time.perf_counter()
        try:
            model = load_model(name)
        except FastervarError as exc:
            print(f"\n== {name}: skipped: {exc}")
            result["skipped"].append({"model": name, "reason": str(exc)})
            continue
        model.batch_invariant = False                  # time the batched decoder, as a server would
        model = model.to(device)
        acc = AcceleratedModel(model, load_profile(args.profile, model))
        params = sum(p.numel() for p in model.parameters())
        print(f"\nloaded {name}: {params / 1e6:.1f}M parameters in {time.perf_counter() - t0:.1f}s")
        for batch in args.batches:
            if time.perf_counter() > deadline:
                result["skipped"].append({"model": name, "batch": batch, "reason": "time budget"})
                continue
            t1 = time.perf_counter()
            try:
                sec = bench_section(model, acc, batch, args, device, hoisted, pipeline, pipeline_status, deadline)
            except Exception as exc:           # noqa: BLE001 -- e.g. out of memory: record it, go on
                print(f"\n== {name}  batch {batch}: failed: {type(exc).__name__}: {exc}")
                result["skipped"].append({"model": name, "batch": batch, "reason": f"{type(exc).__name__}: {exc}"})
                continue
            finally:
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            sec["seconds"] = time.perf_counter() - t1
            sec["parameters"] = params
            print_section(sec)
            result["sections"].append(sec)
            result["elapsed_s"] = time.perf_counter() - start
            write_json(args.json, result)
        del model, acc
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result["elapsed_s"] = time.perf_counter() - start
    write_json(args.json, result)
    for s in result["skipped"]:
        print(f"skipped: {s}")
    print(f"\ndone in {result['elapsed_s']:.1f}s" + (f"; wrote {args.json}" if args.json else ""))
    return result


if __name__ == "__main__":
    main()
