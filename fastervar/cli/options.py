"""Options and argument parsing shared by the commands. Torch-free: toolchain helpers import their
layers inside the function."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import FastervarError


def parse_classes(values: tuple[int, ...], path: str | None) -> list[int]:
    """`--class` values, then the indices of `--classes FILE` (commas, spaces, # comments)."""
    classes = list(values)
    if path:
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise FastervarError(f"cannot read --classes file {path}: {getattr(exc, 'strerror', None) or exc}") \
                from None
        for line_no, line in enumerate(text.splitlines(), 1):
            for tok in line.split("#")[0].replace(",", " ").split():
                try:
                    classes.append(int(tok))
                except ValueError:
                    raise FastervarError(f"{path}:{line_no}: {tok!r} is not a class index") from None
    if not classes:
        raise FastervarError("no classes given: use --class N (repeatable) or --classes FILE")
    return classes


def check_classes(classes: list[int], num_classes: int) -> None:
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise FastervarError(f"class index {bad[0]} is out of range: this model has classes 0..{num_classes - 1}")


def int_list(text: str, what: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise FastervarError(f"{what} must be integers separated by commas, got {text!r}") from None


def seed_list(text: str) -> list[int]:
    seeds = int_list(text, "--seeds")
    if not seeds or min(seeds) < 0:
        raise FastervarError("--seeds must list non-negative integers")
    return seeds


def check_writable_parent(path: str) -> None:
    """Create the output file's folder if needed, failing early (before any work) if it cannot be."""
    parent = Path(path).resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise FastervarError(f"cannot write {path}: a file stands where its folder should be") from None
    except OSError as exc:
        raise FastervarError(f"cannot write {path}: {exc.strerror or exc}") from None


def write_json(result: dict, path: str) -> None:
    import json

    from ..utils.atomic import atomic_path
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(result, indent=2))


def model_options(fn):
    """--model / --var-checkpoint / --vae-checkpoint / --random-weights / --device."""
    for opt in reversed([
        click.option("--model", "model_name", metavar="NAME|DIR",
                     help="Named model: fashion-16 (the embedded default), fashion-tiny (small and fast), or "
                          "d16..d36 / tiny / infinity-2b / "
                          "infinity-8b / infinity-tiny / star-256-d16 / star-256-d30 / star-512 / star-1024 / "
                          "star-1024-sampler / star-tiny with checkpoints or --random-weights; or a model folder "
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
        cfg_help = ("Guidance [default: 1.5 at the last step, ramped from 0, for VAR; 3, constant, for Infinity; "
                    "4.5 on VAR's ramp for STAR].")
        cfg_default = top_p_default = None
    for opt in reversed([
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True),
        click.option("--cfg", type=click.FloatRange(min=0), default=cfg_default, show_default=not per_family,
                     help=cfg_help),
        click.option("--top-k", type=click.IntRange(min=0), default=None if per_family else 900,
                     show_default=not per_family, help="[default: 900; 600 for STAR]" if per_family else None),
        click.option("--top-p", type=click.FloatRange(0, 1), default=top_p_default, show_default=not per_family,
                     help="[default: 0.96 for VAR, 0.97 (per bit) for Infinity, 0.8 for STAR]" if per_family
                     else None),
        click.option("--more-smooth", is_flag=True,
                     help="Soft Gumbel code mixing (upstream's visualisation mode; needs --sampler official)."),
        click.option("--sampler", type=click.Choice(["official", "portable"]), default="portable", show_default=True),
        click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True),
    ]):
        fn = opt(fn)
    return fn


def graph_option(fn):
    return click.option("--max-graph-batches", type=click.IntRange(min=1), default=4, show_default=True,
                        help="With --device cuda: batch sizes whose CUDA graphs stay captured at once (the least "
                             "recently used is dropped past it).")(fn)


def guidance_options(fn, per_family: bool = False):
    """Guidance and filtering of the portable sampler: what a bundle bakes in; with `per_family`,
    the family's published values where an option is left out."""
    for opt in reversed([
        click.option("--cfg", type=click.FloatRange(min=0), default=None if per_family else 1.5,
                     show_default=not per_family,
                     help="Guidance [default: 1.5 at the last step, ramped from 0, for VAR; 3, constant, for "
                          "Infinity]." if per_family else "Guidance at the last step (linear ramp from 0)."),
        click.option("--top-k", type=click.IntRange(min=0), default=900, show_default=True),
        click.option("--top-p", type=click.FloatRange(0, 1), default=None if per_family else 0.96,
                     show_default=not per_family,
                     help="[default: 0.96 for VAR, 0.97 (per bit) for Infinity]" if per_family else None),
    ]):
        fn = opt(fn)
    return fn


def judge_option(fn):
    return click.option("--judge", "judge_dir", type=click.Path(file_okay=False), metavar="DIR",
                        help="Judge with the classifier and real-image statistics `train-tiny --out DIR` wrote for "
                             "its data [default: the shipped Fashion-MNIST judge, for the shipped weights].")(fn)


def text_options(fn, several_aspects: bool = False):
    """Prompts and image shape for a text-to-image model (Infinity); with `several_aspects`,
    --aspect repeats (one run per aspect template of the budget)."""
    aspect_help = "Height:width, snapped to Infinity's templates" + ("; repeat for several." if several_aspects else ".")
    for opt in reversed([
        click.option("--prompt", "prompts", multiple=True, metavar="TEXT", help="A prompt; repeat for more images."),
        click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), help="File of prompts, one per line."),
        click.option("--text-encoder", type=click.Path(file_okay=False), metavar="DIR",
                     help="Flan-T5 folder (config.json, weights, tokenizer.json) to encode the prompts; for STAR, "
                          "SD-2.1's text_encoder folder (its tokenizer inside or in ../tokenizer)."),
        click.option("--text-embeddings", type=click.Path(dir_okay=False), metavar="FILE.npz",
                     help="Prompts encoded elsewhere: 'embeddings' (N, T, C) float32 zero-padded, 'lengths' (N,); "
                          "for STAR, 'embeddings' (N, 77, C), 'pooled', 'mask' and the empty prompt's "
                          "'null_embeddings', 'null_pooled', 'null_mask' (1, ...)."),
        click.option("--aspect", multiple=several_aspects, default=("1:1",) if several_aspects else "1:1",
                     show_default=True, help=aspect_help),
        click.option("--pn", default="1M", show_default=True, type=click.Choice(["0.06M", "0.25M", "0.60M", "1M"]),
                     help="Pixel budget (1M is 1024x1024 at 1:1)."),
        click.option("--tau", type=click.FloatRange(min=0, min_open=True), default=0.5, show_default=True,
                     help="Logit temperature (Infinity)."),
    ]):
        fn = opt(fn)
    return fn


def settings(cfg, top_k, top_p, more_smooth, sampler):
    from ..models.sampling import SamplingSettings
    return SamplingSettings(cfg=cfg, top_k=top_k, top_p=top_p, more_smooth=more_smooth, sampler=sampler)


def load_profile(spec: str | None, model=None):
    """A profile file, a shipped profile, or (given the model) a template built for it."""
    if spec is None:
        return None
    if model is not None:
        from ..accel.presets import template
        made = template(spec, model)
        if made is not None:
            return made
    from ..profiles import resolve
    return resolve(spec)


def accelerated(model, profile):
    """The model itself, or the model under a profile checked against its config and weights."""
    if profile is None:
        return model
    from ..accel.accelerated import AcceleratedModel
    from ..models.checkpoint import weights_sha256
    from ..profile import check_against
    check_against(profile, model, weights_sha256(model) if profile.model.get("weights_sha256") else None)
    return AcceleratedModel(model, profile)


def judge(model, judge_dir: str | None, fall_back: bool):
    """The judge for this model (see `pick_judge`); a doubtful default is said on stderr."""
    from ..evaluate.judge import pick_judge
    found, warning = pick_judge(model, judge_dir, fall_back)
    if warning:
        click.echo(f"warning: {warning}", err=True)
    return found
