"""`fastervar export`: bake a profile into a bundle of ONNX graphs (and TensorRT plans)."""

from __future__ import annotations

import functools

import click

from ..errors import FastervarError
from .app import main
from .options import guidance_options, load_profile, model_options
from .workload import (
    TextArgs,
    is_text_model,
    load_text_models,
    refuse_star,
    reject_other_kind,
    sampling,
    text_flags_given,
)


@main.command()
@model_options
@click.option("--profile", "profile_spec", metavar="PROFILE", required=True,
              help="Profile to bake in: a file, a shipped name, or 'identity' (the baseline).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Bundle directory to write.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
              help="int8: int8 weights and per-token int8 activations in the transformer's linears, static int8 "
                   "convolutions in the decoder (faster only on CPUs with int8 dot-product instructions, "
                   "VNNI or AMX).")
@click.option("--decoder-precision", type=click.Choice(["fp32", "int8"]),
              help="The decoder's precision alone [default: int8 with --precision int8, else the same as --precision].")
@click.option("--calib-images", type=click.IntRange(min=0),
              help="Generations whose latents calibrate an int8 decoder [default: the profile's calibration "
                   "prompts, or 16].")
@click.option("--max-batch", type=click.IntRange(min=1), default=16, show_default=True,
              help="Largest batch the TensorRT plans are optimised for; the runtime chunks larger requests.")
@click.option("--tensorrt", is_flag=True, help="Also build TensorRT plans (needs tensorrt and an NVIDIA GPU).")
@functools.partial(guidance_options, per_family=True)
@click.option("--aspect", multiple=True, default=("1:1",), show_default=True,
              help="Text-to-image: height:width, snapped to Infinity's templates; repeat for several (one set of "
                   "step graphs each, sharing the weights).")
@click.option("--pn", default="1M", show_default=True, type=click.Choice(["0.06M", "0.25M", "0.60M", "1M"]),
              help="Text-to-image: the pixel budget.")
@click.option("--tau", type=click.FloatRange(min=0, min_open=True), default=0.5, show_default=True,
              help="Text-to-image: the logit temperature baked in.")
@click.option("--calib-embeddings", type=click.Path(dir_okay=False), metavar="FILE.npz",
              help="Text-to-image, int8 decoder: prompts (as embeddings) whose generations calibrate it [default: "
                   "16 shipped prompts encoded by --text-encoder].")
@click.option("--text-encoder", type=click.Path(file_okay=False), metavar="DIR",
              help="Text-to-image: a Flan-T5 folder (config.json, weights, tokenizer.json) whose encoder goes into "
                   "the bundle as a graph, so `run --prompt` and `serve` take prompts as text.")
def export(model_name, var_checkpoint, vae_checkpoint, random_weights, device, profile_spec, out_dir, precision,
           decoder_precision, calib_images, max_batch, tensorrt, cfg, top_k, top_p, aspect, pn, tau,
           calib_embeddings, text_encoder) -> None:
    """Bake a profile into per-step ONNX graphs and a decoder graph: a bundle for `fastervar run`.
    A text-to-image model's bundle takes prompt embeddings and holds each --aspect asked."""
    import time

    from ..export.bundle import check_target, export_bundle
    from ..memory import peak_resident_bytes
    from ..models.checkpoint import weights_sha256
    from ..models.loading import resolve_model
    from ..profile import check_against, identity
    from ..utils.machine import int8_note

    t0 = time.perf_counter()
    check_target(out_dir)
    refuse_star(model_name, var_checkpoint, "export")
    text_given = text_flags_given()
    text = is_text_model(model_name, var_checkpoint, text_given)
    reject_other_kind(text, text_given, [])
    if "int8" in (precision, decoder_precision) and (note := int8_note()):
        click.echo(f"note: {note}", err=True)
    if text:
        model, *others = load_text_models(model_name, var_checkpoint, vae_checkpoint, random_weights, device,
                                          TextArgs(aspects=aspect, pn=pn, tau=tau))
    else:
        model, others = resolve_model(model_name, var_checkpoint, vae_checkpoint, random_weights, device), []
    profile = identity(model) if profile_spec == "identity" else load_profile(profile_spec, model)
    sha = weights_sha256(model)
    for view in [model, *others]:
        check_against(profile, view, sha if profile.model.get("weights_sha256") else None)
    calib_prompts = _calibration_prompts(calib_embeddings, text_encoder) if text else None
    if calib_embeddings and not text:
        raise FastervarError("--calib-embeddings is for text-to-image models; a class model calibrates on classes")
    path = export_bundle(model, profile, out_dir, sampling(model, cfg, top_k, top_p, tau=tau if text else None),
                         precision, max_batch, sha, tensorrt, decoder_precision=decoder_precision,
                         calib_images=calib_images, aspects=others, text_encoder=text_encoder,
                         calib_prompts=calib_prompts)
    size = sum(f.stat().st_size for f in path.iterdir())
    weights = sum(t.numel() * t.element_size() for part in model.state_parts() for t in part.state_dict().values())
    peak = peak_resident_bytes()
    peak_txt = f", peak memory {peak / 2**30:.2f} GiB ({peak / weights:.1f}x the weights)" if peak else ""
    click.echo(f"wrote bundle {path} ({size / 2**20:.1f} MiB; profile {profile.name}, {precision}) in "
               f"{time.perf_counter() - t0:.0f} s{peak_txt}; the model's weights are {weights / 2**30:.2f} GiB")


def _calibration_prompts(embeddings: str | None, text_encoder: str | None):
    """What an int8 decoder of a text model calibrates on: the given embeddings, or the shipped
    calibration prompts encoded by the bundle's text encoder (None when neither is given; export
    then says so if it needs them)."""
    from ..models.text.prompts import read_text_embeddings, text_batch
    if embeddings:
        return read_text_embeddings(embeddings)
    if not text_encoder:
        return None
    from importlib.resources import files
    prompts = (files("fastervar") / "assets" / "calibration_prompts.txt").read_text().splitlines()
    return text_batch([p for p in prompts if p.strip()], text_encoder, None)
