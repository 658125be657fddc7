"""`fastervar calibrate`: measure (cached), split stages, search, then write the profile and its report."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..accel.presets import peers as peer_profiles
from ..errors import FastervarError
from ..evaluate.clip_metrics import ClipFeatures, class_prompts
from ..evaluate.judge import JudgeFiles
from ..models.checkpoint import weights_sha256
from ..models.clip.loading import clip_identity, load_clip
from ..models.protocol import FamilyModel
from ..models.sampling import SamplingSettings
from ..profile import Profile, model_identity
from ..timing import TorchRunner, batches, clock_context, interleaved, speedup
from ..utils.atomic import atomic_dir
from .confidence import DEFAULT_CONFIDENCE, DEFAULT_HOLDOUT, split
from .decision_fit import check_enough, fit_decision, geometry
from .holdout import Limits, confirm, figures, judged, preference
from .latency import FEATURES, cached_clock, cached_latency, warn
from .measure import Measurements, cache_key, measure
from .report import limits_table, write_report
from .search import (
    JUDGED_VERSION,
    Candidate,
    ClipJudging,
    JudgedCache,
    Searcher,
    closest,
    equal_speed_comparison,
    pooled,
    search,
    stage_split,
)


def _clip(model: FamilyModel, r: CalibrationRequest):
    """CLIP's judging for this calibration: the folder loaded on the model's device, and each
    image's prompt text (a text model's prompts; "a photo of a {class name}" for a class model)."""
    per_prompt = (class_prompts(model, r.classes) if r.prompts is None
                  else r.prompt_texts and [r.prompt_texts[c] for c in r.classes])
    texts = per_prompt and [t for _ in r.seeds for t in per_prompt]
    return ClipJudging(ClipFeatures(load_clip(r.clip_dir, model.device)), texts, r.max_clip_drop)


def _digest(bank) -> str:
    """What identifies a prompt set: its embeddings and lengths."""
    from ..utils.hashing import arrays_sha256
    return arrays_sha256([("embeddings", bank.embeddings.numpy()), ("lengths", bank.lengths.numpy())])


def check_sampler(settings: SamplingSettings) -> None:
    """Calibration judges candidates against the baseline image for the same noise: portable only."""
    if settings.sampler != "portable":
        raise FastervarError("calibrate compares every candidate with the baseline on the same noise, which only "
                             "the portable sampler gives; drop --sampler official (the profile it writes applies "
                             "to either sampler)")


def measured_speedups(model: FamilyModel, profile: Profile, classes: Sequence[int], settings: SamplingSettings,
                      batch: int, reps: int = 3, bank=None) -> tuple[float, float]:
    """Baseline/accelerated on the calibration prompts through the timing harness: (scale steps,
    end to end)."""
    from ..accel.accelerated import AcceleratedModel
    runners = {"baseline": TorchRunner(model, settings, prompts=bank),
               "accelerated": TorchRunner(AcceleratedModel(model, profile), settings, prompts=bank)}
    runs = interleaved(runners, batches(list(classes), 0, batch), reps=reps, desc="measuring speed")
    return speedup(runs["baseline"], runs["accelerated"], "steps"), speedup(runs["baseline"], runs["accelerated"])


def verify_speed(measure: Callable[[Profile], tuple[float, float]], chosen: Candidate, tried: list[Candidate],
                 target: float, tries: int = 3,
                 pick: Callable[[list[Candidate]], Candidate | None] = closest) -> tuple[Candidate, float, float]:
    """The latency model prices candidates, the clock decides: while the chosen profile measures
    short of the target on the scale steps, choose again (`pick`: the closest, or the closest that
    holds on the held-out images) among the candidates already judged that are priced faster by as
    much as the model over-priced; where there is none, keep it and say so. Returns the choice and
    its measured (scale-step, end-to-end) speedups."""
    steps, total = measure(chosen.profile)
    for _ in range(tries):
        if steps >= target:
            break
        need = target * chosen.speedup / steps
        faster = pick([c for c in tried if c.meets and c.speedup >= need])
        if faster is None:
            break
        tqdm.write(f"measured {steps:.2f}x on the scale steps, short of {target:g}x: choosing among candidates "
                   f"priced at >= {need:.2f}x")
        chosen = faster
        steps, total = measure(chosen.profile)
    if steps < target:
        tqdm.write(f"warning: the chosen profile measures {steps:.2f}x on the scale steps, short of {target:g}x, "
                   "and no faster candidate keeps the quality limits; timing here is noisy, or the latency "
                   "model needs refitting (delete its file in --cache-dir)")
    return chosen, steps, total


def peer_target(peer: Candidate, base_accuracy: float | None, max_accuracy_drop: float) -> tuple[float, float]:
    """Compete with a peer at its own speed: reach 90% of its predicted speedup (the equal-speed
    band) while keeping at least its class accuracy (and, in `search`, its closeness)."""
    target = round(0.9 * peer.speedup, 3)
    if base_accuracy is not None and peer.class_accuracy is not None:
        max_accuracy_drop = max(0.0, base_accuracy - peer.class_accuracy)
    tqdm.write(f"matching {peer.profile.name}: predicted {peer.speedup:.2f}x here, so target {target:g}x"
               + (f" with class accuracy >= {peer.class_accuracy:.3f}" if peer.class_accuracy is not None else "")
               + f", paired SSIM >= {peer.ssim:.3f}" + (f", feature shift <= {peer.shift:.4f}" if peer.shift is not None else ""))
    return target, max_accuracy_drop


@dataclass
class CalibrationRequest:
    """What a calibration is asked for: the prompts (class labels, or rows of `prompts`, a text
    model's prompt set, each with every seed) and sampling settings, one
    target (`target_speedup`, `max_quality_drop` or `match_peer`, a name in `presets.PEER_NAMES`),
    the limits a candidate must keep, and where the profile, its report and the caches go.
    `judge` (see `evaluate.judge.pick_judge`) adds class accuracy to what a candidate must keep."""

    classes: Sequence[int]
    seeds: Sequence[int]
    settings: SamplingSettings
    out: Path
    report_dir: Path
    cache_dir: Path
    target_speedup: float | None = None
    max_quality_drop: float | None = None
    match_peer: str | None = None
    max_accuracy_drop: float = 0.02
    batch: int = 16
    name: str | None = None
    cost_model: str = "latency"
    judge: JudgeFiles | None = None
    prompts: Any = None                 # a text model's TextBatch; `classes` index its rows
    prompt_texts: list[str] | None = None
    aspects: Sequence[FamilyModel] = ()  # the same weights on other aspect templates, judged too
    fit_decision: bool = False          # a per-image rule (SkipVAR's kind) instead of one plan for all
    clip_dir: Path | None = None        # a CLIP folder: CLIP-feature shift, and with texts the CLIP score
    max_clip_drop: float | None = None  # CLIP score points the profile may lose
    holdout: float = DEFAULT_HOLDOUT    # the share of the images the search never sees (see `confidence.split`)
    confidence: float = DEFAULT_CONFIDENCE   # of each limit's bound on the search images (0: estimates)


def _measurements(model: FamilyModel, r: CalibrationRequest, sha: str, judge, prompt_id: str | None) \
        -> tuple[Measurements, Path]:
    """The baseline's measurements on this model (its aspect), from the cache when they are there."""
    judge_files = r.judge
    key = cache_key(model, r.classes, r.seeds, r.settings, sha, judge_files and str(judge_files.root.resolve()),
                    prompt_id)
    cache = r.cache_dir / f"measure-{key}.npz"
    if cache.exists():
        try:
            m = Measurements.load(cache)
            tqdm.write(f"reusing baseline measurements from {cache}")
            return m, cache
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            warn(f"ignoring unreadable measurement cache {cache} ({str(exc).splitlines()[0] if str(exc) else exc}); "
                 f"measuring again")
    n = len(r.classes) * len(r.seeds)
    with tqdm(total=n, desc="measuring baseline", unit="img") as bar:
        m = measure(model, r.classes, r.seeds, r.settings, judge=judge and judge.features, batch_size=r.batch,
                    progress=bar.update, bank=r.prompts)
    r.cache_dir.mkdir(parents=True, exist_ok=True)
    m.save(cache)
    return m, cache


def calibrate(model: FamilyModel, request: CalibrationRequest) -> tuple[Profile, Path]:
    """Measure (cached), fit the latency model (cached), search, then write the profile and its
    report atomically (both or neither)."""
    r = request
    classes, seeds, settings, batch, cache_dir = r.classes, r.seeds, r.settings, r.batch, r.cache_dir
    target_speedup, max_quality_drop, match_peer = r.target_speedup, r.max_quality_drop, r.match_peer
    max_accuracy_drop, cost_model, name = r.max_accuracy_drop, r.cost_model, r.name
    check_sampler(settings)
    if r.fit_decision:
        if max_quality_drop is None:
            raise FastervarError("--fit-decision labels each image by paired SSIM: give --max-quality-drop")
        check_enough(len(classes), len(seeds))
        geometry(model.num_steps)
    clip = _clip(model, r) if r.clip_dir is not None else None      # a bad folder fails before any work
    torch.manual_seed(0)
    spec = model.spec()
    sha = weights_sha256(model)
    judge_files, judge = r.judge, None
    if judge_files is not None:
        from ..evaluate.features import ClassifierFeatures
        judge = ClassifierFeatures.load(judge_files)
    bank = r.prompts
    prompt_id = None if bank is None else _digest(bank)
    m, cache = _measurements(model, r, sha, judge, prompt_id)
    measured = [_measurements(other, r, sha, judge, prompt_id) for other in r.aspects]
    others = [(other, om) for other, (om, _) in zip(r.aspects, measured)]
    search_images, held_images = split(len(classes) * len(seeds), r.holdout)
    if not held_images:
        warn(f"no image is held out ({len(classes) * len(seeds)} calibration images, --holdout {r.holdout:.2g}): "
             "the profile's figures are the search's own; give more prompts or seeds for a held-out check")

    def judged_cache(images: list[int] | None) -> JudgedCache:
        context = {"judged": JUDGED_VERSION, "batch": batch,
                   "measurements": [cache.stem, *(path.stem for _, path in measured)],
                   **({"clip": clip_identity(r.clip_dir), "clip_texts": clip.texts} if clip else {}),
                   **({"images": images} if images is not None else {})}
        tag = hashlib.sha256(json.dumps(context).encode()).hexdigest()[:8]
        return JudgedCache(cache_dir / f"judged-{cache.stem.removeprefix('measure-')}-{tag}.json", context)

    def searcher_on(images: list[int] | None, **more) -> Searcher:
        s = Searcher(model, m, {}, classes, seeds, settings, batch, judge, latency=latency, bank=bank, aspects=others,
                     judged=judged_cache(images), clip=clip and (clip.subset(images) if images else clip),
                     images=images, confidence=r.confidence, **more)
        s.stages = stages
        return s
    timing_labels = [c for _ in seeds for c in classes][:batch]
    latency = None
    if cost_model == "latency":
        latency, reused = cached_latency(model, timing_labels, settings, cache_dir, cache.stem, bank)
        tqdm.write(("reusing the latency model" if reused else "fitted a latency model")
                   + f" for this machine (probe totals within {latency.fit_error:.0%} of measured)")
    bar = tqdm(desc="searching profiles", unit="cand")
    stages = stage_split(pooled([m, *(om for _, om in others)], [len(m.final_images)] * (1 + len(others))))
    searcher = searcher_on(search_images if held_images else None, on_candidate=lambda c: bar.update())
    held = searcher_on(held_images) if held_images else None
    m = searcher.m                      # pooled over the aspects, when there are several
    try:
        peers = {p.name.removeprefix(f"{spec.config}-"): searcher.score(p) for p in peer_profiles(spec)}
        if match_peer is not None and match_peer not in peers:
            raise FastervarError(f"--match-peer {match_peer}: that peer does not run on {spec.config}; "
                                 f"choose one of {', '.join(peers)}")
        if match_peer is not None:
            target_speedup, max_accuracy_drop = peer_target(peers[match_peer], searcher.base_accuracy,
                                                            max_accuracy_drop)
        rival = peers[match_peer] if match_peer is not None else None
        fitted = None
        if r.fit_decision:
            chosen, tried, fitted = fit_decision(searcher, 1.0 - max_quality_drop, "decision")
        else:
            chosen, tried = search(searcher, target_speedup, max_quality_drop, max_accuracy_drop, rival)
    finally:
        bar.close()
    comparison = equal_speed_comparison(list(peers.values()), tried)
    limits = Limits(target_speedup, max_quality_drop, max_accuracy_drop)
    held_cand = None
    if held is not None and not fitted:
        chosen, held_cand = confirm(held, preference(tried, target_speedup), limits)
    elif held is not None:              # a fitted rule is not chosen among candidates: its figures say how it holds
        held_cand = judged(held, chosen)

    def pick(pool: list[Candidate]) -> Candidate | None:
        if held is None:
            return closest(pool)
        try:
            return confirm(held, preference(pool, target_speedup), limits)[0]
        except FastervarError:
            return None

    clock = cached_clock(lambda p: measured_speedups(model, p, list(classes), settings, batch, bank=bank), cache_dir,
                         cache.stem,
                         clock_context(model, batch))
    if target_speedup is None:
        steps_speed, speed = clock(chosen.profile)
    else:
        chosen, steps_speed, speed = verify_speed(clock, chosen, tried, target_speedup, pick=pick)
        if held is not None and not fitted:
            held_cand = judged(held, chosen)
    held_speed = None
    if held is not None:                # the held-out images' batch shapes, timed the same way
        held_labels = [c for c, _ in held.prompts]
        held_batch = min(batch, len(held_labels))
        held_speed = cached_clock(lambda p: measured_speedups(model, p, held_labels, settings, held_batch, bank=bank),
                                  cache_dir, f"{cache.stem}-held",
                                  {**clock_context(model, held_batch), "images": held_images})(chosen.profile)
    profile = chosen.profile
    profile.name = name or f"{spec.config}-calibrated" + ("-decision" if fitted else "")
    profile.model = model_identity(spec, sha)
    if spec.aspect is not None:          # judged on these aspect templates only
        profile.model["aspects"] = [spec.aspect] + [o.spec().aspect for o in r.aspects]
    profile.calibrated = True
    profile.description = ("a per-image decision (SkipVAR's kind) fitted by fastervar calibrate --fit-decision on the "
                           "calibration prompts" if fitted else
                           "chosen by fastervar calibrate from measurements on the calibration prompts")
    profile.calibration = {
        **({"classes": list(classes)} if bank is None else
           {"prompts": r.prompt_texts or f"{len(bank)} prompt embeddings", "prompts_sha256": prompt_id}),
        "seeds": list(seeds), "settings": settings.__dict__,
        "judge": judge_files.name if judge_files else None,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "target": {"speedup": target_speedup, "max_quality_drop": max_quality_drop, "match_peer": match_peer,
                   "max_accuracy_drop": max_accuracy_drop if searcher.base_accuracy is not None else None,
                   **({"max_clip_drop": r.max_clip_drop} if clip else {})},
        **({"clip": str(r.clip_dir), "baseline_clip_score": searcher.clip.base_score} if clip else {}),
        "measured_stages": stages, "candidates_tried": len(tried),
        "holdout": {"share": r.holdout, "search_images": len(searcher.images), "held_out_images": len(held_images),
                    "rule": "every image at which (i + 1) x share passes an integer, along the seed-major list"},
        "confidence": r.confidence,
        "convergence": {"semantic": m.semantic.tolist(), "structure": m.structure.tolist(),
                        "guidance_tv": m.guidance_tv.tolist()},
        "baseline_class_accuracy": searcher.base_accuracy,
        "equal_speed_vs_peers": comparison,
        "latency_model": latency and latency.to_dict(),
        **({"decision_fit": fitted} if fitted else {}),
    }
    profile.measured = {"predicted_speedup_transformer": chosen.speedup,
                        "predicted_speedup_total": chosen.speedup_total,
                        "predicted_speedup_transformer_flops": chosen.extra["flops_speedup"],
                        "predicted_by": ("latency model fitted on this machine (see calibration.latency_model)"
                                         if latency else "FLOPs"),
                        "measured_speedup_transformer": steps_speed, "measured_speedup_total": speed,
                        "paired_ssim": chosen.ssim, "paired_psnr": chosen.psnr,
                        "class_accuracy": chosen.class_accuracy, "feature_shift": chosen.shift,
                        "search": figures(searcher, chosen),
                        "held_out": held_cand and {**figures(held, held_cand),
                                                   "measured_speedup_transformer": held_speed[0],
                                                   "measured_speedup_total": held_speed[1]},
                        **({"feature_shift_from": "CLIP image embeddings", "clip_score": chosen.clip_score,
                            "clip_score_drop": None if chosen.clip_score is None else searcher.clip.base_score - chosen.clip_score}
                           if clip else {})}
    what = "classes" if bank is None else "prompts"
    header = {"model": spec.config, "weights": sha[:16], "prompts": f"{len(classes)} {what} x {len(seeds)} seeds",
              "target": (f"speedup >= {target_speedup}" if target_speedup else f"quality drop <= {max_quality_drop}")
              + (f" (matching {match_peer})" if match_peer else ""),
              "cost model": ("FLOPs" if latency is None else
                             f"latency model fitted to {len(FEATURES)} counts ({', '.join(FEATURES)}) from probe "
                             f"runs timed on {latency.machine}; probe totals within {latency.fit_error:.0%}"),
              "measured speedup (wall, end to end)": f"{speed:.2f}x",
              "images": (f"{len(searcher.images)} searched, {len(held_images)} held out (--holdout {r.holdout:.2g}); "
                         f"each limit checked on the search images at {r.confidence:g} confidence, then on the "
                         "held-out images" if held_images else
                         f"{len(searcher.images)}, none held out; limits checked at {r.confidence:g} confidence"),
              "baseline class accuracy": searcher.base_accuracy,
              "class accuracy may drop by at most": max_accuracy_drop if searcher.base_accuracy is not None else None,
              **({"CLIP": f"{r.clip_dir} (feature shift on its image embeddings)",
                  "baseline CLIP score": searcher.clip.base_score,
                  "chosen CLIP score": chosen.clip_score,
                  "CLIP score may drop by at most": r.max_clip_drop} if clip else {}),
              **({"decision fit": fitted} if fitted else {})}
    with atomic_dir(r.report_dir) as stage:
        write_report(stage, profile, chosen, tried, m, stages, spec, batch, header, comparison,
                     limits_table(profile.measured, max_quality_drop, max_accuracy_drop
                                  if searcher.base_accuracy is not None else None, r.max_clip_drop if clip else None))
        profile.save(r.out)
    return profile, r.report_dir / "report.md"
