"""`fastervar bench` (every variant side by side) and `fastervar demo` (the whole product in one go)."""

from __future__ import annotations

import functools
from pathlib import Path

import click

from ..errors import FastervarError
from .app import main
from .options import (
    accelerated,
    check_writable_parent,
    guidance_options,
    judge,
    judge_option,
    load_profile,
    model_options,
    seed_list,
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
@functools.partial(guidance_options, per_family=True)
@text_options
@click.option("--profile", "profile_spec", metavar="PROFILE",
              help="Profile to compare: a file, a shipped name, or 'identity' [default: MODEL-calibrated "
                   "for a shipped model, else MODEL-paper-split].")
@click.option("--bundle", "bundle_path", type=click.Path(file_okay=False),
              help="Exported bundle of that profile to run on the runtime [default: export one into OUT/bundle].")
@click.option("--identity-bundle", "identity_path", type=click.Path(file_okay=False),
              help="The identity profile exported for the same model [default: export one into OUT/bundle-identity].")
@click.option("--no-bundle", is_flag=True, help="Leave the runtime out (no export).")
@click.option("--compare-bundle", "compare_bundles", type=click.Path(file_okay=False), multiple=True, metavar="DIR",
              help="Another bundle of this model and profile (say, another precision) to run alongside (repeatable).")
@click.option("--no-peers", is_flag=True, help="Leave the peers (fastvar, skipvar-*) out.")
@click.option("--compare", "compare_specs", metavar="PROFILE", multiple=True,
              help="Another of our profiles to run in torch alongside (repeatable), e.g. one calibrated to a peer's speed.")
@click.option("--provider", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu", show_default=True)
@judge_option
@click.option("--images", type=click.IntRange(min=2),
              help="Images to draw [default: 100, spread evenly over the classes; for a text model, one per prompt, "
                   "the prompts repeated (with other noise) to reach a larger count].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--reps", type=click.IntRange(min=1), default=1, show_default=True,
              help="Timed passes over the prompts (quality is judged once); more passes steady a fast model's ratios.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Folder for bench.json, report.md and plots.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write bench.json here.")
@click.option("--clip", "clip_dir", type=click.Path(path_type=Path), metavar="DIR",
              help="A Hugging Face CLIP folder: CLIP score (prompt texts, or 'a photo of a {class name}'), paired CLIP "
                   "similarity and CLIP-FD against the baseline for every variant, and in the equal-speed table.")
def bench(model_name, var_checkpoint, vae_checkpoint, random_weights, device, cfg, top_k, top_p, prompts,
          prompts_file, text_encoder, text_embeddings, aspect, pn, tau, profile_spec, bundle_path, identity_path,
          no_bundle, compare_bundles, no_peers, compare_specs, provider, judge_dir, images, seed, batch_size, reps,
          out_dir, json_path, clip_dir) -> None:
    """Baseline, accelerated (torch), the bundle and the identity bundle (runtime) and the peers,
    side by side, on the same prompts and noise. A text-to-image model (Infinity) runs the torch
    variants only: its export comes later."""
    from ..bench.command import bench as run_bench
    from ..bench.pipelines import bench_pipelines, default_profile
    from ..bench.report import attribution_line, equal_speed_table, table
    from ..evaluate.promises import lines
    from ..models.loading import resolve_model
    from ..profile import identity

    if json_path:
        check_writable_parent(json_path)
    if clip_dir is not None:                  # a bad folder fails before any export or timing
        from ..models.clip.loading import load_clip
        load_clip(clip_dir)
    if (bundle_path or identity_path or compare_bundles) and no_bundle:
        raise FastervarError("--bundle/--identity-bundle/--compare-bundle and --no-bundle contradict each other")
    refuse_star(model_name, var_checkpoint, "bench")
    text_given = text_flags_given()
    is_text = is_text_model(model_name, var_checkpoint, text_given)
    reject_other_kind(is_text, text_given, ["--judge"] if judge_dir else [])
    bank = texts = None
    if is_text:
        if bundle_path or identity_path or compare_bundles or provider != "cpu":
            raise FastervarError("bundles of text-to-image models are not exported yet: bench them in torch "
                                 "(leave out --bundle/--identity-bundle/--compare-bundle/--provider)")
        no_bundle = True
        bank, texts = prompt_set(TextArgs(prompts, prompts_file, text_encoder, text_embeddings, (aspect,), pn, tau))
        model, = load_text_models(model_name, var_checkpoint, vae_checkpoint, random_weights, device,
                                  TextArgs(aspects=(aspect,), pn=pn))
    else:
        model = resolve_model(model_name, var_checkpoint, vae_checkpoint, random_weights, device)
    sampling_ = sampling(model, cfg, top_k, top_p, tau=tau if is_text else None)
    images = images or (len(bank) if is_text else 100)
    if images < 2:
        raise FastervarError("a bench compares at least 2 images: give more prompts or --images N")
    if profile_spec == "identity":
        profile = identity(model)
    else:
        profile = load_profile(profile_spec, model) if profile_spec else default_profile(model)
    accelerated(model, profile)
    compare = [load_profile(spec, model) for spec in compare_specs]
    for other in compare:
        accelerated(model, other)
    pipelines = {} if no_bundle else bench_pipelines(model, profile, sampling_, bundle_path, identity_path, out_dir,
                                                     batch_size, provider, compare_bundles)
    found = None if random_weights or is_text else judge(model, judge_dir, fall_back=False)
    # a text model has no judge; paired closeness to its baseline says what each variant changed
    quality = "paired" if is_text else ("none" if random_weights else ("full" if found else "paired"))
    result, report = run_bench(model, profile, pipelines, sampling_, images, seed, batch_size, Path(out_dir), quality,
                               peers=not no_peers, compare=compare, reps=reps, judge=found, bank=bank,
                               clip_dir=clip_dir, texts=texts)
    click.echo(table(result))
    for line in lines(result["promised"], result["images"]):
        click.echo(line)
    if result.get("attribution"):
        click.echo("\n" + attribution_line(result))
    if result.get("equal_speed"):
        click.echo("\nAgainst the peers at equal measured speed (+-10%):\n" + equal_speed_table(result["equal_speed"]))
    if json_path:
        write_json(result, json_path)
    click.echo(f"report: {report}")


@main.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="demo", show_default=True,
              help="Folder for everything: profile, calibration report, bundle, images, bench report.")
@click.option("--seeds", default="0,1,2,3,4,5,6,7,8,9", show_default=True,
              help="Calibration seeds per class (100 images on the shipped models: see calibrate --calib-images).")
@click.option("--max-quality-drop", type=click.FloatRange(0, 1), default=0.15, show_default=True)
@click.option("--max-accuracy-drop", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="Class accuracy the profile may lose, at 0.9 confidence on the calibration images (calibrate's "
                   "default, 0.02, is more than 100 images can promise for any faster profile of fashion-16).")
@click.option("--images", type=click.IntRange(min=2), default=100, show_default=True, help="Bench prompts.")
@click.option("--model", "model_name", type=click.Choice(["fashion-16", "fashion-tiny"]), default=None,
              help="Shipped model [default: the embedded one, fashion-16; fashion-tiny is the small, fast one].")
def demo(out_dir, seeds, max_quality_drop, max_accuracy_drop, images, model_name) -> None:
    """The main job on the embedded model: calibrate -> export -> run -> bench, into one folder."""
    from ..bench.demo import run_demo
    summary = run_demo(Path(out_dir), seed_list(seeds), max_quality_drop, images, model_name, max_accuracy_drop)
    for line in summary:
        click.echo(line)
