"""Hand-made profiles: the paper's split as uncalibrated templates, and the peers' published recipes.

These exist so that every comparison runs in one harness; calibrated profiles come from
`fastervar calibrate`. Each is marked `calibrated: false` and says where its numbers come from.

The peers published code for Infinity-2B at 1024x1024 only. On a family whose spec gives the
widths their constants key on (`ModelSpec.peer_widths`: Infinity) the constants apply literally,
as their code applies them; on any other schedule (VAR) a recipe is mapped by token share.
"""

from __future__ import annotations

import json
from typing import Any

from ..assets import ROOT
from ..errors import FastervarError
from ..profile import ModelSpec, Profile, StepPlan, as_spec, identity

# FastVAR's and SkipVAR's published settings are keyed on Infinity-2B's 1024x1024 schedule.
INFINITY_1M_SCHEDULE = (1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64)
INFINITY_DEPTH = 32
# FastVAR (fastvar_utils.py, infinity.py): share of tokens removed at widths 32 and 40, the scales of
# widths 48 and 64 skipped, sublayer outputs cached at width 24, pruning only in blocks 3..27.
FASTVAR_REMOVED = {32: 0.4, 40: 0.5}
FASTVAR_SKIPPED = (48, 64)
FASTVAR_CACHE = 24
FASTVAR_LAYERS = (3, 28)
# SkipVAR (infinity.py, autoregressive_infer_cfg_SkipVAR): skip from scale index 12, 11 or 10 on, or
# run those scales on the conditional half alone. Its decision rule picks one per image.
SKIPVAR_POINTS = {"skip1": ("skip", 12), "skip2": ("skip", 11), "skip3": ("skip", 10),
                  "uncond1": ("uncond", 12), "uncond2": ("uncond", 11), "uncond3": ("uncond", 10)}
MAPPED_SKIPVAR = ("skip1", "skip2", "uncond3")       # the points run against a mapped schedule
PAPER_REFINE_SHARE = 0.75                              # the paper's refine scales (40, 48, 64 at 1M) hold 76%


def _tail_shares(tokens: list[int]) -> list[float]:
    """Per step, the share of all tokens held by that step and every later one."""
    return [sum(tokens[k:]) / sum(tokens) for k in range(len(tokens))]


def _stages(s: int, late: list[int], structure_from: int | None = None) -> dict[str, list[int]]:
    early = [k for k in range(s) if k not in late]
    stages = {"semantic": early if structure_from is None else [k for k in early if k < structure_from],
              "structure": [] if structure_from is None else [k for k in early if k >= structure_from],
              "refine": late}
    return {k: v for k, v in stages.items() if v}


def paper_split(model: Any, keep: float = 0.25) -> Profile:
    """FasterVAR's three stages: semantic steps (the first 40%), then structure, then refinement
    without guidance on `keep` of its tokens (random-projection representatives, block outputs
    restored from the last structure step). Refinement is the last four steps on a mapped schedule,
    and on Infinity the paper's: the last steps holding three quarters of the tokens (40, 48 and 64
    at 1M), run on the null prompt alone, which is the paper's "CFG 0"."""
    spec = as_spec(model)
    s = spec.num_steps
    if spec.peer_widths is None:
        refine0, unguided = max(2, s - 4), "cond-only"
    else:
        shares = _tail_shares([spec.tokens(k) for k in range(s)])
        refine0, unguided = max(k for k in range(2, s) if shares[k] >= PAPER_REFINE_SHARE), "null-text"
    sem_end = min(max(1, round(0.4 * s)), refine0)
    p = identity(spec, f"{spec.config}-paper-split")
    p.stages = _stages(s, list(range(refine0, s)), sem_end)
    for k in range(refine0, s):
        p.steps[k] = StepPlan(mode="reduce", cfg=False, unguided=unguided, selector="random_projection",
                              restore_from=refine0 - 1, restore_level="block",
                              **({"prune": 1 - keep} if spec.peer_widths else {"keep": max(1, round(keep * spec.tokens(k)))}))
    p.description = (f"template following the paper's stage split (semantic, structure, refine = the last {s - refine0} "
                     f"steps without guidance on {keep:.0%} representative tokens); not calibrated")
    return p


