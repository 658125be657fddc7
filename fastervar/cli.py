"""The `fastervar` command line: parse, call, report.

Toolchain modules (which need torch) are imported inside the commands, so `fastervar --help` and
the torch-free runtime commands work on hosts without torch. Every FastervarError becomes a one-line
message with exit code 2.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from . import __version__
from .accel.presets import PEER_NAMES
from .errors import FastervarError

EXIT_BAD_INPUT = 2


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FastervarError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            click.echo("interrupted; nothing was written", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fastervar")
def main() -> None:
    """Training-free acceleration and compiled deployment for VAR-family image generators."""


def _parse_classes(values: tuple[int, ...], path: str | None) -> list[int]:
    classes = list(values)
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise FastervarError(f"cannot read --classes file {path}: {exc.strerror or exc}") from None
        for line_no, line in enumerate(text.splitlines(), 1):
            for tok in line.split("#")[0].replace(",", " ").split():
                try:
                    classes.append(int(tok))
                except ValueError:
                    raise FastervarError(f"{path}:{line_no}: {tok!r} is not a class index") from None
    if not classes:
        raise FastervarError("no classes given: use --class N (repeatable) or --classes FILE")
    return classes


def _check_classes(classes: list[int], num_classes: int) -> None:
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise FastervarError(f"class index {bad[0]} is out of range: this model has classes 0..{num_classes - 1}")


def model_options(fn):
    """--model / --var-checkpoint / --vae-checkpoint / --random-weights / --device."""
    for opt in reversed([
        click.option("--model", "model_name", metavar="NAME|DIR",
                     help="Named model: fashion-16 (the embedded default), fashion-tiny (small and fast), or "
                          "d16..d36 / tiny / infinity-2b / "
                          "infinity-8b / infinity-tiny with checkpoints or --random-weights; or a model folder "
                          "(config.json + weights, as train-tiny writes)."),
        click.option("--checkpoint", "--var-checkpoint", "var_checkpoint", type=click.Path(),
                     help="Transformer weights: VAR or Infinity (.pth, .safetensors, or Infinity-8B's shard folder)."),
        click.option("--vae-checkpoint", type=click.Path(dir_okay=False), help="VQVAE weights (.pth or .safetensors)."),
        click.option("--random-weights", is_flag=True, help="Seeded random weights (tests and speed benchmarks only)."),
        click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True),
    ]):
        fn = opt(fn)
    return fn


def sampling_options(fn, per_family: bool = False):
    """Guidance, filtering and sampler choice, shared by every command that samples; with
    `per_family`, guidance and top-p default to the family's published values."""
    cfg_help = "Guidance at the last step (linear ramp from 0)."
    cfg_default, top_p_default = 1.5, 0.96
    if per_family:
        cfg_help = "Guidance [default: 1.5 at the last step, ramped from 0, for VAR; 3, constant, for Infinity]."
        cfg_default = top_p_default = None
    for opt in reversed([
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True),
        click.option("--cfg", type=click.FloatRange(min=0), default=cfg_default, show_default=not per_family,
                     help=cfg_help),
        click.option("--top-k", type=click.IntRange(min=0), default=900, show_default=True),
        click.option("--top-p", type=click.FloatRange(0, 1), default=top_p_default, show_default=not per_family,
                     help="[default: 0.96 for VAR, 0.97 (per bit) for Infinity]" if per_family else None),
        click.option("--more-smooth", is_flag=True,
                     help="Soft Gumbel code mixing (upstream's visualisation mode; needs --sampler official)."),
        click.option("--sampler", type=click.Choice(["official", "portable"]), default="portable", show_default=True),
        click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True),
    ]):
        fn = opt(fn)
    return fn


def guidance_options(fn):
    """Guidance and filtering of the portable sampler: what a bundle bakes in."""
    for opt in reversed([
        click.option("--cfg", type=click.FloatRange(min=0), default=1.5, show_default=True,
                     help="Guidance at the last step (linear ramp from 0)."),
        click.option("--top-k", type=click.IntRange(min=0), default=900, show_default=True),
        click.option("--top-p", type=click.FloatRange(0, 1), default=0.96, show_default=True),
    ]):
        fn = opt(fn)
    return fn


