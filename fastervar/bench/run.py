"""Every path on the same prompts and noise, timed interleaved in one process.

Variants: the torch baseline, the profile in torch, the profile as an exported bundle on the
runtime, and the FastVAR-like and SkipVAR-like peers. Batch by batch each variant runs in turn, so
machine noise hits all of them alike; all use the portable sampler, so they read the same noise
and their images can be compared pair by pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..accel.accelerated import AcceleratedModel
from ..accel.presets import fastvar_like, skipvar_like
from ..errors import FastervarError
from ..evaluate.metrics import mean_psnr, ssim
from ..models.family import VARModel
from ..models.sampler import generate_batch
from ..models.sampling import SamplingSettings
from ..profile import Profile
from .memory import PeakMemory


@dataclass
class Variant:
    name: str
    runner: object               # a VARModel / AcceleratedModel, or a runtime Pipeline
    profile: str | None
    peer: bool = False           # a peer's published recipe, not one of ours


def make_variants(model: VARModel, profile: Profile, pipelines: dict | None = None, peers: bool = True,
                  compare: Sequence[Profile] = ()) -> list[Variant]:
    """`pipelines` maps variant names (e.g. bundle, bundle-steps) to runtime Pipelines; `compare`
    adds more of our profiles in torch (say, one calibrated to a peer's speed)."""
    out = [Variant("baseline", model, None), Variant("accelerated", AcceleratedModel(model, profile), profile.name)]
    for name, pipe in (pipelines or {}).items():
        out.append(Variant(name, pipe, pipe.manifest.data["profile"]["name"]))
    for p in compare:
        name = p.name.removeprefix(f"{model.cfg.name}-")
        if p.name == profile.name or any(v.name == name for v in out):
            raise FastervarError(f"profile {p.name!r} is already in the bench; give each profile once")
        out.append(Variant(name, AcceleratedModel(model, p), p.name))
    if peers:
        for p in (fastvar_like(model.cfg), skipvar_like(model.cfg)):
            out.append(Variant(p.name.removeprefix(f"{model.cfg.name}-"), AcceleratedModel(model, p), p.name, peer=True))
    return out


def _run(v: Variant, classes: list[int], lo: int, settings: SamplingSettings, seed: int, device: str):
    """One batch: (uint8 images, per-step seconds, decode seconds, single-graph seconds)."""
    if isinstance(v.runner, (VARModel, AcceleratedModel)):
        labels = torch.tensor(classes, device=device)
        g = generate_batch(v.runner, labels, settings, seed, list(range(lo, lo + len(classes))))
        return g.images.cpu().numpy(), g.step_seconds, g.decode_seconds, 0.0
    r = v.runner.generate(classes, seed=seed, first_index=lo)
    return r.images, r.step_seconds, r.decode_seconds, r.graph_seconds


def run_bench(model: VARModel, variants: list[Variant], classes: list[int], settings: SamplingSettings,
              seed: int, batch_size: int, paired: bool = True, judge=None,
              progress: bool = True, reps: int = 1) -> tuple[dict, dict[str, np.ndarray]]:
    """Time every variant; `paired` adds PSNR/SSIM against the baseline's images, `judge` (the
    evaluator) class accuracy and FD/KID. `reps` passes over the prompts are timed (times are per
    pass; more passes steady the ratios of a fast model). Returns the figures and the first images
    of each variant."""
    device = "cuda" if model.var.head.weight.is_cuda else "cpu"
    for v in variants:                                        # warm-up, untimed
        _run(v, classes[:1], 0, settings, seed, device)
    images = {v.name: [] for v in variants}
    steps = {v.name: np.zeros(model.num_steps) for v in variants}
    decode = dict.fromkeys(images, 0.0)
    whole = dict.fromkeys(images, 0.0)
    memory: dict[str, int | None] = dict.fromkeys(images, 0)
    per_pass = list(range(0, len(classes), batch_size))
    starts = per_pass * reps
    for i, lo in enumerate(tqdm(starts, desc=f"bench ({len(variants)} variants)", unit="batch", disable=not progress)):
        chunk = classes[lo:lo + batch_size]
        for v in variants:
            with PeakMemory(device) as mem:
                imgs, st, dec, graph = _run(v, chunk, lo, settings, seed, device)
            if i < len(per_pass):                            # a repeat pass times the same images again
                images[v.name].append(imgs)
            steps[v.name] += st
            decode[v.name] += dec
            whole[v.name] += graph
            if mem.peak_bytes is None or memory[v.name] is None:
                memory[v.name] = None
            else:
                memory[v.name] = max(memory[v.name], mem.peak_bytes)
    n = len(classes)
    for name in images:                                       # seconds per pass over the prompts
        steps[name] /= reps
        decode[name] /= reps
        whole[name] /= reps
    base_imgs = np.concatenate(images["baseline"])
    base_steps, base_total = steps["baseline"].sum(), steps["baseline"].sum() + decode["baseline"]
    out = {"images": n, "batch_size": batch_size, "seed": seed, "timed_passes": reps, "variants": {}}
    for v in variants:
        imgs = np.concatenate(images[v.name])
        total = steps[v.name].sum() + decode[v.name] + whole[v.name]
        split = whole[v.name] == 0
        row = {"profile": v.profile, "peer": v.peer, "seconds_total": total, "seconds_per_image": total / n,
               "seconds_steps": float(steps[v.name].sum()) if split else None, "step_seconds": steps[v.name].tolist(),
               "decode_seconds": decode[v.name], "graph_seconds": whole[v.name], "speedup_total": base_total / total,
               "speedup_transformer": base_steps / max(steps[v.name].sum(), 1e-12) if split else None,
               "peak_memory_mib": None if memory[v.name] is None else memory[v.name] / 2**20}
        if paired and v.name != "baseline":
            row.update(paired_psnr=mean_psnr(base_imgs, imgs), paired_ssim=float(ssim(base_imgs, imgs).mean()))
        if judge is not None:
            row.update(judge(imgs, classes))
        out["variants"][v.name] = row
        images[v.name] = imgs[:10]
    return out, images


def quality_judge(model: VARModel):
    """Class accuracy and FD/KID from the shipped evaluator, for models in its domain; else None."""
    from ..evaluate.features import ClassifierFeatures
    from ..evaluate.run import (
        Reference,
        check_embedded_domain,
        class_accuracy,
        distribution_scores,
    )
    try:
        check_embedded_domain(model)
    except FastervarError:
        return None
    ext, ref = ClassifierFeatures.shipped(), Reference.shipped()

    def judge(images: np.ndarray, classes: list[int]) -> dict:
        return {"class_accuracy": class_accuracy(ext, images, classes), **distribution_scores(ext, ref, images)}
    return judge
