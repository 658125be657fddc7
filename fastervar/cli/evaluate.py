"""`fastervar evaluate`: sample, score with the judge, and compare a profile side by side."""

from __future__ import annotations

import functools
from pathlib import Path

import click

from ..errors import FastervarError
from .app import main
from .options import (
    accelerated,
    check_writable_parent,
    judge,
    judge_option,
    load_profile,
    model_options,
    sampling_options,
    text_options,
    write_json,
)
from .workload import (
    TextArgs,
    is_text_model,
    load_text_models,
    prompt_set,
    refuse_star,
    reject_other_kind,
    sampling,
    text_flags_given,
)


@main.command()
@model_options
@functools.partial(sampling_options, per_family=True)
@text_options
@click.option("--samples-per-class", type=click.IntRange(min=1),
              help="Images per class [default: 100]; for a text model, per prompt [default: 1].")
@click.option("--features", metavar="MODULE:FACTORY", help="Another feature extractor (e.g. Inception) for FD/KID.")
@judge_option
@click.option("--profile", "profile_spec", metavar="PROFILE", help="Also run this profile, interleaved, on the same noise.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the figures as JSON.")
@click.option("--clip", "clip_dir", type=click.Path(path_type=Path), metavar="DIR",
              help="A Hugging Face CLIP folder: CLIP score (prompt texts, or 'a photo of a {class name}'), CLIP-FD "
                   "(to the real images for a class model, to the baseline for a text model) and paired CLIP "
                   "similarity with --profile.")
def evaluate(model_name, var_checkpoint, vae_checkpoint, random_weights, device, seed, cfg, top_k, top_p,
             more_smooth, sampler, batch_size, prompts, prompts_file, text_encoder, text_embeddings, aspect, pn, tau,
             samples_per_class, features, judge_dir, profile_spec, json_path, clip_dir) -> None:
    """Sample N images per class and score them: class accuracy, Frechet distance, KID; with
    --profile, baseline and accelerated side by side (speedups, paired PSNR/SSIM). A text-to-image
    model has no judge here: it takes --profile and is compared pair by pair with its baseline."""
    from ..evaluate.features import load_extractor
    from ..evaluate.run import evaluate as run_evaluate
    from ..models.loading import resolve_model
    from ..utils.machine import environment

    if json_path:
        check_writable_parent(json_path)
    refuse_star(model_name, var_checkpoint, "evaluate")
    text_given = text_flags_given()
    if is_text_model(model_name, var_checkpoint, text_given):
        reject_other_kind(True, text_given, [f for f, v in (("--features", features), ("--judge", judge_dir),
                                                             ("--more-smooth", more_smooth)) if v])
        _evaluate_text(model_name, var_checkpoint, vae_checkpoint, random_weights, device,
                       TextArgs(prompts, prompts_file, text_encoder, text_embeddings, (aspect,), pn, tau), seed, cfg,
                       top_k, top_p, sampler, batch_size, samples_per_class or 1, profile_spec, json_path, clip_dir)
        return
    reject_other_kind(False, text_given, [])
    model = resolve_model(model_name, var_checkpoint, vae_checkpoint, random_weights, device)
    sampling_ = sampling(model, cfg, top_k, top_p, more_smooth, sampler)
    samples_per_class = samples_per_class or 100
    if samples_per_class < 2:
        raise FastervarError("--samples-per-class must be at least 2 for the distribution scores")
    profile = load_profile(profile_spec, model)
    found = judge(model, judge_dir, fall_back=True)
    ext = load_extractor(features, found)
    if profile is not None:
        accelerated(model, profile)
    clip = None
    if clip_dir is not None:
        from ..evaluate.clip_metrics import ClipFeatures
        from ..models.clip.loading import load_clip
        clip = ClipFeatures(load_clip(clip_dir, model.device))
    result = run_evaluate(model, ext, found, sampling_, samples_per_class, seed, batch_size, profile, clip=clip)
    result.update(model=model.cfg.name, settings=sampling_.__dict__, samples_per_class=samples_per_class, seed=seed)
    _print_table(result)
    if profile is not None:
        _print_promises(result, profile, result["baseline"], result["accelerated"])
    if json_path:
        write_json({**result, "environment": environment(_gpu_name(model))}, json_path)
        click.echo(f"wrote {json_path}")


def _evaluate_text(model_name, checkpoint, vae_checkpoint, random_weights, device, text: TextArgs, seed, cfg, top_k,
                   top_p, sampler, batch_size, per_prompt, profile_spec, json_path, clip_dir=None) -> None:
    """`evaluate` for a text-to-image model: the profile against the baseline, pair by pair."""
    from ..evaluate.run import evaluate_paired
    from ..utils.machine import environment

    if profile_spec is None:
        raise FastervarError("a text-to-image model has no judge here: give --profile to compare it with the "
                             "baseline image by image (paired PSNR/SSIM, speedups)")
    bank, texts = prompt_set(text)
    model, = load_text_models(model_name, checkpoint, vae_checkpoint, random_weights, device, text)
    clip = None
    if clip_dir is not None:
        from ..evaluate.clip_metrics import ClipFeatures
        from ..models.clip.loading import load_clip
        clip = ClipFeatures(load_clip(clip_dir, model.device))
    sampling_ = sampling(model, cfg, top_k, top_p, sampler=sampler, tau=text.tau)
    profile = load_profile(profile_spec, model)
    accelerated(model, profile)
    prompts = [i for i in range(len(bank)) for _ in range(per_prompt)]
    result = evaluate_paired(model, sampling_, prompts, seed, batch_size, profile, bank, clip=clip, texts=texts)
    result.update(model=model.spec().config, settings=sampling_.__dict__, per_prompt=per_prompt, seed=seed)
    _print_table(result)
    _print_promises(result, profile, {"clip_score": result.get("clip_score_baseline")},
                    {"clip_score": result.get("clip_score")})
    if json_path:
        write_json({**result, "environment": environment(_gpu_name(model))}, json_path)
        click.echo(f"wrote {json_path}")


def _print_promises(result: dict, profile, baseline: dict, accelerated: dict) -> None:
    """A calibrated profile's promises beside what this run measured (into the JSON too)."""
    from ..evaluate.promises import beside, lines, measured
    figures = measured(baseline, {**accelerated, "paired_ssim": result["paired_ssim"],
                                  "speedup_transformer": result["speedup_transformer"]})
    result["promised"] = beside(profile, figures)
    for line in lines(result["promised"], result["samples"]):
        click.echo(line)


def _gpu_name(model) -> str | None:
    import torch
    return torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else None


def _print_table(result: dict) -> None:
    def scalars(d: dict) -> list[tuple[str, object]]:
        return [(k, v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]

    def fmt(v) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    rows = scalars(result)
    if "baseline" in result:
        side = [k for k, _ in scalars(result["baseline"])]
        width = max(len(k) for k in side)
        click.echo(f"{'':<{width}}  {'baseline':>12}  {'accelerated':>12}")
        for k in side:
            click.echo(f"{k:<{width}}  {fmt(result['baseline'][k]):>12}  {fmt(result['accelerated'][k]):>12}")
        click.echo("")
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {fmt(v)}")
