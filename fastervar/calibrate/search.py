"""Choosing a profile from measurements: stage split, a grid over the knobs that set the speed,
then a coordinate search over all of them.

Every candidate is priced by the analytic cost model and judged by running it on the calibration
prompts with the baseline's noise: paired SSIM/PSNR against the baseline images and, where a judge
(classifier) exists, class accuracy and the shift of the judge's mean features. At a speed target
the chosen candidate is the one closest to the baseline on both counts (see `closest`): paired SSIM
says each image is kept, the feature shift that the set is (it predicts the Frechet distance users
evaluate with; SSIM does not). Nothing is hand-picked.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..accel.accelerated import AcceleratedModel
from ..accel.cost import predicted_speedup
from ..errors import FastervarError
from ..evaluate.features import ClassifierFeatures
from ..evaluate.metrics import feature_shift, mean_psnr, ssim
from ..models.protocol import FamilyModel
from ..models.sampling import SamplingSettings
from ..profile import Profile, StepPlan, identity
from ..timing import Batch, TorchRunner
from .confidence import margin, proportion_margin
from .latency import LatencyModel, read_cache, warn, write_cache
from .measure import Measurements

# 1.0 keeps every token: the refine steps then only drop guidance (SkipVAR's unconditional-branch
# move), often the best trade when the last steps still carry structure
KEEP_RATIOS = (0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0)
SELECTORS = ("relevance", "pivotal", "random_projection", "grid")


@dataclass(frozen=True)
class Knobs:
    """One point of the search space."""

    boundary: int              # first refine step
    keep: float                # kept-token ratio on refine steps
    selector: str
    level: str = "block"
    drop_cfg: bool = True
    unguided: str = "cond-only"   # the half an unguided step runs (see `profile.GUIDANCE`)
    factorize: bool = False
    skip_last: bool = False


@dataclass
class Candidate:
    knobs: Knobs | None        # None for a profile that did not come from the search (a peer's)
    profile: Profile
    speedup: float             # predicted scale-step speedup (the fitted latency model, else FLOPs)
    speedup_total: float
    ssim: float
    psnr: float
    class_accuracy: float | None
    shift: float | None = None   # judge-feature shift from the baseline images (lower is closer); CLIP's with --clip
    meets: bool = False
    clip_score: float | None = None   # mean CLIP score against the prompts, with --clip and prompt texts
    extra: dict = field(default_factory=dict)
    # per measure ("ssim", "class_accuracy", "clip_score"): how far its one-sided confidence bound
    # lies from the estimate, on the images it was judged on (see `confidence.margin`)
    margins: dict = field(default_factory=dict)

    def low(self, name: str) -> float | None:
        """A measure's lower confidence bound (the estimate less its margin): what limits check."""
        value = getattr(self, name)
        return None if value is None else value - self.margins.get(name, 0.0)

    def row(self) -> dict:
        k = self.knobs
        knobs = {"profile": self.profile.name} if k is None else {
            "boundary": k.boundary, "keep": k.keep, "selector": k.selector, "level": k.level,
            "drop_cfg": k.drop_cfg, "unguided": k.unguided, "factorize": k.factorize, "skip_last": k.skip_last}
        return {**knobs, "predicted_speedup": self.speedup, "predicted_speedup_total": self.speedup_total,
                "flops_speedup": self.extra.get("flops_speedup", self.speedup),
                "paired_ssim": self.ssim, "paired_psnr": self.psnr, "class_accuracy": self.class_accuracy,
                "feature_shift": self.shift, "clip_score": self.clip_score,
                **{f"{name}_margin": m for name, m in self.margins.items()}, "meets_target": self.meets}


def stage_split(m: Measurements, semantic_at: float = 0.95, structure_at: float = 0.6) -> dict[str, list[int]]:
    """Semantic steps until the judge's view settles, structure until SSIM to the final passes a bar."""
    steps = len(m.semantic)
    sem_end = int(np.argmax(m.semantic >= semantic_at)) if (m.semantic >= semantic_at).any() else steps - 1
    sem_end = min(max(sem_end, 1), steps - 2)
    passed = np.nonzero(m.structure >= structure_at)[0]
    str_end = int(passed[0]) if len(passed) else steps - 2
    str_end = min(max(str_end, sem_end), steps - 2)
    return {"semantic": list(range(sem_end + 1)), "structure": list(range(sem_end + 1, str_end + 1)),
            "refine": list(range(str_end + 1, steps))}


