"""A latency model fitted on this machine, so calibration ranks candidates by the time they take here.

FLOPs alone mislead in both directions: a small model at batch 16 spends much of each step on
per-step overhead and on sampling every position over the whole vocabulary, which token reduction
does not shrink; a large model at batch 1 streams all its weights every step whatever the token
count. So each step's time is modelled as a non-negative mix of five counts the analytic cost model
gives for any profile (an executed step, matmul FLOPs, attention FLOPs, sampled logits, restored
values), with the weights fitted to per-step wall times of a few probe profiles timed on this
machine. The fit is cached next to the baseline measurements, keyed by everything a time depends
on (`timing.clock_context`), which keeps calibration deterministic once the cache exists.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import nnls
from tqdm.auto import tqdm

from ..accel.accelerated import AcceleratedModel
from ..accel.cost import step_costs
from ..accel.presets import fastvar, paper_split
from ..models.protocol import FamilyModel
from ..models.sampling import SamplingSettings
from ..profile import Profile, StepPlan, as_spec, identity
from ..timing import TorchRunner, batches, clock_context, interleaved, summarize
from ..utils.atomic import atomic_path

FEATURES = ("step", "matmul_flops", "attention_flops", "sampled_logits", "restored_values")


def step_features(model: Any, profile: Profile, batch: int) -> np.ndarray:
    """(steps, len(FEATURES)) counts for `profile` at `batch` images (`model`: a model, its
    configuration or its spec); a skipped step is all zeros."""
    spec = as_spec(model)
    rows = []
    for cost, plan in zip(step_costs(spec, profile, batch), profile.steps):
        if plan.mode == "skip":
            rows.append([0.0] * len(FEATURES))
            continue
        n = spec.tokens(cost.step)
        restored = 0.0
        if plan.mode == "reduce":
            lo, hi = plan.layers or (0, spec.depth)
            per_layer = hi - lo if plan.restore_level == "layer" else 1
            restored = float(cost.batch * n * spec.width * per_layer)
        rows.append([1.0, cost.flops_linear + cost.flops_head, cost.flops_attention,
                     float(batch * n * spec.logit_width), restored])
    return np.array(rows, dtype=np.float64)


@dataclass
class LatencyModel:
    """Seconds per unit of each feature, the decoder's seconds per batch, and how well the fit held."""

    batch: int
    coefficients: list[float]
    decode_seconds: float
    fit_error: float                   # median relative error over the probes' per-profile totals
    machine: str

    def step_seconds(self, model: Any, profile: Profile) -> np.ndarray:
        return step_features(model, profile, self.batch) @ np.asarray(self.coefficients)

    def speedup(self, model: Any, baseline: Profile, profile: Profile) -> dict[str, float]:
        """Predicted baseline/profile time on this machine: scale steps only, and with the decoder."""
        spec = as_spec(model)
        base = float(self.step_seconds(spec, baseline).sum())
        acc = max(float(self.step_seconds(spec, profile).sum()), 1e-12)
        return {"transformer": base / acc,
                "total": (base + self.decode_seconds) / (acc + self.decode_seconds)}

    def to_dict(self) -> dict:
        return {**asdict(self), "features": list(FEATURES)}


def fit(observations: list[tuple[np.ndarray, np.ndarray]], batch: int, decode_seconds: float,
        machine: str) -> LatencyModel:
    """Non-negative least squares over every (features, per-step seconds) pair of every probe."""
    x = np.concatenate([f for f, _ in observations])
    y = np.concatenate([s for _, s in observations])
    scale = np.where(x.max(axis=0) > 0, x.max(axis=0), 1.0)
    coef, _ = nnls(x / scale, y)
    coef = coef / scale
    errors = [abs(float((f @ coef).sum()) / float(s.sum()) - 1) for f, s in observations]
    return LatencyModel(batch, coef.tolist(), decode_seconds, float(np.median(errors)), machine)


def probes(model: Any) -> list[Profile]:
    """Profiles that move the features apart: guidance on and off, block- and layer-level reduction."""
    base = identity(model, "probe-baseline")
    unguided = identity(model, "probe-unguided")
    unguided.steps = [StepPlan(mode="full", cfg=False) for _ in unguided.steps]
    return [base, unguided, paper_split(model), fastvar(model)]


