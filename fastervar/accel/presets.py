"""Hand-made profiles: the paper's split as uncalibrated templates, and the peers' published recipes.

These exist so that every comparison runs in one harness; calibrated profiles come from
`fastervar calibrate`. Each is marked `calibrated: false` and says where its numbers come from.
"""

from __future__ import annotations

from ..models.configs import ModelConfig
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


def fastvar_like(cfg: ModelConfig) -> Profile:
    """FastVAR's released HART recipe on this schedule: the last two steps drop 50% and 75% of their
    tokens by pivotal score, restore per sublayer from the step before them, guidance kept."""
    s = len(cfg.var.patch_nums)
    p = identity(cfg, f"{cfg.name}-fastvar-like")
    p.stages = {"semantic": list(range(s - 2)), "refine": [s - 2, s - 1]}
    for k, removed in ((s - 2, 0.5), (s - 1, 0.75)):
        n = cfg.var.patch_nums[k] ** 2
        p.steps[k] = StepPlan(mode="reduce", cfg=True, keep=max(1, round((1 - removed) * n)), selector="pivotal",
                              restore_from=s - 3, restore_level="layer")
    p.description = "FastVAR (HART recipe: remove 50%/75% at the last two scales, cached restoration); not calibrated"
    return p


def skipvar_like(cfg: ModelConfig) -> Profile:
    """SkipVAR's two moves as a static profile: the unconditional branch is dropped at the
    second-to-last step and the last step is skipped (decoded from the upsampled accumulation)."""
    s = len(cfg.var.patch_nums)
    p = identity(cfg, f"{cfg.name}-skipvar-like")
    p.stages = {"semantic": list(range(s - 2)), "refine": [s - 2, s - 1]}
    p.steps[s - 2] = StepPlan(mode="full", cfg=False)
    p.steps[s - 1] = StepPlan(mode="skip", cfg=False)
    p.description = "SkipVAR (skip the last step, drop the unconditional branch before it), static; not calibrated"
    return p