def judge_option(fn):
    return click.option("--judge", "judge_dir", type=click.Path(file_okay=False), metavar="DIR",
                        help="Judge with the classifier and real-image statistics `train-tiny --out DIR` wrote for "
                             "its data [default: the shipped Fashion-MNIST judge, for the shipped weights].")(fn)


def _judge(model, judge_dir: str | None, fall_back: bool):
    """The judge for this model (see `pick_judge`); a doubtful default is said on stderr."""
    from .evaluate.judge import pick_judge
    judge, warning = pick_judge(model, judge_dir, fall_back)
    if warning:
        click.echo(f"warning: {warning}", err=True)
    return judge


def _load_profile(spec: str | None):
    if spec is None:
        return None
    from .profiles import resolve
    return resolve(spec)


def _accelerated(model, profile):
    """The model itself, or the model under a profile checked against its config and weights."""
    if profile is None:
        return model
    from .accel.accelerated import AcceleratedModel
    from .calibrate.run import weights_sha256
    from .profile import check_against
    check_against(profile, model.cfg, weights_sha256(model) if profile.model.get("weights_sha256") else None)
    return AcceleratedModel(model, profile)


def _settings(cfg, top_k, top_p, more_smooth, sampler):
    from .models.sampling import SamplingSettings
    return SamplingSettings(cfg=cfg, top_k=top_k, top_p=top_p, more_smooth=more_smooth, sampler=sampler)


def text_options(fn):
    """Prompts and image shape for a text-to-image model (Infinity)."""
    for opt in reversed([
        click.option("--prompt", "prompts", multiple=True, metavar="TEXT", help="A prompt; repeat for more images."),
        click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), help="File of prompts, one per line."),
        click.option("--text-encoder", type=click.Path(file_okay=False), metavar="DIR",
                     help="Flan-T5 folder (config.json, weights, tokenizer.json) to encode the prompts."),
        click.option("--text-embeddings", type=click.Path(dir_okay=False), metavar="FILE.npz",
                     help="Prompts encoded elsewhere: 'embeddings' (N, T, C) float32 zero-padded, 'lengths' (N,)."),
        click.option("--aspect", default="1:1", show_default=True, help="Height:width, snapped to Infinity's templates."),
        click.option("--pn", default="1M", show_default=True, type=click.Choice(["0.06M", "0.25M", "0.60M", "1M"]),
                     help="Pixel budget (1M is 1024x1024 at 1:1)."),
        click.option("--tau", type=click.FloatRange(min=0, min_open=True), default=0.5, show_default=True,
                     help="Logit temperature (Infinity)."),
    ]):
        fn = opt(fn)
    return fn


TEXT_FLAGS = {"prompts": "--prompt", "prompts_file": "--prompts", "text_encoder": "--text-encoder",
              "text_embeddings": "--text-embeddings", "aspect": "--aspect", "pn": "--pn", "tau": "--tau"}


def _is_text_model(model_name: str | None, checkpoint: str | None, text_given: list[str]) -> bool:
    """Text-to-image when the model is named so, when the checkpoint is Infinity's, or, with no
    model named, when prompts are given (the loader then says if the files are not Infinity's)."""
    if model_name is not None:
        return model_name.startswith("infinity")
    if text_given:
        return True
    if checkpoint is None:
        return False
    from .models.infinity_checkpoint import is_infinity_file
    return is_infinity_file(checkpoint)


def _generate_text(model_name, checkpoint, vae_checkpoint, random_weights, device, text_args, seed, cfg, top_k,
                   top_p, sampler, batch_size, out_dir) -> None:
    """`generate` for a text-to-image model: prompts in, one image per prompt."""
    from .models.infinity_checkpoint import resolve_infinity
    from .models.infinity_family import BitSamplingSettings
    from .models.infinity_schedules import parse_aspect, schedule
    from .models.loading import resolve_device
    from .models.prompts import read_prompts, text_batch
    from .models.sampler import generate as run_generate
    from .runtime.images import output_dir, write_pngs

    prompts, prompts_file, text_encoder, embeddings, aspect, pn, tau = text_args
    h_div_w = parse_aspect(aspect)
    schedule(h_div_w, pn)
    settings = BitSamplingSettings(cfg=BitSamplingSettings.cfg if cfg is None else cfg, tau=tau, top_k=top_k,
                                   top_p=BitSamplingSettings.top_p if top_p is None else top_p, sampler=sampler)
    text = text_batch(read_prompts(prompts, prompts_file), text_encoder, embeddings)
    with output_dir(out_dir):
        model = resolve_infinity(model_name, checkpoint, vae_checkpoint, random_weights, resolve_device(device),
                                 h_div_w, pn)
        result = run_generate(model, text, settings, seed=seed, batch_size=batch_size, progress=True)
        paths = write_pngs(result.images.cpu().numpy(), out_dir)
    click.echo(f"wrote {len(paths)} images to {out_dir}")