def measure_latency(model: FamilyModel, labels: list[int], settings: SamplingSettings, min_reps: int = 2,
                    max_reps: int = 15, min_seconds: float = 6.0, bank=None) -> LatencyModel:
    """Time each probe on one batch of the calibration prompts through the timing harness and fit
    the model. Fast models get more rounds (until `min_seconds` of timing or `max_reps`): their
    per-step times are short and noisy, and the per-step medians steady with more samples."""
    spec = model.spec()
    base, *others = probes(spec)
    probe_models = [(base, model)] + [(p, AcceleratedModel(model, p)) for p in others]
    runners = {p.name: TorchRunner(m, settings, prompts=bank) for p, m in probe_models}
    runs = interleaved(runners, batches(labels, 0, len(labels)), reps=min_reps,
                       min_seconds=min_seconds, max_reps=max_reps, desc="timing probe profiles")
    timings = {name: summarize(passes) for name, passes in runs.items()}
    obs = [(step_features(spec, p, len(labels)), np.asarray(timings[p.name].step_seconds)) for p, _ in probe_models]
    context = clock_context(model, len(labels))
    return fit(obs, len(labels), statistics.median(t.decode_seconds for t in timings.values()),
               f"{context['device']}, {context['threads']} threads")


def warn(message: str) -> None:
    """One line on stderr, kept clear of the progress bars."""
    tqdm.write(f"warning: {message}", file=sys.stderr)


def _tag(key: str, context: dict) -> str:
    return hashlib.sha256(json.dumps({"key": key, "context": context}, sort_keys=True).encode()).hexdigest()[:16]


def read_cache(path: Path, context: dict) -> dict | None:
    """A cache file's payload when it is readable and was measured in `context`; otherwise None,
    with a one-line warning for a file that is there but corrupt or from elsewhere."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("payload"), dict):
            raise ValueError("not a fastervar timing cache")
    except (OSError, ValueError) as exc:
        warn(f"ignoring unreadable cache {path} ({str(exc).splitlines()[0]}); measuring again")
        return None
    if data.get("context") != context:
        warn(f"ignoring cache {path}: it was measured on another machine, device, dtype, batch or version; "
              f"measuring again")
        return None
    return data["payload"]


def write_cache(path: Path, context: dict, payload: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"context": context, "payload": payload}, indent=2))


def cached_latency(model: FamilyModel, labels: list[int], settings: SamplingSettings, cache_dir: Path,
                   key: str, bank=None) -> tuple[LatencyModel, bool]:
    """The fitted model from the cache when it was made for this key in this clock context (see
    `timing.clock_context`), else measured and cached. Returns (model, reused)."""
    context = clock_context(model, len(labels))
    path = cache_dir / f"latency-{_tag(f'{key}|{labels}', context)}.json"
    data = read_cache(path, context)
    if data is not None:
        try:
            data.pop("features", None)
            return LatencyModel(**data), True
        except TypeError as exc:
            warn(f"ignoring cache {path} ({exc}); measuring again")
    lm = measure_latency(model, labels, settings) if bank is None else measure_latency(model, labels, settings, bank=bank)
    write_cache(path, context, lm.to_dict())
    return lm, False


def cached_clock(measure: Callable[[Profile], tuple[float, float]], cache_dir: Path, key: str,
                 context: dict) -> Callable[[Profile], tuple[float, float]]:
    """`measure` (a profile's measured speedups) remembered per plan beside the latency model, for
    one clock context (machine, device, dtype, batch...): the clock settles a choice once, so a
    rerun with the same cache makes the same one, and another batch or device measures anew."""
    path = cache_dir / f"speed-{_tag(key, context)}.json"
    known = read_cache(path, context) or {}
    good = {plan: v for plan, v in known.items()
            if isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) and x > 0 for x in v)}
    if len(good) != len(known):
        warn(f"ignoring {len(known) - len(good)} malformed entries of {path}; measuring them again")
    known = good

    def clock(profile: Profile) -> tuple[float, float]:
        plan = hashlib.sha256(json.dumps(profile.to_dict()["steps"], sort_keys=True).encode()).hexdigest()[:16]
        if plan not in known:
            known[plan] = [float(x) for x in measure(profile)]
            write_cache(path, context, known)
        steps, total = known[plan]
        return steps, total
    return clock