def _useful_rank(effective: float, width: int) -> int | None:
    """The measured rank rounded up to 8, if it is small enough to save work (< width/2)."""
    rank = int(math.ceil(effective / 8) * 8)
    return rank if rank < width // 2 else None


def build_profile(model: FamilyModel, m: Measurements, stages: dict[str, list[int]], k: Knobs, name: str,
                  shares: bool = False) -> Profile:
    """The profile the knobs describe: refine steps boundary..S-1, the measured split before it.
    With `shares`, reduced steps keep a share of tokens (`prune`), which fits every aspect of the
    budget, rather than a count for this grid."""
    spec = model.spec()
    steps = model.num_steps
    p = identity(spec, name)
    semantic = [s for s in stages.get("semantic", []) if s < k.boundary] or [0]
    p.stages = {"semantic": semantic, "structure": list(range(semantic[-1] + 1, k.boundary)),
                "refine": list(range(k.boundary, steps))}
    p.stages = {s: v for s, v in p.stages.items() if v}
    for s in range(k.boundary, steps):
        n = model.tokens_at(s)
        ranks = {}
        if k.factorize:
            for layer in (name for name in spec.linears if name.startswith("ffn.")):
                er = max(m.effective_rank.get(f"{s}/{i}/{layer}", spec.width) for i in range(spec.depth))
                r = _useful_rank(er, spec.width)
                if r:
                    ranks[layer] = r
        if k.skip_last and s == steps - 1:
            p.steps[s] = StepPlan(mode="skip", cfg=False)        # guidance is moot for a step not run
            continue
        keep = max(1, min(n, round(k.keep * n)))
        half = {"unguided": k.unguided} if k.drop_cfg else {}
        if keep == n:                                            # nothing to restore: a full step
            p.steps[s] = StepPlan(mode="full", cfg=not k.drop_cfg, ranks=ranks, **half)
            continue
        rel = m.relevance[s].tolist() if k.selector == "relevance" else None
        size = {"prune": round(1.0 - k.keep, 4)} if shares else {"keep": keep}
        p.steps[s] = StepPlan(mode="reduce", cfg=not k.drop_cfg, selector=k.selector, restore_from=k.boundary - 1,
                              restore_level=k.level, ranks=ranks, relevance=rel, **size, **half)
    return p


def pooled(ms: Sequence[Measurements], counts: Sequence[int]) -> Measurements:
    """Several aspects' measurements as one, for choices that must hold at each: convergence
    curves and input second moments averaged over the images, the largest effective rank of any,
    and no per-position relevance (its positions differ from grid to grid)."""
    if len(ms) == 1:
        return ms[0]
    w = np.asarray(counts, dtype=np.float64) / sum(counts)
    covs = {key: sum(wi * m.input_cov[key] for wi, m in zip(w, ms)) for key in ms[0].input_cov
            if all(key in m.input_cov for m in ms)}
    return Measurements(semantic=sum(wi * m.semantic for wi, m in zip(w, ms)),
                        structure=sum(wi * m.structure for wi, m in zip(w, ms)),
                        guidance_tv=sum(wi * m.guidance_tv for wi, m in zip(w, ms)), relevance=[],
                        input_cov=covs, effective_rank={key: max(m.effective_rank.get(key, 0.0) for m in ms)
                                                        for key in ms[0].effective_rank},
                        final_images=ms[0].final_images)