@main.command()
@model_options
@click.option("--class", "class_ids", type=int, multiple=True, metavar="N", help="Class index; repeat for more images.")
@click.option("--classes", "classes_file", type=click.Path(dir_okay=False), help="File of class indices.")
@text_options
@functools.partial(sampling_options, per_family=True)
@click.option("--profile", "profile_spec", metavar="PROFILE", help="Accelerate with a profile (file or shipped name).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Directory for 0000.png, 0001.png, ...")
def generate(model_name, var_checkpoint, vae_checkpoint, random_weights, device, class_ids, classes_file, prompts,
             prompts_file, text_encoder, text_embeddings, aspect, pn, tau, seed, cfg, top_k, top_p, more_smooth,
             sampler, batch_size, profile_spec, out_dir) -> None:
    """Generate one image per class (VAR) or per prompt (Infinity): the reference sampler, or
    accelerated by --profile (VAR)."""
    from .models.cuda_graphs import fast_path
    from .models.loading import resolve_model
    from .models.sampler import generate as run_generate
    from .runtime.images import output_dir, write_pngs

    text_args = (prompts, prompts_file, text_encoder, text_embeddings, aspect, pn, tau)
    given = click.get_current_context().get_parameter_source
    text_given = [flag for name, flag in TEXT_FLAGS.items() if given(name) is not click.core.ParameterSource.DEFAULT]
    if _is_text_model(model_name, var_checkpoint, text_given):
        if class_ids or classes_file or profile_spec or more_smooth:
            raise FastervarError("--class/--classes/--profile/--more-smooth are for class-conditional VAR models; "
                                 "a text-to-image model takes --prompt/--prompts (profiles for Infinity come later)")
        _generate_text(model_name, var_checkpoint, vae_checkpoint, random_weights, device, text_args, seed, cfg,
                       top_k, top_p, sampler, batch_size, out_dir)
        return
    if text_given:
        raise FastervarError(f"{text_given[0]} is for text-to-image models (--model infinity-*); "
                             f"this is a class-conditional VAR model, which takes --class/--classes")
    classes = _parse_classes(class_ids, classes_file)
    from .models.sampling import SamplingSettings
    settings = _settings(SamplingSettings.cfg if cfg is None else cfg, top_k,
                         SamplingSettings.top_p if top_p is None else top_p, more_smooth, sampler)
    profile = _load_profile(profile_spec)
    with output_dir(out_dir):
        model = resolve_model(model_name, var_checkpoint, vae_checkpoint, random_weights, device)
        _check_classes(classes, model.cfg.var.num_classes)
        runner = fast_path(_accelerated(model, profile), settings)
        result = run_generate(runner, classes, settings, seed=seed, batch_size=batch_size, progress=True)
        paths = write_pngs(result.images.cpu().numpy(), out_dir)
    click.echo(f"wrote {len(paths)} images to {out_dir}")


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
    import json

    from .evaluate.features import load_extractor
    from .evaluate.run import evaluate as run_evaluate
    from .models.loading import resolve_model
    from .runtime.atomic import atomic_path

    settings = _settings(cfg, top_k, top_p, more_smooth, sampler)
    if json_path:
        _check_writable_parent(json_path)
    profile = _load_profile(profile_spec)
    model = resolve_model(model_name, var_checkpoint, vae_checkpoint, random_weights, device)
    judge = _judge(model, judge_dir, fall_back=True)
    ext = load_extractor(features, judge)
    if profile is not None:
        _accelerated(model, profile)
    result = run_evaluate(model, ext, judge, settings, samples_per_class, seed, batch_size, profile)
    result.update(model=model.cfg.name, settings=settings.__dict__, samples_per_class=samples_per_class, seed=seed)
    _print_table(result)
    if json_path:
        with atomic_path(json_path) as tmp:
            tmp.write_text(json.dumps(result, indent=2))
        click.echo(f"wrote {json_path}")


