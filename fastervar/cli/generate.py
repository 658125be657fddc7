"""`fastervar generate` and `fastervar grid`: images from the torch reference (or a profile)."""

from __future__ import annotations

import functools

import click

from .app import main
from .options import (
    accelerated,
    check_classes,
    check_writable_parent,
    graph_option,
    load_profile,
    model_options,
    parse_classes,
    sampling_options,
    settings,
    text_options,
)
from .workload import (
    TextArgs,
    is_star_model,
    is_text_model,
    load_text_models,
    prompt_set,
    reject_other_kind,
    sampling,
    text_flags_given,
)


def _generate_text(model_name, checkpoint, vae_checkpoint, random_weights, device, text: TextArgs, seed, cfg,
                   top_k, top_p, sampler, batch_size, profile_spec, max_graph_batches, out_dir) -> None:
    """`generate` for a text-to-image model: prompts in, one image per prompt, the reference
    sampler or a profile."""
    from ..models.cuda_graphs import fast_path
    from ..models.infinity.schedules import parse_aspect
    from ..models.sampler import generate as run_generate
    from ..utils.images import image_folder, write_pngs

    parse_aspect(text.aspects[0])
    bank, _ = prompt_set(text)
    with image_folder(out_dir) as stage:
        model, = load_text_models(model_name, checkpoint, vae_checkpoint, random_weights, device, text)
        bits = sampling(model, cfg, top_k, top_p, sampler=sampler, tau=text.tau)
        runner = fast_path(accelerated(model, load_profile(profile_spec, model)), bits, max_graph_batches)
        result = run_generate(runner, bank, bits, seed=seed, batch_size=batch_size, progress=True)
        paths = write_pngs(result.images.cpu().numpy(), stage)
    click.echo(f"wrote {len(paths)} images to {out_dir}")


def _generate_star(model_name, checkpoint, vae_checkpoint, random_weights, device, text: TextArgs, seed, cfg, top_k,
                   top_p, sampler, batch_size, profile_spec, out_dir) -> None:
    """`generate` for STAR: prompts in, one image per prompt, sampled as upstream does. Batch j of
    the request is one upstream call seeded with seed + j (official: the step generator, and torch's
    global generator for the stable-sampling draws, as the demo seeds it)."""
    from ..errors import FastervarError
    from ..models.loading import resolve_device
    from ..models.sampler import generate as run_generate
    from ..models.star.checkpoint import resolve_star
    from ..models.star.text import star_prompts
    from ..utils.images import image_folder, write_pngs
    from ..utils.tokens import read_prompts

    if profile_spec:
        raise FastervarError("--profile: STAR is not accelerated yet; generate samples it as upstream does")
    other = [f for f in text_flags_given() if f in ("--aspect", "--pn", "--tau")]
    if other:
        raise FastervarError(f"{other[0]} is for Infinity; STAR's image size comes with the model")
    bank = star_prompts(read_prompts(text.prompts, text.prompts_file), text.text_encoder, text.text_embeddings)
    with image_folder(out_dir) as stage:
        model = resolve_star(model_name, checkpoint, vae_checkpoint, random_weights, resolve_device(device))
        if bank.channels != model.cfg.text_channels:
            raise FastervarError(f"the prompt embeddings are {bank.channels} wide but {model.name} reads "
                                 f"{model.cfg.text_channels}-wide text (SD-2.1's CLIP text encoder)")
        settings = sampling(model, cfg, top_k, top_p, sampler=sampler)
        result = run_generate(model, bank, settings, seed=seed, batch_size=batch_size, progress=True)
        paths = write_pngs(result.images.cpu().numpy(), stage)
    click.echo(f"wrote {len(paths)} images to {out_dir}")


