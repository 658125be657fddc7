"""What a calibrated profile promised, beside what a later run measures.

A calibrated profile records its target (a speed, a paired-SSIM drop, a class-accuracy or CLIP
drop) and what calibration measured on its search and held-out images. `evaluate` and `bench`
print those figures next to their own, so a user sees at once whether the promise held on
images calibration never saw.
"""

from __future__ import annotations

from ..profile import Profile


def _drop(d: dict, key: str) -> float | None:
    base = d.get(f"baseline_{key}")
    return None if base is None or d.get(key) is None else base - d[key]


def promises(profile: Profile) -> list[dict]:
    """One row per limit the calibration was asked to keep: the limit, and the figure calibration
    measured on its search images (with the margin of its confidence bound) and held-out images."""
    cal, meas = profile.calibration or {}, profile.measured or {}
    if not profile.calibrated or not cal:
        return []
    target = cal.get("target") or {}
    search, held = meas.get("search") or {}, meas.get("held_out") or {}
    rows = []
    if target.get("speedup"):
        rows.append({"measure": "speedup_transformer", "label": "scale-step speedup", "limit": target["speedup"],
                     "higher_is_better": True, "search": meas.get("measured_speedup_transformer"),
                     "held_out": held.get("measured_speedup_transformer")})
    if target.get("max_quality_drop") is not None:
        rows.append({"measure": "ssim_drop", "label": "paired SSIM drop", "limit": target["max_quality_drop"],
                     "search": 1 - meas["paired_ssim"] if meas.get("paired_ssim") is not None else None,
                     "margin": search.get("paired_ssim_margin"),
                     "held_out": 1 - held["paired_ssim"] if held.get("paired_ssim") is not None else None})
    if target.get("max_accuracy_drop") is not None and cal.get("baseline_class_accuracy") is not None:
        first = _drop(search, "class_accuracy")
        if first is None and meas.get("class_accuracy") is not None:      # a profile from before held-out checks
            first = cal["baseline_class_accuracy"] - meas["class_accuracy"]
        rows.append({"measure": "class_accuracy_drop", "label": "class accuracy drop",
                     "limit": target["max_accuracy_drop"], "search": first,
                     "margin": search.get("class_accuracy_margin"), "held_out": _drop(held, "class_accuracy")})
    if target.get("max_clip_drop") is not None:
        rows.append({"measure": "clip_score_drop", "label": "CLIP score drop", "limit": target["max_clip_drop"],
                     "search": meas.get("clip_score_drop"), "margin": search.get("clip_score_margin"),
                     "held_out": _drop(held, "clip_score")})
    return rows


def measured(baseline: dict, accelerated: dict) -> dict[str, float | None]:
    """The promised measures from a run's baseline and accelerated figures (evaluate's or bench's)."""
    def drop(key: str) -> float | None:
        b, a = baseline.get(key), accelerated.get(key)
        return None if b is None or a is None else b - a
    ssim = accelerated.get("paired_ssim")
    return {"speedup_transformer": accelerated.get("speedup_transformer"),
            "ssim_drop": None if ssim is None else 1 - ssim,
            "class_accuracy_drop": drop("class_accuracy"), "clip_score_drop": drop("clip_score")}


def beside(profile: Profile, figures: dict[str, float | None]) -> list[dict]:
    """`promises` with this run's figure and whether the promise held on it."""
    out = []
    for row in promises(profile):
        got = figures.get(row["measure"])
        held = None if got is None else (got >= row["limit"] if row.get("higher_is_better") else got <= row["limit"])
        out.append({**row, "measured": got, "holds": held})
    return out


def lines(rows: list[dict], images: int) -> list[str]:
    """The comparison as text for the terminal."""
    if not rows:
        return []

    def fmt(v: float | None, speed: bool) -> str:
        return "-" if v is None else (f"{v:.2f}x" if speed else f"{v:.3f}")

    out = [f"promised by the calibrated profile, and measured here on {images} images:",
           f"  {'measure':<20} {'limit':>9} {'calibration':>14} {'held out':>9} {'here':>9}"]
    for r in rows:
        speed = bool(r.get("higher_is_better"))
        limit = (">= " if speed else "<= ") + fmt(r["limit"], speed)
        first = fmt(r["search"], speed) + (f" +{r['margin']:.3f}" if r.get("margin") else "")
        verdict = "" if r["holds"] is None else ("  holds" if r["holds"] else "  BROKEN")
        out.append(f"  {r['label']:<20} {limit:>9} {first:>14} {fmt(r['held_out'], speed):>9} "
                   f"{fmt(r['measured'], speed):>9}{verdict}")
    return out
