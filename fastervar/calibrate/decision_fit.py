"""`calibrate --fit-decision`: a per-image rule of SkipVAR's kind, fitted on the user's model and
prompts as SkipVAR fitted its own.

Every calibration image is run with each move SkipVAR chooses between (skip the last 1, 2 or 3
steps; run them on the conditional half alone) on the baseline's noise, and labelled with the
fastest move whose image keeps paired SSIM with the baseline at the threshold (0 where none
does). The two features SkipVAR reads (`decision_rule.features`) come from the baseline's latent
after the decision step and the step before. A StandardScaler and a multinomial LogisticRegression
per rule (skip, then uncond for images the skip rule leaves alone) are fitted with scikit-learn,
and their numbers, not a pickle, go into the profile's `decision`; applying it needs numpy only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..accel.accelerated import preview_features
from ..decision_rule import Decision
from ..errors import FastervarError
from ..models.sampler import generate_batch
from ..profile import Profile, StepPlan, identity
from .search import Candidate, Searcher

MOVES = (1, 2, 3)              # class c moves the last c steps, as SkipVAR's classes do
FREQ_RATIO = 0.4               # SkipVAR's low-frequency circle
MIN_IMAGES = 8                 # below this a two-feature, four-class rule is a guess
MIN_PROMPTS = 2


def check_enough(prompts: int, seeds: int) -> None:
    """Refuse before any work when the calibration set is too small to fit a rule from."""
    if prompts < MIN_PROMPTS or prompts * seeds < MIN_IMAGES:
        raise FastervarError(f"--fit-decision needs at least {MIN_PROMPTS} prompts and {MIN_IMAGES} images (prompts x "
                             f"seeds) to fit its rules; got {prompts} prompt(s) x {seeds} seed(s)")


def geometry(steps: int) -> dict[str, int]:
    """When the rule decides and what it previews: SkipVAR's positions (decide after the step
    before the earliest move, compare with the one before that, preview at step 4) on this schedule."""
    after = steps - max(MOVES) - 1
    if after < 1:
        raise FastervarError(f"--fit-decision moves the last {max(MOVES)} steps and decides before them: the schedule "
                             f"needs at least {max(MOVES) + 2} steps, this one has {steps}")
    return {"after_step": after, "compare_step": after - 1, "preview_step": min(4, after)}


def move_profile(searcher: Searcher, move: str, c: int) -> Profile:
    """Every image takes one move: the last `c` steps skipped, or run on the conditional half."""
    spec = searcher.model.spec()
    s = spec.num_steps
    p = identity(spec, f"{spec.config}-{move}{c}")
    for k in range(s - c, s):
        p.steps[k] = StepPlan(mode="skip" if move == "skip" else "full", cfg=False)
    return p


@torch.no_grad()
def decision_features(searcher: Searcher, where: dict[str, int]) -> np.ndarray:
    """(N, 2) SkipVAR's features of every calibration image, read from the baseline's latents."""
    rows = []
    for model, _ in searcher.parts:
        for batch in searcher.work:
            seen: dict[int, torch.Tensor] = {}

            def watch(k: int, state: Any, out: Any, seen: dict = seen) -> None:
                if k in (where["compare_step"], where["after_step"]):
                    seen[k] = state.f_hat.clone()

            inputs = torch.tensor(batch.labels, device=model.device) if searcher.bank is None \
                else searcher.bank.rows(list(batch.labels))
            generate_batch(model, inputs, searcher.settings, batch.keys, on_step=watch)
            p = where["preview_step"]
            rows.append(preview_features(model, seen[where["after_step"]], seen[where["compare_step"]], p, FREQ_RATIO))
    return np.concatenate(rows)


def labels(per_move: dict[int, np.ndarray], threshold: float) -> np.ndarray:
    """Each image's fastest move (the largest c) whose paired SSIM stays at the threshold; 0 if none."""
    n = len(next(iter(per_move.values())))
    out = np.zeros(n, dtype=int)
    for c in sorted(per_move):
        out[per_move[c] >= threshold] = c
    return out


def fit_rule(x: np.ndarray, y: np.ndarray, first_step: dict[int, int]) -> dict[str, Any]:
    """StandardScaler + multinomial LogisticRegression as numbers, in the form `Rule` reads: one
    coefficient row per class (a two-class fit's single row becomes [0, w]; one class, a constant)."""
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise FastervarError("--fit-decision needs scikit-learn: pip install 'fastervar[toolchain]'") from None
    scaler = StandardScaler().fit(x)
    classes = sorted(set(y.tolist()))
    if len(classes) == 1:
        coef, intercept = np.zeros((1, x.shape[1])), np.zeros(1)
    else:
        clf = LogisticRegression(max_iter=1000).fit(scaler.transform(x), y)
        coef, intercept = clf.coef_, clf.intercept_
        if len(classes) == 2:
            coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.array([0.0, intercept[0]])
    return {"scaler": {"mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist()},
            "model": {"classes": classes, "coef": coef.tolist(), "intercept": intercept.tolist()},
            "first_step": {str(c): first_step[c] for c in classes}}


def fit_decision(searcher: Searcher, threshold: float, name: str) -> tuple[Candidate, list[Candidate], dict]:
    """The fitted decision as a profile, scored on the calibration prompts; the moves' candidates;
    and what the fit saw (labels per class, how often the rule picks each image's label)."""
    spec = searcher.model.spec()
    steps = spec.num_steps
    where = geometry(steps)
    x = decision_features(searcher, where)
    tried, y, first = [], {}, {0: 0, **{c: steps - c for c in MOVES}}
    price = {("none", 0): (1.0, 1.0, 1.0)}      # (scale steps, end to end, FLOPs) predicted speedup of each move
    for move in ("skip", "uncond"):
        per_move = {}
        for c in MOVES:
            cand = searcher.score(move_profile(searcher, move, c))
            tried.append(cand)
            per_move[c] = cand.extra["per_image_ssim"]
            price[(move, first[c])] = (cand.speedup, cand.speedup_total, cand.extra["flops_speedup"])
        y[move] = labels(per_move, threshold)
    decision = {**where, "freq_ratio": FREQ_RATIO,
                "skip": fit_rule(x, y["skip"], first), "uncond": fit_rule(x, y["uncond"], first)}
    rule = Decision.from_profile(decision)
    p = identity(spec, name)
    p.decision = decision
    late = list(range(steps - max(MOVES), steps))
    p.stages = {"semantic": list(range(late[0])), "refine": late}
    chosen = searcher.score(p)
    # the price of a per-image rule: the moves it picks here, their times per image averaged
    picked = np.array([price[mv] for mv in rule.moves(x)])
    chosen.speedup, chosen.speedup_total, chosen.extra["flops_speedup"] = (1.0 / (1.0 / picked).mean(0)).tolist()
    report = {"threshold_ssim": threshold, "images": len(x),
              **{f"{move}_labels": {str(c): int((y[move] == c).sum()) for c in (0, *MOVES)} for move in y},
              "skip_rule_agrees": float((rule.skip.predict(x) == y["skip"]).mean()),
              "uncond_rule_agrees": float((rule.uncond.predict(x) == y["uncond"]).mean())}
    return chosen, tried, report
