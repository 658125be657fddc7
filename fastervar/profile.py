"""The acceleration profile: the contract between calibrate, the accelerator and export.

A profile names the model and schedule it was made for, splits the scale steps into semantic,
structure and refine stages, and says per step what runs: `full`, `reduce` (r kept tokens chosen
by a selector, the rest restored from an earlier step's cached output, upsampled bicubic or by
area, optionally only in a range of blocks), or `skip`; whether guidance runs; and which linear
layers are factorized to what rank. Plain dataclasses and JSON, no torch:
the runtime and export manifests read it too.

Validation errors are FastervarErrors that name the offending field, e.g. `steps[5].keep`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import FastervarError
from .models.var.configs import ModelConfig

FORMAT = "fastervar-profile/1"
MODES = ("full", "reduce", "skip")
SELECTORS = ("pivotal", "pivotal_stream", "random_projection", "random", "grid", "relevance")
RESTORE_LEVELS = ("block", "layer", "latent")
UPSAMPLINGS = ("bicubic", "area")
STAGES = ("semantic", "structure", "refine")
# Linear layers of a VAR block that may be factorized: name -> (in_features, out_features) as
# multiples of the width C.
FACTORIZABLE = {"attn.mat_qkv": (1, 3), "attn.proj": (1, 1), "ffn.fc1": (1, 4), "ffn.fc2": (4, 1)}


class ProfileError(FastervarError):
    """A profile that is malformed or does not fit the model it is applied to."""


@dataclass
class StepPlan:
    """What one scale step runs."""

    mode: str = "full"
    cfg: bool = True
    keep: int | None = None                   # reduce: tokens the transformer runs on
    selector: str | None = None               # reduce: how they are chosen
    restore_from: int | None = None           # reduce: step whose cached output fills the rest
    restore_level: str = "block"              # reduce: block outputs, per sublayer, or the latent
    ranks: dict[str, int] = field(default_factory=dict)   # factorized layers -> rank
    relevance: list[float] | None = None      # selector "relevance": per-position scores
    layers: list[int] | None = None           # reduce at layer level: [first, end) blocks reduced; others run all tokens
    upsample: str = "bicubic"                 # reduce: how the cached output is brought to this step's grid


@dataclass
class Profile:
    name: str
    model: dict[str, Any]                     # family, config name, patch_nums, weights_sha256
    stages: dict[str, list[int]]
    steps: list[StepPlan]
    calibrated: bool = False
    calibration: dict[str, Any] | None = None
    measured: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    # -- JSON ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["steps"] = [_step_dict(s) for s in self.steps]
        return {"format": FORMAT, **d}

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically: an interrupted save leaves the previous file (or none)."""
        from .utils.atomic import atomic_path
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @property
    def patch_nums(self) -> tuple[int, ...]:
        return tuple(self.model["patch_nums"])

    def is_identity(self) -> bool:
        return all(s.mode == "full" and s.cfg and not s.ranks for s in self.steps)


def _step_dict(s: StepPlan) -> dict[str, Any]:
    d: dict[str, Any] = {"mode": s.mode, "cfg": s.cfg}
    if s.mode == "reduce":
        d.update(keep=s.keep, selector=s.selector, restore_level=s.restore_level)
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
    if mode == "reduce":
        step.keep = _need(raw, "keep", int, where)
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
        if layer not in FACTORIZABLE:
            raise ProfileError(f"profile field {where}ranks.{layer}: unknown layer; "
                               f"factorizable layers are {', '.join(FACTORIZABLE)}")
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
    pn = _need(model, "patch_nums", list, "model.")
    if not pn or not all(isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in pn):
        raise ProfileError("profile field model.patch_nums must be a list of positive integers")
    _need(model, "config", str, "model.")
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
                   description=str(data.get("description", "")))
    _check_self_consistent(prof)
    return prof


