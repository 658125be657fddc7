"""What `fastervar bench` does between parsing and printing: pick the variants, run, report."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .. import __version__
from ..errors import FastervarError
from ..evaluate.judge import JudgeFiles
from ..evaluate.promises import beside, measured
from ..models.protocol import FamilyModel
from ..models.sampling import SamplingSettings
from ..profile import Profile
from ..utils.machine import environment as machine_environment
from .report import equal_speed, write_report
from .run import make_variants, quality_judge, run_bench


def bench_classes(num_classes: int, images: int) -> list[int]:
    """Prompts spread evenly over the classes (a stride coprime with 10 and 1000)."""
    return [(7 * i) % num_classes for i in range(images)]


def bench_prompts(prompts: int, images: int) -> list[int]:
    """A text model's prompts in order, repeated (each repeat draws other noise) to `images`."""
    return [i % prompts for i in range(images)]


def runtime_variants(bundle: Path, provider: str, identity_bundle: Path | None = None) -> dict:
    """The bundle as `fastervar run` runs it and, when that is the single graph, per step too; with
    `identity_bundle` (the identity profile exported) also that, which separates what the compiled
    runtime buys on an unchanged model from what the profile buys."""
    from ..runtime.pipeline import Pipeline
    out = {}
    if identity_bundle is not None:
        ident = Pipeline.from_bundle(identity_bundle, provider=provider)
        steps = ident.manifest.data["profile"]["json"]["steps"]
        if any(s["mode"] != "full" or not s["cfg"] or s.get("ranks") for s in steps):
            raise FastervarError(f"{identity_bundle} was exported with profile "
                                 f"{ident.manifest.data['profile']['name']!r}, not the identity profile")
        out["bundle-identity"] = ident
    main = Pipeline.from_bundle(bundle, provider=provider)
    out["bundle"] = main
    if main.single_graph:
        out["bundle-steps"] = Pipeline.from_bundle(bundle, provider=provider, verify=False, chain=False)
    return out


def attribution(result: dict) -> dict | None:
    """The bundle's end-to-end speedup as compiler x algorithm: the identity bundle against the
    torch baseline, then the profile's bundle against the identity bundle."""
    rows = result["variants"]
    if "bundle" not in rows or "bundle-identity" not in rows:
        return None
    compiler, total = rows["bundle-identity"]["speedup_total"], rows["bundle"]["speedup_total"]
    return {"compiler": compiler, "algorithm": total / compiler, "total": total}


def check_bundle_settings(pipeline, settings: SamplingSettings) -> None:
    """A bundle samples with the settings baked into it; comparing it under others would mislead."""
    baked = pipeline.manifest.data["sampler"]
    want = {"cfg": settings.cfg, "top_k": settings.top_k, "top_p": settings.top_p, "more_smooth": settings.more_smooth}
    diff = [f"{k} {baked.get(k)} (asked {v})" for k, v in want.items() if baked.get(k) != v]
    if diff:
        raise FastervarError(f"the bundle was exported with other sampling settings: {', '.join(diff)}; "
                             f"pass the same options or re-export")


def environment(model, pipelines: dict) -> dict:
    """Where the figures were measured: the CPU and its int8 instructions, the GPU, the versions."""
    on_gpu = model.device.type == "cuda"
    return {**machine_environment(torch.cuda.get_device_name(model.device) if on_gpu else None),
            "fastervar": __version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "device": model.device.type, "runtime_provider": next((p.provider for p in pipelines.values()), None)}


def bench(model: FamilyModel, profile: Profile, pipelines: dict, settings: SamplingSettings, images: int, seed: int,
          batch_size: int, out_dir: Path, quality: str, peers: bool = True,
          compare: Sequence[Profile] = (), reps: int = 1, judge: JudgeFiles | None = None,
          bank=None, clip_dir: Path | None = None, texts: list[str] | None = None) -> tuple[dict, Path]:
    """Run every variant and write the report; `quality` is full (with `judge`), paired or none (speed only).
    `pipelines` names the runtime variants (bundle: as `fastervar run` runs it; bundle-steps: one
    engine per step graph, so the per-step times show; bundle-identity: the identity profile
    exported). `bank`, a text model's prompt set, is what the images are drawn from, `texts` its
    prompts' text if known; `clip_dir` a CLIP folder that scores every variant (see `run_bench`)."""
    for pipe in pipelines.values():
        check_bundle_settings(pipe, settings)
    variants = make_variants(model, profile, pipelines, peers, compare)
    if quality == "full" and judge is None:
        raise FastervarError("bench quality 'full' needs a judge")
    scorer = quality_judge(judge) if quality == "full" else None
    prompts = bench_classes(model.cfg.var.num_classes, images) if bank is None else bench_prompts(len(bank), images)
    clip = per_image = None
    if clip_dir is not None:
        from ..evaluate.clip_metrics import ClipFeatures, class_prompts
        from ..models.clip.loading import load_clip
        clip = ClipFeatures(load_clip(clip_dir, model.device))
        per_image = class_prompts(model, prompts) if bank is None else texts and [texts[p] for p in prompts]
    result, samples = run_bench(model, variants, prompts, settings, seed, batch_size, paired=quality != "none",
                                judge=scorer, reps=reps, bank=bank, clip=clip, clip_texts=per_image)
    config = model.spec().config
    result.update(model=config, profile=profile.name, quality=quality, settings=settings.__dict__,
                  judge=judge.name if scorer else None,
                  environment=environment(model, pipelines))
    if quality != "none":
        result["equal_speed"] = equal_speed(result)
    result["attribution"] = attribution(result)
    rows = result["variants"]
    result["promised"] = beside(profile, measured(rows["baseline"], rows["accelerated"]))
    report = write_report(result, out_dir, samples, f"fastervar bench: {config}, profile {profile.name}")
    return result, report