def _check_writable_parent(path: str) -> None:
    """Create the output file's folder if needed, failing early (before any work) if it cannot be."""
    parent = Path(path).resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise FastervarError(f"cannot write {path}: a file stands where its folder should be") from None
    except OSError as exc:
        raise FastervarError(f"cannot write {path}: {exc.strerror or exc}") from None


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


@main.command()
@model_options
@sampling_options
@click.option("--per-class", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--scale", type=click.IntRange(min=1), default=3, show_default=True, help="Pixel upscaling.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True, help="PNG file to write.")
def grid(model_name, var_checkpoint, vae_checkpoint, random_weights, device, seed, cfg, top_k, top_p,
         more_smooth, sampler, batch_size, per_class, scale, out_path) -> None:
    """A sample grid: one row per class, --per-class samples each."""
    from .models.cuda_graphs import fast_path
    from .models.loading import resolve_model
    from .models.sampler import generate as run_generate
    from .runtime.images import save_png, tile_grid

    _check_writable_parent(out_path)
    model = resolve_model(model_name, var_checkpoint, vae_checkpoint, random_weights, device)
    classes = [c for c in range(min(model.cfg.var.num_classes, 10)) for _ in range(per_class)]
    settings = _settings(cfg, top_k, top_p, more_smooth, sampler)
    result = run_generate(fast_path(model, settings), classes, settings, seed=seed, batch_size=batch_size,
                          progress=True)
    save_png(tile_grid(result.images.cpu().numpy(), rows=len(classes) // per_class, scale=scale), out_path)
    click.echo(f"wrote {out_path}")


def _int_list(text: str, what: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise FastervarError(f"{what} must be integers separated by commas, got {text!r}") from None


@main.command()
@model_options
@sampling_options
@click.option("--classes", "classes_spec", default="all", show_default=True,
              help="Calibration prompts: 'all', a list like 0,3,7, or a file of class indices.")
@click.option("--seeds", default="0,1,2,3", show_default=True, help="Seeds per class, e.g. 0,1,2,3.")
@click.option("--target-speedup", type=click.FloatRange(min=1.0), help="Reach this predicted scale-step speedup (see --cost-model), then the best quality.")
@click.option("--max-quality-drop", type=click.FloatRange(0, 1), help="Fastest profile with 1 - paired SSIM below this.")
@click.option("--match-peer", type=click.Choice(list(PEER_NAMES)),
              help="Target that peer's speed (90% of its predicted speedup) at no less than its class accuracy.")
@click.option("--max-accuracy-drop", type=click.FloatRange(0, 1), default=0.02, show_default=True,
              help="Where a judge exists (shipped weights, or --judge): class accuracy may fall at most this far below the baseline's.")
@judge_option
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True, help="The profile JSON to write.")
@click.option("--report-dir", type=click.Path(file_okay=False), help="Report folder [default: beside --out].")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=".fastervar-cache", show_default=True,
              help="Baseline measurements and the latency model are cached here and reused for a new target.")
@click.option("--name", help="Profile name [default: MODEL-calibrated].")
@click.option("--cost-model", type=click.Choice(["latency", "flops"]), default="latency", show_default=True,
              help="Price candidates by a latency model fitted to probe runs timed here, or by FLOPs alone (no timing).")
def calibrate(model_name, var_checkpoint, vae_checkpoint, random_weights, device, seed, cfg, top_k, top_p,
              more_smooth, sampler, batch_size, classes_spec, seeds, target_speedup, max_quality_drop,
              match_peer, max_accuracy_drop, judge_dir, out_path, report_dir, cache_dir, name, cost_model) -> None:
    """Measure the baseline on sample prompts and choose an acceleration profile automatically."""
    from .calibrate.run import calibrate as run_calibrate
    from .calibrate.run import check_sampler
    from .models.loading import resolve_model

    settings = _settings(cfg, top_k, top_p, more_smooth, sampler)
    check_sampler(settings)
    if sum(t is not None for t in (target_speedup, max_quality_drop, match_peer)) != 1:
        raise FastervarError("give exactly one target: --target-speedup X, --max-quality-drop Y or --match-peer NAME")
    seed_list = _int_list(seeds, "--seeds")
    if not seed_list or min(seed_list) < 0:
        raise FastervarError("--seeds must list non-negative integers")
    _check_writable_parent(out_path)
    model = resolve_model(model_name, var_checkpoint, vae_checkpoint, random_weights, device)
    n_cls = model.cfg.var.num_classes
    if classes_spec == "all":
        classes = list(range(n_cls))
    elif Path(classes_spec).is_file():
        classes = _parse_classes((), classes_spec)
    else:
        classes = _int_list(classes_spec, "--classes")
    _check_classes(classes, n_cls)
    out = Path(out_path)
    rdir = Path(report_dir) if report_dir else out.with_name(out.stem + "-report")
    judge = _judge(model, judge_dir, fall_back=False)
    profile, report = run_calibrate(model, classes, seed_list, settings, target_speedup, max_quality_drop, out,
                                    rdir, Path(cache_dir), batch_size, name, max_accuracy_drop, cost_model,
                                    match_peer, judge)
    meas = profile.measured
    click.echo(f"wrote {out} (predicted speedup {meas['predicted_speedup_transformer']:.2f}x on the scale steps, "
               f"{meas['predicted_speedup_total']:.2f}x end to end; measured end to end "
               f"{meas['measured_speedup_total']:.2f}x; paired SSIM {meas['paired_ssim']:.3f})")
    click.echo(f"report: {report}")


@main.command()
@model_options
@click.option("--profile", "profile_spec", metavar="PROFILE", required=True,
              help="Profile to bake in: a file, a shipped name, or 'identity' (the baseline).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Bundle directory to write.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
              help="int8: int8 weights and per-token int8 activations in the transformer's linears, static int8 "
                   "convolutions in the decoder.")
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

    from .calibrate.run import weights_sha256
    from .export.bundle import export_bundle
    from .memory import peak_resident_bytes
    from .models.loading import resolve_model
    from .profile import check_against, identity

    t0 = time.perf_counter()

    settings = _settings(cfg, top_k, top_p, False, "portable")
    profile = None if profile_spec == "identity" else _load_profile(profile_spec)
    _check_bundle_target(out_dir)
    model = resolve_model(model_name, var_checkpoint, vae_checkpoint, random_weights, device)
    profile = profile or identity(model.cfg)
    sha = weights_sha256(model)
    check_against(profile, model.cfg, sha if profile.model.get("weights_sha256") else None)
    path = export_bundle(model, profile, out_dir, settings, precision, max_batch, sha, tensorrt,
                         decoder_precision=decoder_precision, calib_images=calib_images)
    size = sum(f.stat().st_size for f in path.iterdir())
    weights = sum(t.numel() * t.element_size() for part in (model.var, model.vae) for t in part.state_dict().values())
    peak = peak_resident_bytes()
    peak_txt = f", peak memory {peak / 2**30:.2f} GiB ({peak / weights:.1f}x the weights)" if peak else ""
    click.echo(f"wrote bundle {path} ({size / 2**20:.1f} MiB; profile {profile.name}, {precision}) in "
               f"{time.perf_counter() - t0:.0f} s{peak_txt}; the model's weights are {weights / 2**30:.2f} GiB")


def _check_bundle_target(out_dir: str) -> None:
    """Export replaces an old bundle but never a directory that holds anything else."""
    d = Path(out_dir)
    if d.exists() and (not d.is_dir() or (any(d.iterdir()) and not (d / "manifest.json").exists())):
        raise FastervarError(f"--out {out_dir} exists and is not a bundle; choose a new or empty directory")


@main.command()
@click.argument("bundle", type=click.Path())
@click.option("--class", "class_ids", type=int, multiple=True, metavar="N", help="Class index; repeat for more images.")
@click.option("--classes", "classes_file", type=click.Path(dir_okay=False), help="File of class indices.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Directory for 0000.png, ...")
@click.option("--provider", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Chunk size [default: the bundle's max batch].")
@click.option("--threads", type=click.IntRange(min=0), default=0, help="CPU threads per session (0: onnxruntime's default).")
@click.option("--step-graphs", is_flag=True,
              help="Run one engine per step graph instead of the single whole-generation graph (TensorRT plans do).")
@click.option("--prepack", is_flag=True,
              help="With --step-graphs: let onnxruntime repack weights per graph (faster, one weight copy per graph).")
def run(bundle, class_ids, classes_file, seed, out_dir, provider, batch_size, threads, step_graphs, prepack) -> None:
    """Generate with an exported bundle: torch-free, on onnxruntime or TensorRT."""
    from .runtime.images import output_dir, write_pngs
    from .runtime.pipeline import Pipeline

    classes = _parse_classes(class_ids, classes_file)
    with output_dir(out_dir):
        pipe = Pipeline.from_bundle(bundle, provider=provider, threads=threads, prepack=prepack,
                                    chain=False if step_graphs else None)
        result = pipe.generate(classes, seed=seed, batch_size=batch_size)
        paths = write_pngs(result.images, out_dir)
    click.echo(f"wrote {len(paths)} images to {out_dir} ({result.seconds_total:.2f} s on {provider})")


@main.command()
@model_options
@guidance_options
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
@click.option("--images", type=click.IntRange(min=2), default=100, show_default=True,
              help="Prompts, spread evenly over the classes.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--reps", type=click.IntRange(min=1), default=1, show_default=True,
              help="Timed passes over the prompts (quality is judged once); more passes steady a fast model's ratios.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Folder for bench.json, report.md and plots.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write bench.json here.")
def bench(model_name, var_checkpoint, vae_checkpoint, random_weights, device, cfg, top_k, top_p, profile_spec,
          bundle_path, identity_path, no_bundle, compare_bundles, no_peers, compare_specs, provider, judge_dir,
          images, seed, batch_size, reps, out_dir, json_path) -> None:
    """Baseline, accelerated (torch), the bundle and the identity bundle (runtime) and the peers, side by side."""
    import json

    from .bench.command import bench as run_bench
    from .bench.report import attribution_line, equal_speed_table, table
    from .models.loading import resolve_model
    from .runtime.atomic import atomic_path

    if json_path:
        _check_writable_parent(json_path)
    if (bundle_path or identity_path or compare_bundles) and no_bundle:
        raise FastervarError("--bundle/--identity-bundle/--compare-bundle and --no-bundle contradict each other")
    settings = _settings(cfg, top_k, top_p, False, "portable")
    model = resolve_model(model_name, var_checkpoint, vae_checkpoint, random_weights, device)
    if profile_spec == "identity":
        from .profile import identity
        profile = identity(model.cfg)
    else:
        profile = _load_profile(profile_spec) if profile_spec else _default_profile(model)
    _accelerated(model, profile)
    compare = [_load_profile(spec) for spec in compare_specs]
    for other in compare:
        _accelerated(model, other)
    pipelines = {} if no_bundle else _bench_pipelines(model, profile, settings, bundle_path, identity_path, out_dir,
                                                      batch_size, provider, compare_bundles)
    judge = None if random_weights else _judge(model, judge_dir, fall_back=False)
    quality = "none" if random_weights else ("full" if judge else "paired")
    result, report = run_bench(model, profile, pipelines, settings, images, seed, batch_size, Path(out_dir), quality,
                               peers=not no_peers, compare=compare, reps=reps, judge=judge)
    click.echo(table(result))
    if result.get("attribution"):
        click.echo("\n" + attribution_line(result))
    if result.get("equal_speed"):
        click.echo("\nAgainst the peers at equal measured speed (+-10%):\n" + equal_speed_table(result["equal_speed"]))
    if json_path:
        with atomic_path(json_path) as tmp:
            tmp.write_text(json.dumps(result, indent=2))
    click.echo(f"report: {report}")


def _default_profile(model):
    """A shipped model's calibrated profile; else the shipped paper-split template, or one made on
    the spot for configurations without a shipped template."""
    from .accel.presets import paper_split
    from .profiles import shipped
    names = [f"{model.cfg.name}-calibrated", f"{model.cfg.name}-paper-split"]
    name = next((n for n in names if n in shipped()), None)
    return _load_profile(name) if name else paper_split(model.cfg)


def _bench_pipelines(model, profile, settings, bundle_path, identity_path, out_dir, batch_size, provider,
                     compare_bundles=()) -> dict:
    """The given bundles (checked to hold this profile, and the identity profile), or fresh exports
    into OUT/bundle and OUT/bundle-identity; plus `compare_bundles`, each checked to hold this
    model and either profile, named `bundle-PRECISION-PROFILE`."""
    from .bench.command import runtime_variants
    from .calibrate.run import weights_sha256
    from .export.bundle import export_bundle
    from .profile import identity
    sha = None
    for path, made in ((bundle_path, profile), (identity_path, identity(model.cfg))):
        if path is None:
            dest = Path(out_dir) / ("bundle" if made is profile else "bundle-identity")
            _check_bundle_target(str(dest))
            sha = sha or weights_sha256(model)
            export_bundle(model, made, dest, settings, max_batch=batch_size, weights_sha256=sha)
    bundle_path = bundle_path or Path(out_dir) / "bundle"
    pipes = runtime_variants(Path(bundle_path), provider, Path(identity_path or Path(out_dir) / "bundle-identity"))
    made_for = pipes["bundle"].manifest.data["profile"]
    if made_for["json"]["steps"] != profile.to_dict()["steps"]:
        raise FastervarError(f"bundle {bundle_path} was exported with profile {made_for['name']!r}, not {profile.name!r}")
    import json

    from .runtime.pipeline import Pipeline
    for path in compare_bundles:
        pipe = Pipeline.from_bundle(path, provider=provider)
        data = pipe.manifest.data
        if data["model"]["architecture"] != json.loads(json.dumps(model.cfg.to_dict())):
            raise FastervarError(f"--compare-bundle {path} was exported from another model ({data['model']['config']})")
        steps = data["profile"]["json"]["steps"]
        if steps not in (profile.to_dict()["steps"], identity(model.cfg).to_dict()["steps"]):
            raise FastervarError(f"--compare-bundle {path} holds profile {data['profile']['name']!r}, neither "
                                 f"{profile.name!r} nor identity")
        name = f"bundle-{data['precision']}-{'identity' if steps != profile.to_dict()['steps'] else 'profile'}"
        if name in pipes:
            name = f"{name}-{len(pipes)}"
        pipes[name] = pipe
    return pipes


@main.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="demo", show_default=True,
              help="Folder for everything: profile, calibration report, bundle, images, bench report.")
@click.option("--seeds", default="0,1,2,3,4", show_default=True, help="Calibration seeds per class.")
@click.option("--max-quality-drop", type=click.FloatRange(0, 1), default=0.15, show_default=True)
@click.option("--images", type=click.IntRange(min=2), default=100, show_default=True, help="Bench prompts.")
@click.option("--model", "model_name", type=click.Choice(["fashion-16", "fashion-tiny"]), default=None,
              help="Shipped model [default: the embedded one, fashion-16; fashion-tiny is the small, fast one].")
def demo(out_dir, seeds, max_quality_drop, images, model_name) -> None:
    """The main job on the embedded model: calibrate -> export -> run -> bench, into one folder."""
    from .bench.demo import run_demo
    seed_list = _int_list(seeds, "--seeds")
    if not seed_list or min(seed_list) < 0:
        raise FastervarError("--seeds must list non-negative integers")
    summary = run_demo(Path(out_dir), seed_list, max_quality_drop, images, model_name)
    for line in summary:
        click.echo(line)


def _replicas(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise FastervarError(f"--replicas must be a positive integer or auto, got {value!r}")
    return n


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the HTTP proxy binds.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--provider", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu", show_default=True)
@click.option("--replicas", default="1", show_default=True, help="Replicas (one Pipeline each), or 'auto' to autoscale.")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0), default=20.0, show_default=True,
              help="How long a replica waits to fill a batch (up to the bundle's max batch).")