def upstream_steps(model: Any) -> list[int]:
    """For each step, the Infinity-1M scale (its width) the peers' constants read: the width itself
    where they apply literally, else the scale with the nearest share of the remaining tokens
    (on VAR-256 the last five steps pair one to one: 13 and 16 hold 62.5% of the tokens, 48 and 64
    60.8%)."""
    spec = as_spec(model)
    if spec.peer_widths is not None:
        return list(spec.peer_widths)
    ours = _tail_shares([spec.tokens(k) for k in range(spec.num_steps)])
    theirs = _tail_shares([w * w for w in INFINITY_1M_SCHEDULE])
    return [INFINITY_1M_SCHEDULE[min(range(len(theirs)), key=lambda j: abs(theirs[j] - t))] for t in ours]


def _fastvar_layers(spec: ModelSpec) -> list[int]:
    """Blocks 3..27 as FastVAR's code has them (clipped to the model's depth), or mapped by depth."""
    if spec.peer_widths is not None:
        return [min(FASTVAR_LAYERS[0], spec.depth - 1), min(FASTVAR_LAYERS[1], spec.depth)]
    lo = round(FASTVAR_LAYERS[0] * spec.depth / INFINITY_DEPTH)
    return [lo, max(lo + 1, round(FASTVAR_LAYERS[1] * spec.depth / INFINITY_DEPTH))]


def fastvar(model: Any) -> Profile:
    """FastVAR as its released Infinity code runs: the steps at (or mapped to) widths 32 and 40
    keep the n - int(n * ratio) tokens farthest from the map's mean, rescored from the residual
    stream before every sublayer, per image and guidance half, in blocks 3..27; the other positions
    take the sublayer outputs cached at width 24, area-upsampled; widths 48 and 64 are skipped;
    guidance stays on."""
    spec = as_spec(model)
    s = spec.num_steps
    up = upstream_steps(spec)
    p = identity(spec, f"{spec.config}-fastvar")
    pruned = [k for k in range(1, s) if up[k] in FASTVAR_REMOVED]
    skipped = [k for k in range(1, s) if up[k] in FASTVAR_SKIPPED]
    if len(skipped) >= s - 1:
        skipped = skipped[1:]                              # a profile keeps one step after the first
    cache = [k for k in range(s) if up[k] == FASTVAR_CACHE and (not pruned or k < pruned[0])]
    source = cache[-1] if cache else (pruned[0] - 1 if pruned else 0)
    for k in pruned:
        share = FASTVAR_REMOVED[up[k]]
        amount = {"prune": share} if spec.peer_widths else {"keep": max(1, spec.tokens(k) - int(spec.tokens(k) * share))}
        p.steps[k] = StepPlan(mode="reduce", cfg=True, selector="pivotal_stream", restore_from=source,
                              restore_level="layer", layers=_fastvar_layers(spec), upsample="area", **amount)
    for k in skipped:
        p.steps[k] = StepPlan(mode="skip", cfg=True)
    p.stages = _stages(s, sorted(pruned + skipped))
    how = "its constants applied as its code applies them" if spec.peer_widths else "mapped by token share"
    p.description = (f"FastVAR (Infinity-2B recipe, {how}: remove 40%/50% of tokens by pivotal score per sublayer "
                     "in the middle blocks, area-upsampled cached restoration, skip the last scales); not calibrated")
    return p