def _check_self_consistent(p: Profile) -> None:
    pn = p.patch_nums
    if len(p.steps) != len(pn):
        raise ProfileError(f"profile field steps has {len(p.steps)} entries but the schedule has {len(pn)} steps")
    seen = sorted(k for idx in p.stages.values() for k in idx)
    if seen != list(range(len(pn))):
        raise ProfileError("profile field stages must assign every step to exactly one stage")
    for i, s in enumerate(p.steps):
        where = f"steps[{i}]"
        if i == 0 and s.mode != "full":
            raise ProfileError(f"profile field {where}.mode: the first step must run in full")
        if s.mode == "skip" and i == len(pn) - 1 and all(t.mode == "skip" for t in p.steps[1:]):
            raise ProfileError(f"profile field {where}.mode: at most all but the first step may be skipped")
        if not s.cfg and any(t.cfg for t in p.steps[i + 1:] if t.mode != "skip"):
            raise ProfileError(f"profile field {where}.cfg: once guidance is dropped it cannot resume at a later step")
        if s.mode != "reduce":
            continue
        n = pn[i] ** 2
        if not 1 <= s.keep <= n:
            raise ProfileError(f"profile field {where}.keep = {s.keep} must be between 1 and the step's "
                               f"{n} tokens ({pn[i]}x{pn[i]})")
        if s.restore_level != "latent":
            if not 0 <= s.restore_from < i:
                raise ProfileError(f"profile field {where}.restore_from = {s.restore_from} must be an earlier step")
            if p.steps[s.restore_from].mode != "full":
                raise ProfileError(f"profile field {where}.restore_from: step {s.restore_from} must run in full "
                                   f"to provide the cached output")
        if s.relevance is not None and len(s.relevance) != n:
            raise ProfileError(f"profile field {where}.relevance has {len(s.relevance)} values for {n} tokens")
        if s.restore_level != "layer" and (s.layers is not None or s.selector == "pivotal_stream"):
            what = "layers" if s.layers is not None else "selector"
            raise ProfileError(f"profile field {where}.{what}: needs restore_level 'layer' (a block range and "
                               f"per-sublayer selection act inside the blocks)")


def check_against(p: Profile, cfg: ModelConfig, weights_sha256: str | None = None) -> None:
    """Refuse a profile made for another model or schedule, or whose sizes exceed the model's."""
    pn = tuple(cfg.var.patch_nums)
    if p.patch_nums != pn:
        raise ProfileError(f"profile field model.patch_nums {list(p.patch_nums)} does not match the model's "
                           f"schedule {list(pn)}: this profile was made for another model")
    if p.model.get("config") != cfg.name:
        raise ProfileError(f"profile field model.config is {p.model.get('config')!r}, "
                           f"but the model is {cfg.name!r}")
    want = p.model.get("weights_sha256")
    if want and weights_sha256 and want != weights_sha256:
        raise ProfileError(f"profile field model.weights_sha256 {want[:12]}... does not match these weights "
                           f"({weights_sha256[:12]}...): it was calibrated on other weights")
    c = cfg.var.embed_dim
    hidden = round(c * cfg.var.mlp_ratio)
    for i, s in enumerate(p.steps):
        if s.layers is not None and s.layers[1] > cfg.var.depth:
            raise ProfileError(f"profile field steps[{i}].layers = {s.layers} reaches past the model's "
                               f"{cfg.var.depth} blocks")
        for layer, r in s.ranks.items():
            fin, fout = FACTORIZABLE[layer]
            dims = (c if fin == 1 else hidden, 3 * c if fout == 3 else (c if fout == 1 else hidden))
            if r >= min(dims):
                raise ProfileError(f"profile field steps[{i}].ranks.{layer} = {r} must be below the layer's "
                                   f"smaller dimension {min(dims)} ({dims[0]}x{dims[1]})")


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


def identity(cfg: ModelConfig, name: str = "identity") -> Profile:
    """Every step full with guidance: reproduces the baseline token for token."""
    n = len(cfg.var.patch_nums)
    return Profile(name=name, model=model_identity(cfg), stages={"semantic": list(range(n))},
                   steps=[StepPlan() for _ in range(n)], description="the baseline, unchanged")


def model_identity(cfg: ModelConfig, weights_sha256: str | None = None) -> dict[str, Any]:
    return {"family": "var", "config": cfg.name, "patch_nums": list(cfg.var.patch_nums),
            "weights_sha256": weights_sha256}