class ClipJudging:
    """CLIP's view of a candidate's images (see `evaluate.clip_metrics`): the shift of its mean CLIP
    image embedding from the baseline's (the distribution measure, in place of the judge's), and
    with the images' prompt texts their CLIP score, whose drop from the baseline's `max_drop` bounds."""

    def __init__(self, feats, texts: Sequence[str] | None, max_drop: float | None):
        if max_drop is not None and not texts:
            raise FastervarError("--max-clip-drop scores images against their prompts' text: give the prompts "
                                 "(--prompts with --text-encoder; a class model needs class names)")
        self.feats, self.texts, self.max_drop = feats, list(texts) if texts else None, max_drop
        self.base_feats: np.ndarray | None = None
        self.base_scores: np.ndarray | None = None
        self.base_score: float | None = None

    def subset(self, images: Sequence[int]) -> ClipJudging:
        """The same judging on some of the calibration images (a search or held-out set)."""
        return ClipJudging(self.feats, self.texts and [self.texts[i] for i in images], self.max_drop)

    def set_baseline(self, images: list[np.ndarray]) -> None:
        self.base_feats = self.feats.images(images)
        self.base_scores = self._scores(images)
        self.base_score = None if self.base_scores is None else float(self.base_scores.mean())

    def _scores(self, images: list[np.ndarray]) -> np.ndarray | None:
        from ..evaluate.clip_metrics import clip_scores
        if not self.texts:
            return None
        texts = self.texts * (len(images) // len(self.texts))      # every aspect draws the same prompts
        return np.asarray(clip_scores(self.feats, images, texts), dtype=np.float64)

    def judge(self, images: list[np.ndarray]) -> tuple[float, np.ndarray | None]:
        """(feature shift, each image's CLIP score or None)."""
        return feature_shift(self.base_feats, self.feats.images(images)), self._scores(images)


# Bump when a change to the accelerator or the metrics changes what a profile draws or scores: the
# cached judgements of older runs are then judged again.
JUDGED_VERSION = 1


class JudgedCache:
    """Each profile's judgement on the calibration images (paired SSIM per image, PSNR, class
    accuracy, feature shift), written to disk as soon as it is made: a calibration that stops (a
    session ends, a machine is reclaimed) resumes where it was, judging only what it had not.
    One file per measurement (which fixes model, weights, prompts, seeds, settings, device and
    dtype) and batch, and for several aspects their measurements too."""

    def __init__(self, path: Path, context: dict):
        self.path, self.context = path, context
        known = read_cache(path, context) or {}
        self.known = {k: v for k, v in known.items() if _judgement_ok(v)}
        if len(self.known) != len(known):
            warn(f"ignoring {len(known) - len(self.known)} malformed entries of {path}; judging them again")

    @staticmethod
    def plan(profile: Profile) -> str:
        """What decides the images: the steps and any per-image rule (not the name)."""
        d = profile.to_dict()
        return hashlib.sha256(json.dumps([d["steps"], d.get("decision")], sort_keys=True).encode()).hexdigest()[:16]

    def get(self, profile: Profile) -> dict | None:
        return self.known.get(self.plan(profile))

    def put(self, profile: Profile, judgement: dict) -> None:
        self.known[self.plan(profile)] = judgement
        write_cache(self.path, self.context, self.known)


def _judgement_ok(v) -> bool:
    """Well-formed, with the per-image figures the margins need for each measure it has."""
    def numbers(x) -> bool:
        return isinstance(x, list) and bool(x) and all(isinstance(e, (int, float)) for e in x)
    return (isinstance(v, dict) and numbers(v.get("ssims")) and isinstance(v.get("psnr"), (int, float))
            and all(v.get(k) is None or isinstance(v[k], (int, float)) for k in ("class_accuracy", "shift", "clip_score"))
            and (v.get("class_accuracy") is None or numbers(v.get("correct")))
            and (v.get("clip_score") is None or numbers(v.get("clip_scores"))))


class Searcher:
    """Evaluates candidates on the calibration prompts against the measured baseline. `aspects`
    adds the same weights on other aspect templates of the budget, each with its measurements: a
    candidate then keeps a share of tokens (fitting every aspect) and is judged on every image of
    every aspect. `images` picks positions of the calibration list (a search or held-out set; all
    by default), each image keeping the noise of its position; `confidence` sets the margins that
    each candidate's measures carry (0: none)."""

    def __init__(self, model: FamilyModel, m: Measurements, stages: dict[str, list[int]], classes: Sequence[int],
                 seeds: Sequence[int], settings: SamplingSettings, batch: int,
                 judge: ClassifierFeatures | None,
                 on_candidate: Callable[[Candidate], None] | None = None, latency: LatencyModel | None = None,
                 bank=None, aspects: Sequence[tuple[FamilyModel, Measurements]] = (),
                 judged: JudgedCache | None = None, clip: ClipJudging | None = None,
                 images: Sequence[int] | None = None, confidence: float = 0.0):
        prompts = [(c, s) for s in seeds for c in classes]
        self.images = list(range(len(prompts)) if images is None else images)
        self.confidence = confidence
        self.parts = [(model, m), *aspects]
        self.base_images = [pm.final_images[self.images] for _, pm in self.parts]
        self.judged = judged
        self.clip = clip
        self.model, self.stages, self.settings, self.batch = model, stages, settings, batch
        self.m = pooled([pm for _, pm in self.parts], [len(pm.final_images) for _, pm in self.parts])
        self.shares = bool(aspects)
        self.bank = bank                  # a text model's prompt set: `classes` index its rows
        self.latency = latency
        self.prompts = [prompts[i] for i in self.images]
        # the measurement run keyed image i's noise by (its seed, its position in the prompt list)
        keyed = [(prompts[i][0], (prompts[i][1], i)) for i in self.images]
        self.work = [Batch(tuple(c for c, _ in keyed[lo:lo + batch]), tuple(k for _, k in keyed[lo:lo + batch]), 0)
                     for lo in range(0, len(keyed), batch)]
        if judge is not None and aspects:
            raise FastervarError("a judge scores one image shape: calibrate with a judge on one aspect")
        self.judge = judge
        self.on_candidate = on_candidate
        self.seen: dict[Knobs, Candidate] = {}
        self.by_plan: dict[str, Candidate] = {}     # knobs that build the same steps share one run
        self.base_profile = identity(model)
        self.labels = np.array([c for c, _ in self.prompts])
        self.base_accuracy = self.base_features = self.base_correct = None
        if judge is not None:
            self.base_features, classes_seen = judge.features_and_classes(self.base_images[0])
            self.base_correct = (classes_seen == self.labels).astype(np.float64)
            self.base_accuracy = float(self.base_correct.mean())
        if clip is not None:
            clip.set_baseline([im for base in self.base_images for im in base])

    @property
    def selectors(self) -> tuple[str, ...]:
        """The selectors a candidate may use: relevance is measured per grid position, so not
        across aspects."""
        return tuple(s for s in SELECTORS if not (self.shares and s == "relevance"))

    @property
    def halves(self) -> tuple[str, ...]:
        """The halves an unguided step may run: the conditional one, and for a text model also the
        null prompt's (the paper's "CFG 0" on Infinity's guidance formula)."""
        return ("cond-only", "null-text") if self.model.spec().text[0] else ("cond-only",)

    def build(self, k: Knobs, name: str) -> Profile:
        return build_profile(self.model, self.m, self.stages, k, name, shares=self.shares)

    def _images(self, profile: Profile) -> list[tuple[np.ndarray, np.ndarray]]:
        """(the profile's images, the baseline's) per aspect, each image with the noise the
        measurement run gave it."""
        out = []
        for (model, _), base in zip(self.parts, self.base_images):
            run = TorchRunner(AcceleratedModel(model, profile, self._covariances(profile)), self.settings,
                              prompts=self.bank)
            out.append((np.concatenate([run(b).images for b in self.work]), base))
        return out

    def _covariances(self, profile: Profile) -> dict:
        import torch
        covs = {}
        for s, plan in enumerate(profile.steps):
            for layer in plan.ranks:
                for i in range(self.model.depth):
                    c = self.m.input_cov.get(f"{s}/{i}/{layer}")
                    if c is not None:
                        covs[(i, layer)] = torch.from_numpy(c).float().to(self.model.device)
        return covs

    def evaluate(self, k: Knobs) -> Candidate:
        if k in self.seen:
            return self.seen[k]
        profile = self.build(k, "candidate")
        plan = json.dumps(profile.to_dict()["steps"], sort_keys=True)
        if plan in self.by_plan:
            self.seen[k] = self.by_plan[plan]
            return self.seen[k]
        cand = self.score(profile, k)
        self.seen[k] = self.by_plan[plan] = cand
        if self.on_candidate is not None:
            self.on_candidate(cand)
        return cand

    def predict(self, profile: Profile) -> tuple[dict, dict]:
        """(price, FLOPs prediction) of a profile, without running it: cheap enough to plan with."""
        spec = self.model.spec()
        flops = predicted_speedup(spec, self.base_profile, profile, self.batch)
        return (flops if self.latency is None else self.latency.speedup(spec, self.base_profile, profile)), flops

    def score(self, profile: Profile, knobs: Knobs | None = None) -> Candidate:
        """Price and judge any profile (a candidate, or a peer's recipe) on the calibration prompts.
        The price is the latency model's when there is one (time on this machine), else FLOPs."""
        sp, flops = self.predict(profile)
        j = self.judged.get(profile) if self.judged is not None else None
        if j is None:
            j = self._judge(profile)
            if self.judged is not None:
                self.judged.put(profile, j)
        ssims = np.asarray(j["ssims"])
        drops = {"ssim": 1.0 - ssims}
        if j.get("clip_score") is not None:
            drops["clip_score"] = self.clip.base_scores - np.asarray(j["clip_scores"])
        margins = {name: margin(d, self.confidence) for name, d in drops.items()}
        if j["class_accuracy"] is not None:      # the baseline's own images: nothing to be unsure of
            margins["class_accuracy"] = 0.0 if ssims.min() >= 1.0 else \
                proportion_margin(self.base_correct, np.asarray(j["correct"]), self.confidence)
        return Candidate(knobs, profile, sp["transformer"], sp["total"], float(ssims.mean()), j["psnr"],
                         j["class_accuracy"], j["shift"], clip_score=j.get("clip_score"),
                         extra={"flops_speedup": flops["transformer"], "per_image_ssim": ssims},
                         margins=margins)

    def _judge(self, profile: Profile) -> dict:
        """Run the profile on the calibration prompts and compare with the baseline's images."""
        pairs = self._images(profile)
        acc = shift = correct = scores = None
        if self.judge is not None:
            feats, classes_seen = self.judge.features_and_classes(pairs[0][0])
            correct = (classes_seen == self.labels).astype(float).tolist()
            acc = float(np.mean(correct))
            shift = float(feature_shift(self.base_features, feats))
        ssims = np.concatenate([ssim(imgs, base) for imgs, base in pairs])
        psnrs = [mean_psnr(imgs, base) * len(imgs) for imgs, base in pairs]
        if self.clip is not None:       # CLIP's view of the distribution replaces the judge's
            shift, scores = self.clip.judge([im for imgs, _ in pairs for im in imgs])
        return {"ssims": [float(x) for x in ssims], "psnr": float(sum(psnrs) / len(ssims)),
                "class_accuracy": acc, "shift": shift, "correct": correct,
                "clip_score": None if scores is None else float(scores.mean()),
                "clip_scores": None if scores is None else scores.tolist()}

    @property
    def clip_limit(self) -> tuple[float, float] | None:
        """(baseline CLIP score, the most it may drop), when a CLIP limit is set."""
        c = self.clip
        return None if c is None or c.max_drop is None else (c.base_score, c.max_drop)


def meets(c: Candidate, target_speedup: float | None, max_drop: float | None, base_accuracy: float | None,
          max_accuracy_drop: float, rival: Candidate | None = None,
          clip_limit: tuple[float, float] | None = None) -> bool:
    """The target: a speedup to reach, or a paired-SSIM drop not to exceed; never lose class accuracy;
    with a rival (the peer `--match-peer` names), be at least as close as it on SSIM and feature shift;
    with `clip_limit` (baseline CLIP score, largest drop), keep the CLIP score. Each limit is
    checked against the drop's upper confidence bound (`Candidate.low`), not its estimate."""
    if base_accuracy is not None and c.class_accuracy is not None and c.low("class_accuracy") < base_accuracy - max_accuracy_drop:
        return False
    if clip_limit is not None and c.clip_score is not None and c.low("clip_score") < clip_limit[0] - clip_limit[1]:
        return False
    if rival is not None and (c.ssim < rival.ssim or (c.shift is not None and rival.shift is not None
                                                      and c.shift > rival.shift)):
        return False
    if target_speedup is not None:
        return c.speedup >= target_speedup
    return (1.0 - c.low("ssim")) <= max_drop


def ranked(cands: Sequence[Candidate]) -> list[Candidate]:
    """Candidates from the closest to the baseline on paired SSIM and judge-feature shift together:
    the lowest sum of their two ranks, then the higher SSIM. Ranks, because the two have no common
    scale; SSIM alone where no judge measured the shift."""
    if any(c.shift is None for c in cands):
        return sorted(cands, key=lambda c: -c.ssim)
    by_ssim = {id(c): r for r, c in enumerate(sorted(cands, key=lambda c: -c.ssim))}
    by_shift = {id(c): r for r, c in enumerate(sorted(cands, key=lambda c: c.shift))}
    return sorted(cands, key=lambda c: (by_ssim[id(c)] + by_shift[id(c)], -c.ssim))


def closest(cands: Sequence[Candidate]) -> Candidate | None:
    """The first of `ranked`, or None."""
    return next(iter(ranked(cands)), None)


def search(s: Searcher, target_speedup: float | None, max_drop: float | None,
           max_accuracy_drop: float = 0.02, rival: Candidate | None = None) -> tuple[Candidate, list[Candidate]]:
    """Grid over the speed knobs, then coordinate search; returns (chosen, every candidate tried).
    `rival` (see `meets`) is a peer to beat on both closeness measures."""
    if (target_speedup is None) == (max_drop is None):
        raise FastervarError("give exactly one target: --target-speedup or --max-quality-drop")
    steps = s.model.num_steps
    first_refine = s.stages["refine"][0] if s.stages.get("refine") else steps - 1
    earliest = max(2, first_refine - 1)
    if target_speedup is not None:
        earliest = reachable_boundary(s, earliest, target_speedup)
    boundaries = sorted({*range(earliest, first_refine + 1), min(steps - 1, first_refine + 1)})

    def scorer(closeness: Callable[[Candidate], float]) -> Callable[[Candidate], tuple]:
        def score(c: Candidate) -> tuple:
            ok = c.meets = meets(c, target_speedup, max_drop, s.base_accuracy, max_accuracy_drop, rival, s.clip_limit)
            if target_speedup is not None:      # reach the speed, then stay as close as possible
                fast = c.speedup >= target_speedup
                return (ok, fast, closeness(c) if fast else c.speedup)
            return (ok, c.speedup if ok else c.ssim)
        return score

    axes = (("boundary", boundaries), ("keep", KEEP_RATIOS), ("selector", s.selectors),
            ("level", ("block", "layer", "latent")), ("drop_cfg", (True, False)), ("unguided", s.halves),
            ("factorize", (False, True)), ("skip_last", (False, True)))
    # every boundary x kept share x skipping the last step first: one knob at a time from a single
    # start misses moves that need two (dropping guidance over more steps while keeping every token)
    grid = [s.evaluate(Knobs(boundary=b, keep=k, selector=s.selectors[0], skip_last=skip))
            for b in boundaries for k in KEEP_RATIOS for skip in (False, True)]
    # then climb one knob at a time, towards SSIM and (with a judge) towards a small feature shift,
    # so that both neighbourhoods are in the pool the choice is made from
    climbs = [lambda c: c.ssim]
    if target_speedup is not None and (s.judge is not None or s.clip is not None):
        climbs.append(lambda c: -c.shift)
    for closeness in climbs:
        score = scorer(closeness)
        best = max(grid, key=score)
        for _ in range(2):
            for field_name, values in axes:
                for v in values:
                    cand = s.evaluate(replace(best.knobs, **{field_name: v}))
                    if score(cand) > score(best):
                        best = cand
    tried = list(s.by_plan.values())
    for c in tried:
        c.meets = meets(c, target_speedup, max_drop, s.base_accuracy, max_accuracy_drop, rival, s.clip_limit)
    if target_speedup is not None:
        best = closest([c for c in tried if c.meets]) or best
    if not best.meets:
        msg = _unmet_message(tried, target_speedup, max_drop, s.base_accuracy, max_accuracy_drop, s.clip_limit)
        if rival is not None:
            msg += f" (and none is as close to the baseline as {rival.profile.name} on both SSIM and feature shift)"
        raise FastervarError(msg)
    return best, tried


def reachable_boundary(s: Searcher, earliest: int, target_speedup: float) -> int:
    """Move the first refine step earlier until reducing alone (fewest kept tokens, no guidance,
    the last step still run) is priced at the target. Skipping the last step often reaches a
    speed from a late boundary, but at a cost in detail; reducing over more steps is the other
    way there, and the search can only weigh the two if both are in its space."""
    fastest = Knobs(boundary=earliest, keep=KEEP_RATIOS[0], selector="grid")
    while earliest > 2:
        price, _ = s.predict(s.build(replace(fastest, boundary=earliest), "probe"))
        if price["transformer"] >= target_speedup:
            break
        earliest -= 1
    return earliest


def with_margin(c: Candidate, name: str) -> str:
    """A measure as 'estimate' or 'estimate -margin' (its lower confidence bound's distance)."""
    m = c.margins.get(name, 0.0)
    return f"{getattr(c, name):.3f}" + (f" -{m:.3f}" if m > 0 else "")


def _describe(c: Candidate) -> str:
    acc = f", class accuracy {with_margin(c, 'class_accuracy')}" if c.class_accuracy is not None else ""
    acc += f", CLIP score {with_margin(c, 'clip_score')}" if c.clip_score is not None else ""
    return f"predicted speedup {c.speedup:.2f}x at paired SSIM {with_margin(c, 'ssim')}{acc}"


def _unmet_message(tried: list[Candidate], target_speedup: float | None, max_drop: float | None,
                   base_accuracy: float | None, max_accuracy_drop: float,
                   clip_limit: tuple[float, float] | None = None) -> str:
    """Say which half of the target failed: the nearest candidate on each side of it."""
    floor = None if base_accuracy is None else base_accuracy - max_accuracy_drop
    clip_floor = None if clip_limit is None else clip_limit[0] - clip_limit[1]
    want = f"speedup {target_speedup:g}x" if target_speedup is not None else f"quality drop <= {max_drop:g}"
    if floor is not None:
        want += f" with class accuracy >= {floor:.3f}"
    if clip_floor is not None:
        want += f" with CLIP score >= {clip_floor:.3f}"
    head = f"no candidate meets the target ({want}); "
    if floor is None and clip_floor is None:
        closest = max(tried, key=lambda c: c.speedup if target_speedup is not None else c.ssim)
        return head + "closest: " + _describe(closest)
    accurate = [c for c in tried if (floor is None or c.class_accuracy is None or c.low("class_accuracy") >= floor)
                and (clip_floor is None or c.clip_score is None or c.low("clip_score") >= clip_floor)]
    if target_speedup is not None:
        near = [c for c in tried if c.speedup >= target_speedup]
        parts = []
        if accurate:
            parts.append("fastest within the accuracy limit: " + _describe(max(accurate, key=lambda c: c.speedup)))
        if near:
            parts.append(f"most accurate at >= {target_speedup:g}x: "
                         + _describe(max(near, key=lambda c: (c.low("class_accuracy") or 0.0, c.low("clip_score") or 0.0,
                                                              c.ssim))))
        return head + "; ".join(parts or ["closest: " + _describe(max(tried, key=lambda c: c.speedup))])
    pool = accurate or tried
    return head + "closest: " + _describe(max(pool, key=lambda c: c.low("ssim")))


def equal_speed_comparison(peers: list[Candidate], tried: list[Candidate], tolerance: float = 0.1) -> list[dict]:
    """For each peer, our closest candidate to the baseline (see `closest`) within +-tolerance of
    its predicted speed."""
    rows = []
    for peer in peers:
        near = [c for c in tried if abs(c.speedup / peer.speedup - 1) <= tolerance]
        ours = closest(near)
        row = {"peer": peer.profile.name}
        for side, c in (("peer", peer), ("ours", ours)):
            for key, attr in (("speedup", "speedup"), ("ssim", "ssim"), ("psnr", "psnr"),
                              ("class_accuracy", "class_accuracy"), ("feature_shift", "shift")):
                row[f"{side}_{key}"] = None if c is None else getattr(c, attr)
        rows.append(row)
    return rows
