"""The acceleration profile: the contract between calibrate, the accelerator and export.

A profile names the model and schedule it was made for, splits the scale steps into semantic,
structure and refine stages, and says per step what runs: `full`, `reduce` (r kept tokens chosen
by a selector, the rest restored from an earlier step's cached output, upsampled bicubic or by
area, optionally only in a range of blocks), or `skip`; whether guidance runs, and if not which
half (the conditional one, or the null prompt's); and which linear layers are factorized to what
rank. Plain dataclasses and JSON, no torch: the runtime and export manifests read it too.

Steps are identified by index. A VAR profile names its `patch_nums`; an Infinity profile names its
pixel budget (`pn`) and step count, and serves every aspect template of that budget: the templates
of one budget have the same number of steps, each step a coarse-to-fine grid of its own shape, so
a plan for step k means the same stage of generation at every aspect. A kept-token share given as
`prune` (the fraction dropped, FastVAR's form) scales with each aspect's grid; a `keep` count is
checked against the grid the profile is applied to. A calibrated profile lists the aspect templates
it was judged on (`model.aspects`, height/width) and refuses the others; a template without that
list serves them all.

A profile is checked against a `ModelSpec`: what a profile and the cost model need to know of a
model without its weights. Families make theirs (`model.spec()`), so nothing here names one.

Validation errors are FastervarErrors that name the offending field, e.g. `steps[5].keep`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import FastervarError

FORMAT = "fastervar-profile/1"
MODES = ("full", "reduce", "skip")
SELECTORS = ("pivotal", "pivotal_stream", "random_projection", "random", "grid", "relevance")
RESTORE_LEVELS = ("block", "layer", "latent")
UPSAMPLINGS = ("bicubic", "area")
STAGES = ("semantic", "structure", "refine")
UNGUIDED = ("cond-only", "null-text")        # which half runs when a step drops guidance
PIXEL_BUDGETS = ("0.06M", "0.25M", "0.60M", "1M")


@dataclass(frozen=True)
class ModelSpec:
    """A model as profiles and the cost model see it: its identity (family, config, schedule),
    one token grid per step, and the transformer's shape. `linears` are the factorizable linears
    of a block, name -> (in, out) features; `logit_width` what the head predicts per token (V
    codes, or a logit pair per bit); `code_width` what a token's input embedding reads; `text`
    (tokens, width) what cross-attention reads per row, (0, 0) without one; `peer_widths`, where
    the peers' published code runs on this family as it is, the grid width of each step that their
    width-keyed constants read (the budget's 1:1 template), so those constants apply literally;
    elsewhere (None) their recipes are mapped onto the schedule by token share."""

    family: str
    config: str
    schedule: dict[str, Any]
    grids: tuple[tuple[int, int], ...]
    depth: int
    width: int
    linears: dict[str, tuple[int, int]]
    logit_width: int
    code_width: int
    shared_adaln: bool = True
    text: tuple[int, int] = (0, 0)
    peer_widths: tuple[int, ...] | None = None
    aspect: float | None = None      # height/width of the template the grids belong to, where shapes vary
    decoder_flops: Callable[[], float] | None = field(default=None, compare=False)   # per image, counted when asked

    @property
    def num_steps(self) -> int:
        return len(self.grids)

    def tokens(self, step: int) -> int:
        h, w = self.grids[step]
        return h * w

    def identity(self) -> dict[str, Any]:
        """What a profile's `model` names (before its weights hash)."""
        return {"family": self.family, "config": self.config, **self.schedule}


def aspect_name(h_div_w: float) -> str:
    """A height/width ratio as users write it: 1:1, 2:1, 1:2, else the ratio itself."""
    for h in range(1, 17):
        w = h / h_div_w
        if abs(w - round(w)) < 0.02 and round(w) > 0:
            return f"{h}:{round(w)}"
    return f"{h_div_w:g}"


def as_spec(model: Any) -> ModelSpec:
    """A ModelSpec as given, or the spec of a model or configuration (anything with `spec()`)."""
    return model if isinstance(model, ModelSpec) else model.spec()


class ProfileError(FastervarError):
    """A profile that is malformed or does not fit the model it is applied to."""


@dataclass
class StepPlan:
    """What one scale step runs."""

    mode: str = "full"
    cfg: bool = True
    unguided: str = "cond-only"               # without guidance: which half runs (UNGUIDED)
    keep: int | None = None                   # reduce: tokens the transformer runs on, or
    prune: float | None = None                # reduce: the share of the step's tokens dropped
    selector: str | None = None               # reduce: how they are chosen
    restore_from: int | None = None           # reduce: step whose cached output fills the rest
    restore_level: str = "block"              # reduce: block outputs, per sublayer, or the latent
    ranks: dict[str, int] = field(default_factory=dict)   # factorized layers -> rank
    relevance: list[float] | None = None      # selector "relevance": per-position scores
    layers: list[int] | None = None           # reduce at layer level: [first, end) blocks reduced; others run all tokens
    upsample: str = "bicubic"                 # reduce: how the cached output is brought to this step's grid

    def kept(self, tokens: int) -> int:
        """Tokens a reduce step runs on out of `tokens`: its count, or what pruning leaves
        (FastVAR's rounding: tokens - int(tokens * prune)), at least one."""
        if self.keep is not None:
            return min(self.keep, tokens)
        return max(1, tokens - int(tokens * self.prune))


@dataclass
class Profile:
    name: str
    model: dict[str, Any]                     # family, config name, schedule (patch_nums or pn), weights_sha256
    stages: dict[str, list[int]]
    steps: list[StepPlan]
    calibrated: bool = False
    calibration: dict[str, Any] | None = None
    measured: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    decision: dict[str, Any] | None = None   # a per-image rule between steps (SkipVAR's kind), as numbers

    # -- JSON ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["steps"] = [_step_dict(s) for s in self.steps]
        if d["decision"] is None:
            del d["decision"]
        return {"format": FORMAT, **d}

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically: an interrupted save leaves the previous file (or none)."""
        from .utils.atomic import atomic_path
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @property
    def num_steps(self) -> int:
        return len(self.model["patch_nums"]) if "patch_nums" in self.model else int(self.model["steps"])

    def is_identity(self) -> bool:
        return all(s.mode == "full" and s.cfg and not s.ranks for s in self.steps)


def _step_dict(s: StepPlan) -> dict[str, Any]:
    d: dict[str, Any] = {"mode": s.mode, "cfg": s.cfg}
    if not s.cfg and s.unguided != "cond-only":
        d["guidance"] = s.unguided
    if s.mode == "reduce":
        d.update({"keep": s.keep} if s.keep is not None else {"prune": s.prune})
        d.update(selector=s.selector, restore_level=s.restore_level)
        if s.restore_from is not None:
            d["restore_from"] = s.restore_from
        if s.relevance is not None:
            d["relevance"] = s.relevance
        if s.layers is not None:
            d["layers"] = list(s.layers)
        if s.upsample != "bicubic":
            d["upsample"] = s.upsample
    if s.ranks:
        d["ranks"] = dict(s.ranks)
    return d


def _need(d: dict, key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise ProfileError(f"profile field {where}{key} is missing")
    v = d[key]
    if isinstance(v, bool) and typ is not bool and bool not in (typ if isinstance(typ, tuple) else (typ,)):
        raise ProfileError(f"profile field {where}{key} must be {_tname(typ)}, got {v!r}")
    if not isinstance(v, typ):
        raise ProfileError(f"profile field {where}{key} must be {_tname(typ)}, got {v!r}")
    return v


def _tname(typ: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in (typ if isinstance(typ, tuple) else (typ,)))


def _parse_step(raw: Any, i: int) -> StepPlan:
    where = f"steps[{i}]."
    if not isinstance(raw, dict):
        raise ProfileError(f"profile field steps[{i}] must be an object")
    mode = _need(raw, "mode", str, where)
    if mode not in MODES:
        raise ProfileError(f"profile field {where}mode: unknown mode {mode!r}; use one of {', '.join(MODES)}")
    step = StepPlan(mode=mode, cfg=_need(raw, "cfg", bool, where) if "cfg" in raw else True)
    if "guidance" in raw:
        step.unguided = _need(raw, "guidance", str, where)
        if step.unguided not in UNGUIDED or step.cfg:
            raise ProfileError(f"profile field {where}guidance: without guidance (cfg false) a step runs one of "
                               f"{', '.join(UNGUIDED)}; got {step.unguided!r} with cfg {step.cfg}")
    if mode == "reduce":
        if ("keep" in raw) == ("prune" in raw):
            raise ProfileError(f"profile field {where}keep: a reduce step gives either keep (a token count) or "
                               f"prune (the share of tokens dropped)")
        if "keep" in raw:
            step.keep = _need(raw, "keep", int, where)
        else:
            step.prune = float(_need(raw, "prune", (int, float), where))
            if not 0 <= step.prune < 1:
                raise ProfileError(f"profile field {where}prune must be in [0, 1), got {step.prune}")
        step.selector = _need(raw, "selector", str, where)
        if step.selector not in SELECTORS:
            raise ProfileError(f"profile field {where}selector: unknown selector {step.selector!r}; "
                               f"use one of {', '.join(SELECTORS)}")
        step.restore_level = raw.get("restore_level", "block")
        if step.restore_level not in RESTORE_LEVELS:
            raise ProfileError(f"profile field {where}restore_level must be one of {', '.join(RESTORE_LEVELS)}")
        if step.restore_level != "latent":      # the latent level restores from f_hat itself
            step.restore_from = _need(raw, "restore_from", int, where)
        if step.selector == "relevance":
            rel = _need(raw, "relevance", list, where)
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in rel):
                raise ProfileError(f"profile field {where}relevance must be a list of numbers")
            step.relevance = [float(x) for x in rel]
        step.upsample = raw.get("upsample", "bicubic")
        if step.upsample not in UPSAMPLINGS:
            raise ProfileError(f"profile field {where}upsample must be one of {', '.join(UPSAMPLINGS)}")
        if "layers" in raw:
            layers = _need(raw, "layers", list, where)
            if (len(layers) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers)
                    or not 0 <= layers[0] < layers[1]):
                raise ProfileError(f"profile field {where}layers must be [first, end) block indices, "
                                   f"0 <= first < end, got {layers!r}")
            step.layers = list(layers)
    ranks = raw.get("ranks", {})
    if not isinstance(ranks, dict):
        raise ProfileError(f"profile field {where}ranks must be an object of layer -> rank")
    for layer, r in ranks.items():
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise ProfileError(f"profile field {where}ranks.{layer} must be a positive integer, got {r!r}")
    step.ranks = dict(ranks)
    return step


def from_dict(data: Any) -> Profile:
    """Parse and check the structure of a profile (not yet against a model)."""
    if not isinstance(data, dict):
        raise ProfileError("a profile must be a JSON object")
    fmt = data.get("format")
    if fmt != FORMAT:
        raise ProfileError(f"profile field format: expected {FORMAT!r}, got {fmt!r}")
    model = _need(data, "model", dict, "")
    _need(model, "config", str, "model.")
    if "pn" in model:                            # a pixel budget and its step count (Infinity)
        if _need(model, "pn", str, "model.") not in PIXEL_BUDGETS:
            raise ProfileError(f"profile field model.pn must be one of {', '.join(PIXEL_BUDGETS)}, got {model['pn']!r}")
        if _need(model, "steps", int, "model.") < 2:
            raise ProfileError("profile field model.steps must be at least 2")
        aspects = model.get("aspects")
        if aspects is not None and (not isinstance(aspects, list) or not aspects or not all(
                isinstance(a, (int, float)) and not isinstance(a, bool) and 0 < a < 100 for a in aspects)):
            raise ProfileError("profile field model.aspects must be a non-empty list of height/width ratios")
    else:                                        # a fixed schedule (VAR); profiles before families had only this
        pn = _need(model, "patch_nums", list, "model.")
        if not pn or not all(isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in pn):
            raise ProfileError("profile field model.patch_nums must be a list of positive integers")
        model.setdefault("family", "var")
    raw_steps = _need(data, "steps", list, "")
    steps = [_parse_step(s, i) for i, s in enumerate(raw_steps)]
    stages = _need(data, "stages", dict, "")
    for name, idx in stages.items():
        if name not in STAGES:
            raise ProfileError(f"profile field stages.{name}: unknown stage; use {', '.join(STAGES)}")
        if not isinstance(idx, list) or not all(isinstance(k, int) and not isinstance(k, bool) for k in idx):
            raise ProfileError(f"profile field stages.{name} must be a list of step indices")
    prof = Profile(name=str(data.get("name", "unnamed")), model=model, stages={k: list(v) for k, v in stages.items()},
                   steps=steps, calibrated=bool(data.get("calibrated", False)),
                   calibration=data.get("calibration"), measured=dict(data.get("measured") or {}),
                   description=str(data.get("description", "")), decision=data.get("decision"))
    _check_self_consistent(prof)
    if prof.decision is not None:
        check_decision(prof.decision, prof.num_steps)
    return prof


def _check_self_consistent(p: Profile) -> None:
    n_steps = p.num_steps
    if len(p.steps) != n_steps:
        raise ProfileError(f"profile field steps has {len(p.steps)} entries but the schedule has {n_steps} steps")
    seen = sorted(k for idx in p.stages.values() for k in idx)
    if seen != list(range(n_steps)):
        raise ProfileError("profile field stages must assign every step to exactly one stage")
    for i, s in enumerate(p.steps):
        where = f"steps[{i}]"
        if i == 0 and s.mode != "full":
            raise ProfileError(f"profile field {where}.mode: the first step must run in full")
        if s.mode == "skip" and i == n_steps - 1 and all(t.mode == "skip" for t in p.steps[1:]):
            raise ProfileError(f"profile field {where}.mode: at most all but the first step may be skipped")
        if not s.cfg and any(t.cfg for t in p.steps[i + 1:] if t.mode != "skip"):
            raise ProfileError(f"profile field {where}.cfg: once guidance is dropped it cannot resume at a later step")
        later = {t.unguided for t in p.steps[i:] if not t.cfg and t.mode != "skip"}
        if len(later) > 1:
            raise ProfileError(f"profile field {where}.guidance: the unguided steps must all run the same half, "
                               f"got {', '.join(sorted(later))}")
        if s.mode != "reduce":
            continue
        if s.keep is not None and s.keep < 1:
            raise ProfileError(f"profile field {where}.keep = {s.keep} must be at least 1")
        if s.restore_level != "latent":
            if not 0 <= s.restore_from < i:
                raise ProfileError(f"profile field {where}.restore_from = {s.restore_from} must be an earlier step")
            if p.steps[s.restore_from].mode != "full":
                raise ProfileError(f"profile field {where}.restore_from: step {s.restore_from} must run in full "
                                   f"to provide the cached output")
        if s.restore_level != "layer" and (s.layers is not None or s.selector == "pivotal_stream"):
            what = "layers" if s.layers is not None else "selector"
            raise ProfileError(f"profile field {where}.{what}: needs restore_level 'layer' (a block range and "
                               f"per-sublayer selection act inside the blocks)")


def _numbers(v: Any, depth: int) -> bool:
    """A list (of lists, `depth` deep) of finite numbers."""
    if depth == 0:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return isinstance(v, list) and bool(v) and all(_numbers(x, depth - 1) for x in v)


def check_decision(d: Any, steps: int) -> None:
    """A per-image decision: when it runs and what it previews, and two rules (standardization, then
    a multinomial logistic regression), each class mapped to the first step its move applies to."""
    where = "profile field decision"
    if not isinstance(d, dict):
        raise ProfileError(f"{where} must be an object")
    after, compare, preview = (d.get(k) for k in ("after_step", "compare_step", "preview_step"))
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (after, compare, preview)) \
            or not 0 <= compare < after < steps - 1 or not 0 <= preview < steps:
        raise ProfileError(f"{where}: needs integers 0 <= compare_step < after_step < {steps - 1} and a preview_step "
                           f"in 0..{steps - 1}")
    if not _numbers(d.get("freq_ratio"), 0) or not 0 < d["freq_ratio"] < 1:
        raise ProfileError(f"{where}.freq_ratio must be a number in (0, 1)")
    for rule in ("skip", "uncond"):
        r = d.get(rule)
        ok = isinstance(r, dict) and isinstance(r.get("scaler"), dict) and isinstance(r.get("model"), dict)
        scaler, model = (r.get("scaler", {}), r.get("model", {})) if ok else ({}, {})
        mean, scale = scaler.get("mean"), scaler.get("scale")
        classes, coef, intercept = model.get("classes"), model.get("coef"), model.get("intercept")
        first = r.get("first_step") if ok else None
        ok = ok and _numbers(mean, 1) and _numbers(scale, 1) and _numbers(coef, 2) and _numbers(intercept, 1) \
            and isinstance(classes, list) and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0
                                                  for c in classes) and isinstance(first, dict)
        if ok:
            n = len(mean)
            ok = (n <= 2 and len(scale) == n and all(s > 0 for s in scale) and len(coef) == len(classes)
                  and all(len(row) == n for row in coef) and len(intercept) == len(classes)
                  and sorted(first) == sorted(str(c) for c in classes)
                  and all(isinstance(v, int) and (v == 0 or after < v < steps) for v in first.values()))
        if not ok:
            raise ProfileError(f"{where}.{rule} must hold scaler {{mean, scale}}, model {{classes, coef, intercept}} "
                               f"of matching sizes (at most 2 features) and first_step for every class: 0 (no move) "
                               f"or a step after {after}")


def check_against(p: Profile, model: Any, weights_sha256: str | None = None) -> None:
    """Refuse a profile made for another model or schedule, or whose sizes exceed the model's
    (`model`: a ModelSpec, or anything with `spec()`)."""
    spec = as_spec(model)
    family = p.model.get("family", "var")
    if family != spec.family:
        raise ProfileError(f"profile field model.family is {family!r}, but the model is {spec.family!r}")
    for key, value in spec.schedule.items():
        have = p.model.get(key)
        if have != value:
            raise ProfileError(f"profile field model.{key} {have!r} does not match the model's schedule {value!r}: "
                               f"this profile was made for another model")
    for key in ("family", "config"):
        have, value = p.model.get(key, "var" if key == "family" else None), getattr(spec, key)
        if have != value:
            raise ProfileError(f"profile field model.{key} is {have!r}, but the model is {value!r}")
    covered = p.model.get("aspects")
    if covered and spec.aspect is not None and not any(abs(a - spec.aspect) < 1e-3 for a in covered):
        raise ProfileError(f"profile field model.aspects covers {', '.join(aspect_name(a) for a in covered)}, but the "
                           f"model runs at {aspect_name(spec.aspect)}: calibrate on that aspect too (--aspect)")
    want = p.model.get("weights_sha256")
    if want and weights_sha256 and want != weights_sha256:
        raise ProfileError(f"profile field model.weights_sha256 {want[:12]}... does not match these weights "
                           f"({weights_sha256[:12]}...): it was calibrated on other weights")
    for i, s in enumerate(p.steps):
        where = f"profile field steps[{i}]"
        n, (h, w) = spec.tokens(i), spec.grids[i]
        if s.mode == "reduce" and s.keep is not None and s.keep > n:
            raise ProfileError(f"{where}.keep = {s.keep} must be between 1 and the step's {n} tokens ({h}x{w})")
        if s.relevance is not None and len(s.relevance) != n:
            raise ProfileError(f"{where}.relevance has {len(s.relevance)} values for the step's {n} tokens ({h}x{w})")
        if s.layers is not None and s.layers[1] > spec.depth:
            raise ProfileError(f"{where}.layers = {s.layers} reaches past the model's {spec.depth} blocks")
        for layer, r in s.ranks.items():
            if layer not in spec.linears:
                raise ProfileError(f"{where}.ranks.{layer}: unknown layer; factorizable layers are "
                                   f"{', '.join(spec.linears)}")
            dims = spec.linears[layer]
            if r >= min(dims):
                raise ProfileError(f"{where}.ranks.{layer} = {r} must be below the layer's smaller dimension "
                                   f"{min(dims)} ({dims[0]}x{dims[1]})")


def load(path: str | os.PathLike) -> Profile:
    """Read a profile file, with errors that name the file and the field."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ProfileError(f"profile not found: {p}") from None
    except OSError as exc:
        raise ProfileError(f"cannot read profile {p}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{p}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    try:
        return from_dict(data)
    except ProfileError as exc:
        raise ProfileError(f"{p}: {exc}") from None


def identity(model: Any, name: str = "identity") -> Profile:
    """Every step full with guidance: reproduces the baseline token for token."""
    n = as_spec(model).num_steps
    return Profile(name=name, model=model_identity(model), stages={"semantic": list(range(n))},
                   steps=[StepPlan() for _ in range(n)], description="the baseline, unchanged")


def model_identity(model: Any, weights_sha256: str | None = None) -> dict[str, Any]:
    return {**as_spec(model).identity(), "weights_sha256": weights_sha256}
