"""Shared by the benchmark scripts: the models they time, bundles exported once and reused, and
results written as JSON atomically."""

from __future__ import annotations

import json
import time
from pathlib import Path

from fastervar.accel.presets import paper_split
from fastervar.assets import shipped_model_dir
from fastervar.bundle_contract import read_manifest
from fastervar.export.bundle import export_bundle
from fastervar.models.loading import random_model, shipped_model
from fastervar.models.sampling import SamplingSettings
from fastervar.models.var.family import VARModel
from fastervar.profile import Profile, identity
from fastervar.profiles import resolve, shipped
from fastervar.utils.atomic import atomic_path
from fastervar.utils.machine import environment


def load_model(name: str) -> VARModel:
    """The shipped model by name, or a named configuration with seeded random weights."""
    return shipped_model(name) if (shipped_model_dir(name) / "config.json").exists() else random_model(name)


def load_profile(spec: str | None, model: VARModel) -> Profile:
    """'identity', a profile file or shipped name, or by default the shipped MODEL-paper-split (the
    paper-split template made for the model's schedule where none is shipped)."""
    if spec == "identity":
        return identity(model.cfg)
    if spec is None:
        return resolve(f"{model.cfg.name}-paper-split") if f"{model.cfg.name}-paper-split" in shipped() \
            else paper_split(model.cfg)
    return resolve(spec)


def ensure_bundle(model: VARModel, profile: Profile, path: Path, settings: SamplingSettings,
                  max_batch: int, precision: str = "fp32", calib_images: int | None = None
                  ) -> tuple[Path, float | None]:
    """The bundle at `path`, exported there first unless it already holds this profile at this
    precision; returns the path and the export's seconds (None when reused)."""
    if (path / "manifest.json").exists():
        made = read_manifest(path, verify=False).data
        sampler = {"cfg": settings.cfg, "top_k": settings.top_k, "top_p": settings.top_p}
        if (made["profile"]["json"]["steps"] != profile.to_dict()["steps"] or made["max_batch"] < max_batch
                or made["precision"] != precision or any(made["sampler"][k] != v for k, v in sampler.items())):
            raise SystemExit(f"{path} holds another profile, precision, sampler settings or a smaller max batch; "
                             f"remove it or pass another path")
        return path, None
    t0 = time.perf_counter()
    export_bundle(model, profile, path, settings, precision=precision, max_batch=max_batch, calib_images=calib_images)
    return path, time.perf_counter() - t0


def write_result(path: Path | None, result: dict) -> None:
    """The result as JSON, with where it was measured: CPU model and int8 instructions, GPU,
    onnxruntime and torch versions (int8 speed depends on the CPU)."""
    if path is None:
        return
    import torch
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    result = {**result, "environment": {**environment(gpu), "torch": torch.__version__,
                                        "torch_threads": torch.get_num_threads()}}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


def graph_checks(bundle: Path) -> dict:
    """What the bundle's graphs ask of TensorRT: every noise input's shape, the largest TopK."""
    from fastervar.export.inspect import bundle_facts
    facts = bundle_facts(bundle)
    shapes = sorted({tuple(s) for f in facts.values() for s in f["noise"].values()},
                    key=lambda s: [d if isinstance(d, int) else -1 for d in s])
    ks = [k for f in facts.values() for k in f["topk"]]
    vocab = read_manifest(bundle, verify=False).vocab_size
    out = {"noise_shapes": [list(s) for s in shapes], "noise_has_vocab_axis": any(vocab in s for s in shapes),
           "topk_nodes": len(ks), "largest_topk": max((k for k in ks if k is not None), default=None),
           "topk_unknown": ks.count(None), "vocab_size": vocab}
    print(f"graph checks: noise inputs {', '.join(str(list(s)) for s in shapes)} "
          f"({'a vocabulary axis!' if out['noise_has_vocab_axis'] else f'no axis of the {vocab}-code vocabulary'}); "
          f"{len(ks)} TopK nodes, the largest k = {out['largest_topk']} (TensorRT allows 3840)"
          + (f", {out['topk_unknown']} with k unknown before run time" if out["topk_unknown"] else ""))
    return out
