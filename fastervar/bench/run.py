"""Every path on the same prompts and noise, timed by the one harness in one process.

Variants: the torch baseline, the profile in torch, the profile as an exported bundle on the
runtime (and the identity profile exported, which separates the compiler's share of the speedup
from the algorithm's), and the peers (FastVAR, SkipVAR's static operating points). All use the portable sampler,
so they read the same noise and their images can be compared pair by pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..accel.accelerated import AcceleratedModel
from ..accel.presets import peers as peer_profiles
from ..errors import FastervarError
from ..evaluate.judge import JudgeFiles
from ..evaluate.clip_metrics import clip_fd, clip_scores, paired_clip_similarity
from ..evaluate.metrics import mean_psnr, ssim
from ..models.sampling import SamplingSettings
from ..models.protocol import FamilyModel
from ..profile import Profile
from ..timing import (
    PipelineRunner,
    TorchRunner,
    batches,
    first_pass,
    interleaved,
    speedup,
    summarize,
)


@dataclass
class Variant:
    name: str
    runner: object               # a family model / AcceleratedModel, or a runtime Pipeline
    profile: str | None
    peer: bool = False           # a peer's published recipe, not one of ours
    precision: str | None = None  # a bundle's precision; None for the torch variants


def make_variants(model: FamilyModel, profile: Profile, pipelines: dict | None = None, peers: bool = True,
                  compare: Sequence[Profile] = ()) -> list[Variant]:
    """`pipelines` maps variant names (e.g. bundle, bundle-steps) to runtime Pipelines; `compare`
    adds more of our profiles in torch (say, one calibrated to a peer's speed)."""
    out = [Variant("baseline", model, None), Variant("accelerated", AcceleratedModel(model, profile), profile.name)]
    for name, pipe in (pipelines or {}).items():
        out.append(Variant(name, pipe, pipe.manifest.data["profile"]["name"], precision=pipe.manifest.data["precision"]))
    for p in compare:
        name = p.name.removeprefix(f"{model.spec().config}-")
        if p.name == profile.name or any(v.name == name for v in out):
            raise FastervarError(f"profile {p.name!r} is already in the bench; give each profile once")
        out.append(Variant(name, AcceleratedModel(model, p), p.name))
    if peers:
        for p in peer_profiles(model):
            out.append(Variant(p.name.removeprefix(f"{model.spec().config}-"), AcceleratedModel(model, p), p.name,
                               peer=True))
    return out


def _runner(v: Variant, settings: SamplingSettings, bank=None):
    if hasattr(v.runner, "init_state"):           # the step protocol: a torch variant
        return TorchRunner(v.runner, settings, prompts=bank)
    return PipelineRunner(v.runner)


def run_bench(model: FamilyModel, variants: list[Variant], classes: list[int], settings: SamplingSettings,
              seed: int, batch_size: int, paired: bool = True, judge=None,
              progress: bool = True, reps: int = 1, bank=None, clip=None,
              clip_texts: list[str] | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """Time every variant through the timing harness; `paired` adds PSNR/SSIM against the
    baseline's images, `judge` (the evaluator) class accuracy and FD/KID. `reps` passes over the
    prompts are timed (times are medians per pass; ratios the median of the passes' ratios).
    `classes` are class labels, or with `bank` (a text model's prompt set) rows of it. With `clip`
    (`evaluate.clip_metrics.ClipFeatures`), paired CLIP similarity and CLIP-FD against the
    baseline, and with each image's prompt text (`clip_texts`) its CLIP score.
    Returns the figures and the first images of each variant."""
    runners = {v.name: _runner(v, settings, bank) for v in variants}
    runs = interleaved(runners, batches(classes, seed, batch_size), reps=reps, memory=True,
                       progress=progress, desc=f"bench ({len(variants)} variants)")
    n = len(classes)
    base_imgs = first_pass(runs["baseline"]).images
    out = {"images": n, "batch_size": batch_size, "seed": seed, "timed_passes": reps, "variants": {}}
    images = {}
    for v in variants:
        t = summarize(runs[v.name])
        split = t.graph_seconds == 0
        peaks = [r.peak_bytes for p in runs[v.name] for r in p]
        row = {"profile": v.profile, "peer": v.peer, "precision": v.precision, "seconds_total": t.seconds, "seconds_per_image": t.seconds / n,
               "seconds_steps": t.seconds_steps if split else None, "step_seconds": t.step_seconds,
               "decode_seconds": t.decode_seconds, "graph_seconds": t.graph_seconds, "pass_seconds": t.passes,
               "speedup_total": speedup(runs["baseline"], runs[v.name]),
               "speedup_transformer": speedup(runs["baseline"], runs[v.name], "steps") if split else None,
               "peak_memory_mib": None if None in peaks else max(peaks) / 2**20}
        imgs = first_pass(runs[v.name]).images
        if paired and v.name != "baseline":
            row.update(paired_psnr=mean_psnr(base_imgs, imgs), paired_ssim=float(ssim(base_imgs, imgs).mean()))
        if judge is not None:
            row.update(judge(imgs, classes))
        if clip is not None:
            if clip_texts:
                row["clip_score"] = float(clip_scores(clip, list(imgs), clip_texts).mean())
            if v.name != "baseline":
                row.update(paired_clip_similarity=float(paired_clip_similarity(clip, list(imgs), list(base_imgs)).mean()),
                           clip_fd=clip_fd(clip, list(imgs), list(base_imgs)))
        out["variants"][v.name] = row
        images[v.name] = imgs[:10]
    return out, images


def quality_judge(judge: JudgeFiles):
    """Class accuracy and FD/KID from a judge's classifier and reference statistics."""
    from ..evaluate.features import ClassifierFeatures
    from ..evaluate.run import Reference, class_accuracy, distribution_scores
    ext, ref = ClassifierFeatures.load(judge), Reference.load(judge)

    def judge(images: np.ndarray, classes: list[int]) -> dict:
        return {"class_accuracy": class_accuracy(ext, images, classes), **distribution_scores(ext, ref, images)}
    return judge
