"""The calibration report: markdown plus three plots (convergence, cost per step, speed-quality front)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..accel.cost import step_costs
from ..profile import ModelSpec, Profile, identity
from ..utils.atomic import atomic_path
from .measure import Measurements
from .search import Candidate


def _save(fig, dest: Path) -> None:
    import matplotlib.pyplot as plt
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_convergence(m: Measurements, stages: dict[str, list[int]], dest: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = np.arange(len(m.semantic))
    ax.plot(steps, m.semantic, "o-", label="semantic similarity to final")
    ax.plot(steps, m.structure, "s-", label="structural similarity (SSIM) to final")
    ax.plot(steps, m.guidance_tv / max(m.guidance_tv.max(), 1e-12), "^--", label="guidance effect (scaled)")
    colours = {"semantic": "#dde8f7", "structure": "#f7ecd9", "refine": "#e3f2df"}
    for name, idx in stages.items():
        if idx:
            ax.axvspan(idx[0] - 0.5, idx[-1] + 0.5, color=colours[name], zorder=0, label=f"{name} stage")
    ax.set_xlabel("scale step")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Baseline convergence per step")
    _save(fig, dest)


def plot_costs(spec: ModelSpec, profile: Profile, batch: int, dest: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    base = [c.flops / 1e9 for c in step_costs(spec, identity(spec), batch)]
    acc = [c.flops / 1e9 for c in step_costs(spec, profile, batch)]
    x = np.arange(len(base))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(x - 0.2, base, 0.4, label="baseline")
    ax.bar(x + 0.2, acc, 0.4, label=profile.name)
    ax.set_xlabel("scale step")
    ax.set_ylabel(f"GFLOP (batch {batch})")
    ax.set_title("Transformer cost per step")
    ax.legend()
    _save(fig, dest)


def plot_front(tried: list[Candidate], chosen: Candidate, dest: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.8))
    judged = chosen.shift is not None         # one of the two measures the choice weighs (search.closest)
    def group(c: Candidate) -> str:
        return c.knobs.selector if c.knobs is not None else c.profile.name

    for sel in sorted({group(c) for c in tried}):
        pts = [c for c in tried if group(c) == sel]
        ax.scatter([c.speedup for c in pts], [c.shift if judged else c.ssim for c in pts], label=sel, alpha=0.7)
    ax.scatter([chosen.speedup], [chosen.shift if judged else chosen.ssim], s=160, facecolors="none",
               edgecolors="red", label="chosen")
    ax.set_xlabel("predicted scale-step speedup (see the cost model above)")
    if judged:
        ax.set_yscale("log")
    ax.set_ylabel("judge-feature shift from baseline (lower is closer)" if judged else "paired SSIM to baseline")
    ax.set_title("Candidates tried")
    ax.legend(fontsize=7)
    _save(fig, dest)


def limits_table(measured: dict, max_quality_drop: float | None, max_accuracy_drop: float | None,
                 max_clip_drop: float | None) -> list[str]:
    """The chosen profile's measures on the search and held-out images, each as estimate with the
    distance to its one-sided confidence bound, beside the limit it had to keep, and what margin
    the search's size bought."""
    search, held = measured["search"], measured.get("held_out")
    rows = [("paired SSIM", "paired_ssim", max_quality_drop and f"drop <= {max_quality_drop:g}"),
            ("class accuracy", "class_accuracy", max_accuracy_drop is not None and f"drop <= {max_accuracy_drop:g}"),
            ("CLIP score", "clip_score", max_clip_drop is not None and f"drop <= {max_clip_drop:g}")]

    def cell(d: dict | None, key: str) -> str:
        if not d or d.get(key) is None:
            return "-"
        base = d.get(f"baseline_{key}")
        return (f"{d[key]:.3f} -{d[f'{key}_margin']:.3f}" + (f" (baseline {base:.3f})" if base is not None else ""))

    lines = ["", "## How sure (search and held-out images)", "",
             f"Each limit is checked against the one-sided {search['confidence']:g} confidence bound of the drop "
             f"on the {search['images']} search images (estimate -margin: a paired bootstrap over images; for class "
             f"accuracy Agresti and Min's paired-proportion bound), then "
             + (f"re-checked by its estimate on the {held['images']} held-out images the search never saw."
                if held else "not re-checked: no image was held out."), "",
             "| measure | search | held out | limit |", "|---|---|---|---|"]
    lines += [f"| {label} | {cell(search, key)} | {cell(held, key)} | {limit or '-'} |"
              for label, key, limit in rows if search.get(key) is not None]
    if held:
        lines += ["", (f"Measured speedup on the held-out batch shapes: {held['measured_speedup_transformer']:.2f}x "
                  f"on the scale steps, {held['measured_speedup_total']:.2f}x end to end.")]
    lines += ["", ("Margins shrink as one over the square root of the images: four times the prompts or seeds "
              "halves them.")]
    return lines


def write_report(dest_dir: Path, profile: Profile, chosen: Candidate, tried: list[Candidate], m: Measurements,
                 stages: dict[str, list[int]], spec: ModelSpec, batch: int, header: dict,
                 peers: list[dict], limits: list[str] = ()) -> Path:
    dest_dir.mkdir(parents=True, exist_ok=True)
    plot_convergence(m, stages, dest_dir / "convergence.png")
    plot_costs(spec, profile, batch, dest_dir / "cost_per_step.png")
    plot_front(tried, chosen, dest_dir / "front.png")
    rows = sorted((c.row() for c in tried), key=lambda r: -r["predicted_speedup"])
    cols = list(rows[0])
    lines = [f"# Calibration report: {profile.name}", ""]
    lines += [f"- **{k}**: {v}" for k, v in header.items()]
    lines += ["", "## Stage split (measured)", ""]
    lines += [f"- {name}: steps {idx}" for name, idx in stages.items()]
    lines += ["", "| step | semantic | structure | guidance TV |", "|---|---|---|---|"]
    lines += [f"| {k} | {m.semantic[k]:.3f} | {m.structure[k]:.3f} | {m.guidance_tv[k]:.4f} |"
              for k in range(len(m.semantic))]
    lines += ["", "![convergence](convergence.png)", "", "## Chosen profile", ""]
    lines += [f"- **{k}**: {v}" for k, v in chosen.row().items()]
    lines += list(limits)
    lines += ["", "![cost per step](cost_per_step.png)", "", "## Against the peers at equal predicted speed (+-10%)", "",
              ("Our closest candidate to the baseline within 10% of each peer recipe's predicted speedup, judged "
               "on the same prompts and noise (paired to the baseline; feature shift: the judge's mean features, "
               "lower is closer)."), "",
              "| peer | speedup | SSIM | PSNR | class acc | shift | ours: speedup | SSIM | PSNR | class acc | shift |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    metrics = ("speedup", "ssim", "psnr", "class_accuracy", "feature_shift")
    for r in peers:
        vals = [r["peer"]] + [r[f"{side}_{k}"] for side in ("peer", "ours") for k in metrics]
        lines.append("| " + " | ".join("-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
                                       for v in vals) + " |")
    lines += ["", f"## Candidates tried ({len(rows)})", "",
              "![speed-quality front](front.png)", "", "| " + " | ".join(cols) + " |",
              "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    report = dest_dir / "report.md"
    with atomic_path(report) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return report