@click.option("--threads", type=click.IntRange(min=0), default=0, help="CPU threads per session (0: onnxruntime's default).")
def serve(bundle, host, port, provider, replicas, batch_wait_ms, threads) -> None:
    """Serve a bundle over HTTP on Ray Serve: POST /generate, GET /healthz, GET /info."""
    from .serve import ServeOptions, serve_bundle

    options = ServeOptions(bundle=bundle, provider=provider, threads=threads, batch_wait_ms=batch_wait_ms)
    click.echo(f"serving {bundle} on http://{host}:{port}/generate (Ctrl-C stops)")
    serve_bundle(options, host, port, _replicas(replicas))


@main.command("generate-batch")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), required=True,
              help="File of class indices; image i is the i-th.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Directory for 000000.png, ...")
@click.option("--concurrency", type=click.IntRange(min=1), default=1, show_default=True, help="Ray Data workers, one Pipeline each.")
@click.option("--provider", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu", show_default=True)
@click.option("--threads", type=click.IntRange(min=0), default=0, help="CPU threads per session (0: onnxruntime's default).")
def generate_batch(bundle, prompts_file, seed, out_dir, concurrency, provider, threads) -> None:
    """Generate many images on Ray Data; rerun the same command to resume (existing images are kept)."""
    from .serve import generate_batch as run_batch

    classes = _parse_classes((), prompts_file)
    written, skipped = run_batch(bundle, classes, seed, out_dir, concurrency, provider, threads)
    click.echo(f"wrote {written} images to {out_dir}" + (f" ({skipped} already there)" if skipped else ""))


@main.group()
def profiles() -> None:
    """The shipped acceleration profiles."""


@profiles.command("list")
def profiles_list() -> None:
    """Name, model, calibrated or not, and predicted scale-step speedup of every shipped profile:
    by FLOPs for all (comparable across rows), and by the latency model where calibration fitted one
    (closer to what the machine it was calibrated on measures)."""
    from .accel.cost import steps_flops
    from .models.configs import get_config
    from .profile import identity
    from .profiles import resolve, shipped
    click.echo(f"{'profile':<32} {'model':<14} {'kind':<11} {'FLOPs':>7} {'latency':>8}  description")
    for name in shipped():
        p = resolve(name)
        cfg = get_config(p.model["config"])
        flops = steps_flops(cfg, identity(cfg), 1) / steps_flops(cfg, p, 1)      # no decoder: scale steps only
        lat = p.measured.get("predicted_speedup_transformer")
        lat_txt = f"{lat:.2f}x" if lat and str(p.measured.get("predicted_by", "")).startswith("latency") else ""
        click.echo(f"{name:<32} {cfg.name:<14} {'calibrated' if p.calibrated else 'template':<11}"
                   f" {f'{flops:.2f}x':>7} {lat_txt:>8}  {p.description[:60]}")


@profiles.command("show")
@click.argument("name")
def profiles_show(name: str) -> None:
    """Print a profile (shipped name or file) as JSON."""
    import json

    from .profiles import resolve
    click.echo(json.dumps(resolve(name).to_dict(), indent=2))


@main.command("train-tiny")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="Fashion-MNIST directory (default: the Debian package's /usr/share/datasets/fashion-mnist).")
@click.option("--work-dir", type=click.Path(file_okay=False), default=None,
              help="Resumable checkpoints and the token cache [default: runs/MODEL].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Assets folder to write [default: the package's own, replacing the shipped model].")
