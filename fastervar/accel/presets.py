"""Hand-made profiles: the paper's split as uncalibrated templates, and the peers' published recipes.

These exist so that every comparison runs in one harness; calibrated profiles come from
`fastervar calibrate`. Each is marked `calibrated: false` and says where its numbers come from.
"""

from __future__ import annotations

from ..models.var.configs import ModelConfig
from ..profile import Profile, StepPlan, identity


def paper_split(cfg: ModelConfig, keep: float = 0.25) -> Profile:
    """FasterVAR's three stages on any schedule: the first 40% of steps semantic, then structure
    until the last four, which refine without guidance on `keep` of their tokens (random-projection
    representatives, block outputs restored from the last structure step)."""
    s = len(cfg.var.patch_nums)
    refine0 = max(2, s - 4)
    sem_end = max(1, round(0.4 * s))
    p = identity(cfg, f"{cfg.name}-paper-split")
    p.stages = {"semantic": list(range(min(sem_end, refine0))), "structure": list(range(min(sem_end, refine0), refine0)),
                "refine": list(range(refine0, s))}
    p.stages = {k: v for k, v in p.stages.items() if v}
    for k in range(refine0, s):
        n = cfg.var.patch_nums[k] ** 2
        p.steps[k] = StepPlan(mode="reduce", cfg=False, keep=max(1, round(keep * n)), selector="random_projection",
                              restore_from=refine0 - 1, restore_level="block")
    p.description = ("template following the paper's stage split (semantic, structure, refine = last 4 steps "
                     f"without guidance on {keep:.0%} representative tokens); not calibrated")
    return p


# FastVAR's and SkipVAR's published settings are keyed on Infinity-2B's 1024x1024 schedule.
INFINITY_1M_SCHEDULE = (1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64)
INFINITY_DEPTH = 32
# FastVAR (fastvar_utils.py, infinity.py): share of tokens removed at 32 and 40, the last two
# scales skipped, sublayer outputs cached at 24, pruning only in blocks 3..27.
FASTVAR_REMOVED = {32: 0.4, 40: 0.5}
FASTVAR_SKIPPED = (48, 64)
FASTVAR_CACHE = 24
FASTVAR_LAYERS = (3, 28)


def _tail_shares(patch_nums: tuple[int, ...]) -> list[float]:
    """Per step, the share of all tokens held by that step and every later one."""
    n = [p * p for p in patch_nums]
    return [sum(n[k:]) / sum(n) for k in range(len(n))]


def upstream_steps(cfg: ModelConfig) -> list[int]:
    """For each step of this schedule, the Infinity-1M scale (its width) with the nearest share of
    the remaining tokens: how a recipe published for Infinity is mapped onto this schedule. On
    VAR-256 it pairs the last five steps one to one (13 and 16 hold 62.5% of the tokens; 48 and 64
    hold 60.8%)."""
    ours, theirs = _tail_shares(cfg.var.patch_nums), _tail_shares(INFINITY_1M_SCHEDULE)
    return [INFINITY_1M_SCHEDULE[min(range(len(theirs)), key=lambda j: abs(theirs[j] - t))] for t in ours]


def fastvar(cfg: ModelConfig) -> Profile:
    """FastVAR as its released Infinity code runs, on this schedule: the steps that map to scales
    32 and 40 keep the n - int(n * ratio) tokens farthest from the map's mean, rescored from the
    residual stream before every sublayer, per image and guidance half, in the blocks that map to
    3..27 of 32; the other positions take the sublayer outputs cached at the step that maps to 24,
    area-upsampled; the steps that map to 48 and 64 are skipped; guidance stays on."""
    s, depth = len(cfg.var.patch_nums), cfg.var.depth
    up = upstream_steps(cfg)
    p = identity(cfg, f"{cfg.name}-fastvar")
    pruned = [k for k in range(1, s) if up[k] in FASTVAR_REMOVED]
    skipped = [k for k in range(1, s) if up[k] in FASTVAR_SKIPPED]
    lo = round(FASTVAR_LAYERS[0] * depth / INFINITY_DEPTH)
    hi = max(lo + 1, round(FASTVAR_LAYERS[1] * depth / INFINITY_DEPTH))
    cache = [k for k in range(s) if up[k] == FASTVAR_CACHE and (not pruned or k < pruned[0])]
    source = cache[-1] if cache else (pruned[0] - 1 if pruned else 0)
    for k in pruned:
        n = cfg.var.patch_nums[k] ** 2
        p.steps[k] = StepPlan(mode="reduce", cfg=True, keep=max(1, n - int(n * FASTVAR_REMOVED[up[k]])),
                              selector="pivotal_stream", restore_from=source, restore_level="layer",
                              layers=[lo, hi], upsample="area")
    for k in skipped:
        p.steps[k] = StepPlan(mode="skip", cfg=True)
    late = sorted(pruned + skipped)
    p.stages = {"semantic": [k for k in range(s) if k not in late], "refine": late}
    p.stages = {k: v for k, v in p.stages.items() if v}
    p.description = ("FastVAR (Infinity-2B recipe mapped by token share: remove 40%/50% of tokens by pivotal score "
                     "per sublayer in the middle blocks, area-upsampled cached restoration, skip the last "
                     "scales); not calibrated")
    return p


# SkipVAR's moves, on Infinity's 13 steps: skip the last 1, 2 or 3 steps, or drop the
# unconditional branch from step 12, 11 or 10 on. Its released decision rule picks one per image.
SKIPVAR_POINTS = {"skip1": ("skip", 12), "skip2": ("skip", 11), "uncond3": ("uncond", 10)}


def skipvar(cfg: ModelConfig, point: str) -> Profile:
    """One of SkipVAR's static operating points on this schedule: the steps that map to Infinity's
    last steps (by token share) are skipped, or run without the unconditional branch."""
    move, first = SKIPVAR_POINTS[point]
    s = len(cfg.var.patch_nums)
    up = upstream_steps(cfg)
    late = [k for k in range(1, s) if INFINITY_1M_SCHEDULE.index(up[k]) >= first]
    if move == "skip" and len(late) >= s - 1:
        late = late[1:]                                    # a profile keeps one step after the first
    p = identity(cfg, f"{cfg.name}-skipvar-{point}")
    for k in late:
        p.steps[k] = StepPlan(mode="skip" if move == "skip" else "full", cfg=False)
    p.stages = {"semantic": [k for k in range(s) if k not in late], "refine": late}
    p.stages = {k: v for k, v in p.stages.items() if v}
    what = f"skip the last {len(late)} step(s)" if move == "skip" else f"no unconditional branch in the last {len(late)} step(s)"
    p.description = f"SkipVAR static operating point {point} ({what}, mapped from Infinity by token share); not calibrated"
    return p


def peers(cfg: ModelConfig) -> list[Profile]:
    """The peers every comparison runs: FastVAR and SkipVAR's static operating points."""
    return [fastvar(cfg)] + [skipvar(cfg, point) for point in SKIPVAR_POINTS]


PEER_NAMES = ("fastvar",) + tuple(f"skipvar-{point}" for point in SKIPVAR_POINTS)