def skipvar(model: Any, point: str) -> Profile:
    """One of SkipVAR's static operating points: its last scales (by index on Infinity, by token
    share elsewhere) skipped, or run on the conditional half alone."""
    spec = as_spec(model)
    move, first = SKIPVAR_POINTS[point]
    s = spec.num_steps
    if spec.peer_widths is not None:
        late = list(range(max(first, 1), s))
    else:
        up = upstream_steps(spec)
        late = [k for k in range(1, s) if INFINITY_1M_SCHEDULE.index(up[k]) >= first]
    if move == "skip" and len(late) >= s - 1:
        late = late[1:]                                    # a profile keeps one step after the first
    p = identity(spec, f"{spec.config}-skipvar-{point}")
    for k in late:
        p.steps[k] = StepPlan(mode="skip" if move == "skip" else "full", cfg=False)
    p.stages = _stages(s, late)
    what = f"skip the last {len(late)} step(s)" if move == "skip" else \
        f"the conditional half alone in the last {len(late)} step(s)"
    how = "as its code indexes them" if spec.peer_widths else "mapped from Infinity by token share"
    p.description = f"SkipVAR static operating point {point} ({what}, {how}); not calibrated"
    return p


def skipvar_decision(model: Any) -> Profile:
    """SkipVAR's per-image rule as its code applies it: after step 9 each image skips its last
    steps, or runs them on the conditional half alone, or neither, by the released
    decision_model_ssim_84 constants (shipped as numbers, `assets/decisions/skipvar.json`)."""
    spec = as_spec(model)
    if spec.peer_widths is None:
        raise FastervarError("SkipVAR's decision rule was fitted on Infinity's images at its 13-step schedule; for "
                             f"{spec.config} fit one on your prompts with `fastervar calibrate --fit-decision`")
    rule = json.loads((ROOT / "decisions" / "skipvar.json").read_text())
    if spec.num_steps <= rule["after_step"] + 1:
        raise FastervarError(f"SkipVAR decides after step {rule['after_step']}; this schedule ({spec.schedule}) has "
                             f"{spec.num_steps} steps")
    p = identity(spec, f"{spec.config}-skipvar")
    p.decision = {k: v for k, v in rule.items() if k != "source"}
    late = list(range(min(rule["skip"]["first_step"][c] or spec.num_steps for c in rule["skip"]["first_step"]),
                      spec.num_steps))
    p.stages = _stages(spec.num_steps, late)
    p.description = ("SkipVAR's per-image decision (released decision_model_ssim_84 constants): after step 9, skip "
                     "the last 1-3 steps or run them on the conditional half alone, per image; not calibrated")
    return p


# Templates a user names with --profile; they are built for the model at hand (a recipe depends on
# its schedule and depth). A family prefix, as in `infinity-fastvar`, checks the family too.
TEMPLATES = {"paper-split": paper_split, "fastvar": fastvar, "skipvar": skipvar_decision,
             **{f"skipvar-{point}": (lambda m, point=point: skipvar(m, point)) for point in SKIPVAR_POINTS}}


def template(name: str, model: Any) -> Profile | None:
    """The template `name` built for `model`, or None when `name` is not a template's."""
    spec = as_spec(model)
    family, _, rest = name.partition("-")
    if name in TEMPLATES:
        return TEMPLATES[name](spec)
    if rest in TEMPLATES and family in ("var", "infinity"):
        if family != spec.family:
            raise FastervarError(f"profile {name!r} is a template for {family} models; this model is {spec.family} "
                                 f"({spec.config}): use {rest!r}")
        return TEMPLATES[rest](spec)
    return None


def peers(model: Any) -> list[Profile]:
    """The peers every comparison runs: FastVAR and SkipVAR's static operating points (all six
    and its per-image decision where its code runs as published, the three points that map onto
    other schedules elsewhere)."""
    spec = as_spec(model)
    if spec.peer_widths is None:
        return [fastvar(spec)] + [skipvar(spec, point) for point in MAPPED_SKIPVAR]
    out = [fastvar(spec)] + [skipvar(spec, point) for point in SKIPVAR_POINTS]
    # on a short budget SkipVAR's step indices lie past the schedule: its points change nothing
    # there and its decision, made after step 9, never comes
    out = [p for p in out if not p.is_identity()]
    try:
        out.append(skipvar_decision(spec))
    except FastervarError:
        pass
    return out


PEER_NAMES = ("fastvar",) + tuple(f"skipvar-{point}" for point in SKIPVAR_POINTS) + ("skipvar",)
