"""`fastervar export`: bake a profile into a bundle of ONNX graphs (and TensorRT plans)."""

from __future__ import annotations

import click

from .app import main
from .options import guidance_options, load_profile, model_options, settings


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
@guidance_options
def export(model_name, var_checkpoint, vae_checkpoint, random_weights, device, profile_spec, out_dir, precision,
           decoder_precision, calib_images, max_batch, tensorrt, cfg, top_k, top_p) -> None:
    """Bake a profile into per-step ONNX graphs and a decoder graph: a bundle for `fastervar run`."""
    import time

    from ..export.bundle import check_target, export_bundle
    from ..memory import peak_resident_bytes
    from ..models.checkpoint import weights_sha256
    from ..models.loading import resolve_model
    from ..profile import check_against, identity
    from ..utils.machine import int8_note

    t0 = time.perf_counter()
    sampling = settings(cfg, top_k, top_p, False, "portable")
    check_target(out_dir)
    if "int8" in (precision, decoder_precision) and (note := int8_note()):
        click.echo(f"note: {note}", err=True)
    model = resolve_model(model_name, var_checkpoint, vae_checkpoint, random_weights, device)
    profile = identity(model) if profile_spec == "identity" else load_profile(profile_spec, model)
    sha = weights_sha256(model)
    check_against(profile, model, sha if profile.model.get("weights_sha256") else None)
    path = export_bundle(model, profile, out_dir, sampling, precision, max_batch, sha, tensorrt,
                         decoder_precision=decoder_precision, calib_images=calib_images)
    size = sum(f.stat().st_size for f in path.iterdir())
    weights = sum(t.numel() * t.element_size() for part in model.state_parts() for t in part.state_dict().values())
    peak = peak_resident_bytes()
    peak_txt = f", peak memory {peak / 2**30:.2f} GiB ({peak / weights:.1f}x the weights)" if peak else ""
    click.echo(f"wrote bundle {path} ({size / 2**20:.1f} MiB; profile {profile.name}, {precision}) in "
               f"{time.perf_counter() - t0:.0f} s{peak_txt}; the model's weights are {weights / 2**30:.2f} GiB")
