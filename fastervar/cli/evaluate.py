"""`fastervar evaluate`: sample, score with the judge, and compare a profile side by side."""

from __future__ import annotations

import click

from .app import main
from .options import (
    accelerated,
    check_writable_parent,
    judge,
    judge_option,
    load_profile,
    model_options,
    sampling_options,
    settings,
    write_json,
)


@main.command()
@model_options
@sampling_options
@click.option("--samples-per-class", type=click.IntRange(min=2), default=100, show_default=True)
@click.option("--features", metavar="MODULE:FACTORY", help="Another feature extractor (e.g. Inception) for FD/KID.")
@judge_option
@click.option("--profile", "profile_spec", metavar="PROFILE", help="Also run this profile, interleaved, on the same noise.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the figures as JSON.")
def evaluate(model_name, var_checkpoint, vae_checkpoint, random_weights, device, seed, cfg, top_k, top_p,
             more_smooth, sampler, batch_size, samples_per_class, features, judge_dir, profile_spec, json_path) -> None:
    """Sample N images per class and score them: class accuracy, Frechet distance, KID; with
    --profile, baseline and accelerated side by side (speedups, paired PSNR/SSIM)."""
    from ..evaluate.features import load_extractor
    from ..evaluate.run import evaluate as run_evaluate
    from ..models.loading import resolve_model
    from ..utils.machine import environment

    sampling = settings(cfg, top_k, top_p, more_smooth, sampler)
    if json_path:
        check_writable_parent(json_path)
    model = resolve_model(model_name, var_checkpoint, vae_checkpoint, random_weights, device)
    profile = load_profile(profile_spec, model)
    found = judge(model, judge_dir, fall_back=True)
    ext = load_extractor(features, found)
    if profile is not None:
        accelerated(model, profile)
    result = run_evaluate(model, ext, found, sampling, samples_per_class, seed, batch_size, profile)
    result.update(model=model.cfg.name, settings=sampling.__dict__, samples_per_class=samples_per_class, seed=seed)
    _print_table(result)
    if json_path:
        write_json({**result, "environment": environment(_gpu_name(model))}, json_path)
        click.echo(f"wrote {json_path}")


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