@click.option("--model", "model_name", type=click.Choice(["fashion-tiny", "fashion-16"]), default="fashion-tiny",
              show_default=True, help="Which embedded model to train.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--vae-steps", type=click.IntRange(min=1), default=None,
              help="VQVAE steps [default: 900 for fashion-tiny, 1000 for fashion-16].")
@click.option("--var-steps", type=click.IntRange(min=1), default=None,
              help="VAR steps [default: 3600 for fashion-tiny, 2400 for fashion-16].")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
def train_tiny(data_dir, work_dir, out_dir, model_name, seed, vae_steps, var_steps, device) -> None:
    """Train an embedded model (VQVAE, then VAR) and the evaluation classifier; resumes from --work-dir."""
    from .assets import ROOT
    from .models.loading import resolve_device
    from .train.data import load_split
    from .train.tiny import settings_for, train_all

    load_split("train", data_dir)
    resolve_device(device)
    settings = settings_for(model_name, seed=seed, vae_steps=vae_steps, var_steps=var_steps, device=device)
    summary = train_all(model_name, Path(work_dir or f"runs/{model_name}"), Path(out_dir) if out_dir else ROOT,
                        settings, data_dir)
    for k, v in summary.items():
        click.echo(f"{k:>28}: {v:.4g}")


if __name__ == "__main__":
    main()
