"""`fastervar calibrate`: measure a model on sample prompts and write an acceleration profile."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import click

from ..accel.presets import PEER_NAMES
from ..calibrate.confidence import DEFAULT_CONFIDENCE, DEFAULT_HOLDOUT, DEFAULT_IMAGES
from ..errors import FastervarError
from .app import main
from .options import (
    check_classes,
    check_writable_parent,
    int_list,
    judge,
    judge_option,
    model_options,
    parse_classes,
    sampling_options,
    seed_list,
    text_options,
)
from .workload import (
    TextArgs,
    Workload,
    is_text_model,
    load_text_models,
    prompt_set,
    refuse_star,
    reject_other_kind,
    sampling,
    text_flags_given,
)


def _classes(spec: str, num_classes: int) -> list[int]:
    """'all', a list like 0,3,7, or a file of class indices."""
    if spec == "all":
        classes = list(range(num_classes))
    elif Path(spec).is_file():
        classes = parse_classes((), spec)
    else:
        classes = int_list(spec, "--classes")
    check_classes(classes, num_classes)
    return classes


def _workload(model_name, checkpoint, vae_checkpoint, random_weights, device, classes_spec: str, text: TextArgs,
              cfg, top_k, top_p, more_smooth, sampler, judge_dir: str | None,
              check: Callable[[int], None]) -> tuple[Workload, list]:
    """The calibration prompts on the model, and the model at any further aspects asked; `check`
    sees the number of prompts as soon as it is known (before a text model's weights load)."""
    from ..models.loading import resolve_model
    refuse_star(model_name, checkpoint, "calibrate")
    text_given = text_flags_given()
    is_text = is_text_model(model_name, checkpoint, text_given)
    given = click.get_current_context().get_parameter_source("classes_spec") is not click.core.ParameterSource.DEFAULT
    reject_other_kind(is_text, text_given, [f for f, v in (("--classes", given), ("--more-smooth", more_smooth),
                                                           ("--judge", judge_dir)) if v])
    if not is_text:
        model = resolve_model(model_name, checkpoint, vae_checkpoint, random_weights, device)
        classes = _classes(classes_spec, model.cfg.var.num_classes)
        check(len(classes))
        return Workload(model, sampling(model, cfg, top_k, top_p, more_smooth, sampler), classes), []
    bank, texts = prompt_set(text)
    check(len(bank))
    first, *others = load_text_models(model_name, checkpoint, vae_checkpoint, random_weights, device, text)
    return Workload(first, sampling(first, cfg, top_k, top_p, sampler=sampler, tau=text.tau), list(range(len(bank))),
                    bank, texts), others


@main.command()
@model_options
@functools.partial(sampling_options, per_family=True)
@click.option("--classes", "classes_spec", default="all", show_default=True,
              help="Calibration prompts of a class-conditional model: 'all', a list like 0,3,7, or a file of "
                   "class indices.")
@functools.partial(text_options, several_aspects=True)
@click.option("--seeds", help="Seeds per prompt, e.g. 0,1,2,3 [default: as many as --calib-images needs].")
@click.option("--calib-images", type=click.IntRange(min=1), metavar="N", default=DEFAULT_IMAGES, show_default=True,
              help="Unless --seeds is given: at least N calibration images, seeds 0, 1, ... per prompt (the "
                   "default is the smallest that can keep a 2-point class-accuracy limit at 0.9 confidence).")
@click.option("--holdout", type=click.FloatRange(0, 0.9), default=DEFAULT_HOLDOUT, show_default="1/3",
              help="The share of the calibration images the search never sees; the chosen profile must keep every "
                   "limit on them too (0: none held out).")
@click.option("--confidence", type=click.FloatRange(0, 0.999), default=DEFAULT_CONFIDENCE, show_default=True,
              help="Each limit is checked against this one-sided confidence bound of the drop on the search images "
                   "(a paired bootstrap over images); 0 checks the estimates.")
@click.option("--target-speedup", type=click.FloatRange(min=1.0), help="Reach this predicted scale-step speedup (see --cost-model), then the best quality.")
@click.option("--max-quality-drop", type=click.FloatRange(0, 1), help="Fastest profile with 1 - paired SSIM below this.")
@click.option("--match-peer", type=click.Choice(list(PEER_NAMES)),
              help="Target that peer's speed (90% of its predicted speedup) at no less than its class accuracy.")
@click.option("--fit-decision", is_flag=True,
              help="Instead of one plan for every image, fit a per-image rule of SkipVAR's kind (skip or run on the "
                   "conditional half the last 1-3 steps) on these prompts: each image is labelled with the fastest "
                   "move keeping paired SSIM >= 1 - --max-quality-drop; needs scikit-learn and at least 8 images.")
@click.option("--max-accuracy-drop", type=click.FloatRange(0, 1), default=0.02, show_default=True,
              help="Where a judge exists (shipped weights, or --judge): class accuracy may fall at most this far below the baseline's.")
@judge_option
@click.option("--clip", "clip_dir", type=click.Path(path_type=Path), metavar="DIR",
              help="A Hugging Face CLIP folder: the distribution measure becomes the shift of CLIP image features, "
                   "and --max-clip-drop bounds the CLIP score against the prompts (class models: 'a photo of a "
                   "{class name}').")
@click.option("--max-clip-drop", type=click.FloatRange(min=0), metavar="POINTS",
              help="With --clip: the CLIP score (0-100) may fall at most this far below the baseline's.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True, help="The profile JSON to write.")
@click.option("--report-dir", type=click.Path(file_okay=False), help="Report folder [default: beside --out].")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=".fastervar-cache", show_default=True,
              help="Baseline measurements, the latency model and timings, cached here per machine, device, dtype "
                   "and batch size, and reused for a new target.")
@click.option("--name", help="Profile name [default: MODEL-calibrated].")
@click.option("--cost-model", type=click.Choice(["latency", "flops"]), default="latency", show_default=True,
              help="Price candidates by a latency model fitted to probe runs timed here, or by FLOPs alone (no timing).")
def calibrate(model_name, var_checkpoint, vae_checkpoint, random_weights, device, seed, cfg, top_k, top_p,
              more_smooth, sampler, batch_size, classes_spec, prompts, prompts_file, text_encoder, text_embeddings,
              aspect, pn, tau, seeds, calib_images, holdout, confidence, target_speedup, max_quality_drop, match_peer, fit_decision, max_accuracy_drop, judge_dir,
              clip_dir, max_clip_drop, out_path, report_dir, cache_dir, name, cost_model) -> None:
    """Measure the baseline on sample prompts and choose an acceleration profile automatically:
    class labels for a class-conditional model, prompts (--prompts with --text-encoder, or
    --text-embeddings) at one or more --aspect of a --pn budget for a text-to-image one."""
    from ..calibrate.decision_fit import check_enough
    from ..calibrate.run import CalibrationRequest, check_sampler
    from ..calibrate.run import calibrate as run_calibrate

    if sum(t is not None for t in (target_speedup, max_quality_drop, match_peer)) != 1:
        raise FastervarError("give exactly one target: --target-speedup X, --max-quality-drop Y or --match-peer NAME")
    if fit_decision and max_quality_drop is None:
        raise FastervarError("--fit-decision labels each image by paired SSIM: give it with --max-quality-drop")
    if max_clip_drop is not None and clip_dir is None:
        raise FastervarError("--max-clip-drop needs --clip DIR (a CLIP folder to score with)")
    sized_by_seeds = seeds is not None
    if sized_by_seeds and click.get_current_context().get_parameter_source("calib_images") \
            is not click.core.ParameterSource.DEFAULT:
        raise FastervarError("give --seeds or --calib-images, not both")
    seeds_ = seed_list(seeds) if sized_by_seeds else [0]
    check_writable_parent(out_path)

    def sized(n: int) -> None:
        """With --calib-images, the seeds that give n prompts at least that many images."""
        if not sized_by_seeds:
            seeds_[:] = list(range(-(-calib_images // n)))
        if fit_decision:
            check_enough(n, len(seeds_))

    work, aspects = _workload(model_name, var_checkpoint, vae_checkpoint, random_weights, device, classes_spec,
                              TextArgs(prompts, prompts_file, text_encoder, text_embeddings, aspect, pn, tau),
                              cfg, top_k, top_p, more_smooth, sampler, judge_dir, sized)
    check_sampler(work.settings)
    model = work.model
    out = Path(out_path)
    request = CalibrationRequest(
        classes=work.labels, seeds=seeds_, settings=work.settings, out=out,
        report_dir=Path(report_dir) if report_dir else out.with_name(out.stem + "-report"),
        cache_dir=Path(cache_dir), target_speedup=target_speedup, max_quality_drop=max_quality_drop,
        match_peer=match_peer, max_accuracy_drop=max_accuracy_drop, batch=batch_size, name=name,
        cost_model=cost_model, judge=None if work.is_text else judge(model, judge_dir, fall_back=False),
        prompts=work.bank, prompt_texts=work.texts, aspects=aspects, fit_decision=fit_decision, clip_dir=clip_dir,
        max_clip_drop=max_clip_drop, holdout=holdout, confidence=confidence)
    profile, report = run_calibrate(model, request)
    meas = profile.measured
    click.echo(f"wrote {out} (predicted speedup {meas['predicted_speedup_transformer']:.2f}x on the scale steps, "
               f"{meas['predicted_speedup_total']:.2f}x end to end; measured end to end "
               f"{meas['measured_speedup_total']:.2f}x; paired SSIM {meas['paired_ssim']:.3f}"
               + (f"; CLIP score {meas['clip_score']:.3f}, {meas['clip_score_drop']:+.3f} from the baseline's"
                  if meas.get("clip_score") is not None else "") + ")")
    held = meas["held_out"]
    if held:
        click.echo(f"held out ({held['images']} images the search never saw): paired SSIM {held['paired_ssim']:.3f}"
                   + (f", class accuracy {held['class_accuracy']:.3f} (baseline {held['baseline_class_accuracy']:.3f})"
                      if held.get("class_accuracy") is not None else "")
                   + (f", CLIP score {held['clip_score']:.3f} (baseline {held['baseline_clip_score']:.3f})"
                      if held.get("clip_score") is not None else "")
                   + f", measured {held['measured_speedup_total']:.2f}x end to end")
    click.echo(f"report: {report}")