@main.command()
@model_options
@click.option("--class", "class_ids", type=int, multiple=True, metavar="N", help="Class index; repeat for more images.")
@click.option("--classes", "classes_file", type=click.Path(dir_okay=False), help="File of class indices.")
@text_options
@functools.partial(sampling_options, per_family=True)
@click.option("--profile", "profile_spec", metavar="PROFILE", help="Accelerate with a profile (file or shipped name).")
@graph_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Directory for 0000.png, 0001.png, ...")
def generate(model_name, var_checkpoint, vae_checkpoint, random_weights, device, class_ids, classes_file, prompts,
             prompts_file, text_encoder, text_embeddings, aspect, pn, tau, seed, cfg, top_k, top_p, more_smooth,
             sampler, batch_size, profile_spec, max_graph_batches, out_dir) -> None:
    """Generate one image per class (VAR) or per prompt (Infinity, STAR): the reference sampler, or
    accelerated by --profile (a file, a shipped name, or a template: paper-split, fastvar,
    skipvar-skip1..3, skipvar-uncond1..3, skipvar)."""
    from ..models.cuda_graphs import fast_path
    from ..models.loading import resolve_model
    from ..models.sampler import generate as run_generate
    from ..models.sampling import SamplingSettings
    from ..utils.images import image_folder, write_pngs

    class_flags = [f for f, v in (("--class", class_ids), ("--classes", classes_file), ("--more-smooth", more_smooth))
                   if v]
    if is_star_model(model_name, var_checkpoint):
        reject_other_kind(True, [], class_flags)
        _generate_star(model_name, var_checkpoint, vae_checkpoint, random_weights, device,
                       TextArgs(prompts, prompts_file, text_encoder, text_embeddings), seed, cfg, top_k, top_p, sampler,
                       batch_size, profile_spec, out_dir)
        return
    text_given = text_flags_given()
    text = is_text_model(model_name, var_checkpoint, text_given)
    reject_other_kind(text, text_given, class_flags)
    if text:
        _generate_text(model_name, var_checkpoint, vae_checkpoint, random_weights, device,
                       TextArgs(prompts, prompts_file, text_encoder, text_embeddings, (aspect,), pn, tau), seed, cfg,
                       top_k, top_p, sampler, batch_size, profile_spec, max_graph_batches, out_dir)
        return
    classes = parse_classes(class_ids, classes_file)
    sampling = settings(SamplingSettings.cfg if cfg is None else cfg, SamplingSettings.top_k if top_k is None else top_k,
                        SamplingSettings.top_p if top_p is None else top_p, more_smooth, sampler)
    with image_folder(out_dir) as stage:
        model = resolve_model(model_name, var_checkpoint, vae_checkpoint, random_weights, device)
        check_classes(classes, model.cfg.var.num_classes)
        runner = fast_path(accelerated(model, load_profile(profile_spec, model)), sampling, max_graph_batches)
        result = run_generate(runner, classes, sampling, seed=seed, batch_size=batch_size, progress=True)
        paths = write_pngs(result.images.cpu().numpy(), stage)
    click.echo(f"wrote {len(paths)} images to {out_dir}")


@main.command()
@model_options
@sampling_options
@click.option("--per-class", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--scale", type=click.IntRange(min=1), default=3, show_default=True, help="Pixel upscaling.")
@graph_option
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True, help="PNG file to write.")
def grid(model_name, var_checkpoint, vae_checkpoint, random_weights, device, seed, cfg, top_k, top_p,
         more_smooth, sampler, batch_size, per_class, scale, max_graph_batches, out_path) -> None:
    """A sample grid: one row per class, --per-class samples each."""
    from ..models.cuda_graphs import fast_path
    from ..models.loading import resolve_model
    from ..models.sampler import generate as run_generate
    from ..utils.images import save_png, tile_grid

    check_writable_parent(out_path)
    model = resolve_model(model_name, var_checkpoint, vae_checkpoint, random_weights, device)
    classes = [c for c in range(min(model.cfg.var.num_classes, 10)) for _ in range(per_class)]
    sampling = settings(cfg, top_k, top_p, more_smooth, sampler)
    result = run_generate(fast_path(model, sampling, max_graph_batches), classes, sampling, seed=seed,
                          batch_size=batch_size, progress=True)
    save_png(tile_grid(result.images.cpu().numpy(), rows=len(classes) // per_class, scale=scale), out_path)
    click.echo(f"wrote {out_path}")
