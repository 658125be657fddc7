"""The bench report: bench.json, a markdown table and three plots (per-step time, speed vs
quality, an image grid of the same seeds across variants). The markdown is rendered from the
same dict that is written as JSON, so their figures cannot disagree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..evaluate.promises import lines
from ..utils.atomic import atomic_path
from ..utils.images import save_png, tile_grid

COLUMNS = [("seconds_per_image", "s/image", "{:.4f}"), ("speedup_total", "speedup", "{:.2f}x"),
           ("speedup_transformer", "steps speedup", "{:.2f}x"), ("peak_memory_mib", "peak MiB", "{:.0f}"),
           ("paired_psnr", "PSNR", "{:.2f}"), ("paired_ssim", "SSIM", "{:.3f}"),
           ("class_accuracy", "class acc", "{:.3f}"), ("frechet_distance", "FD", "{:.1f}"),
           ("clip_score", "CLIP score", "{:.3f}"), ("paired_clip_similarity", "CLIP sim", "{:.4f}"),
           ("clip_fd", "CLIP-FD", "{:.4f}")]
_CLIP = ("clip_score", "paired_clip_similarity", "clip_fd")


def table(result: dict) -> str:
    """The summary as a markdown table (also what the CLI prints)."""
    rows = result["variants"]
    cols = [c for c in COLUMNS if any(r.get(c[0]) is not None for r in rows.values())]
    lines = ["| variant | profile | " + " | ".join(c[1] for c in cols) + " |",
             "|---|---|" + "---:|" * len(cols)]
    for name, r in rows.items():
        cells = [fmt.format(r[key]) if r.get(key) is not None else "" for key, _, fmt in cols]
        lines.append(f"| {name} | {r['profile'] or '-'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def equal_speed(result: dict, tolerance: float = 0.1) -> list[dict]:
    """Each peer recipe against every one of our variants whose measured end-to-end speedup is
    within +-tolerance of the peer's: the comparison that is fair to both."""
    rows = result["variants"]
    out = []
    for peer, p in rows.items():
        if not p.get("peer"):
            continue
        near = [(n, r) for n, r in rows.items() if n != "baseline" and not r.get("peer")
                and abs(r["speedup_total"] / p["speedup_total"] - 1) <= tolerance]
        for name, r in near or [(None, {})]:
            row = {"peer": peer, "peer_speedup": p["speedup_total"], "ours": name, "ours_speedup": r.get("speedup_total")}
            for key in ("paired_ssim", "frechet_distance", "class_accuracy", *_CLIP):
                row[f"peer_{key}"], row[f"ours_{key}"] = p.get(key), r.get(key)
            # closer to the baseline on every measure there is: SSIM, and FD and CLIP-FD where measured
            row["ours_better"] = None if name is None or r.get("paired_ssim") is None else bool(
                r["paired_ssim"] > p["paired_ssim"]
                and (r.get("frechet_distance") is None or r["frechet_distance"] < p["frechet_distance"])
                and (r.get("clip_fd") is None or p.get("clip_fd") is None or r["clip_fd"] < p["clip_fd"]))
            out.append(row)
    return out


def equal_speed_table(rows: list[dict]) -> str:
    """Markdown for `equal_speed`: ours beside each peer, with a plain verdict; the CLIP columns
    where a CLIP judged them."""
    clip = any(r.get(f"{side}_{k}") is not None for r in rows for side in ("peer", "ours") for k in _CLIP)
    extra = " CLIP score | CLIP sim | CLIP-FD |" if clip else ""
    lines = [(f"| peer | speedup | SSIM | FD | class acc |{extra} ours | speedup | SSIM | FD | class acc |{extra} "
              "ours better |"),
             "|---|---:|---:|---:|---:|" + ("---:|" * 3 if clip else "") + "---|---:|---:|---:|---:|"
             + ("---:|" * 3 if clip else "") + "---|"]

    def f(v, fmt: str) -> str:
        return "" if v is None else fmt.format(v)

    def clip_cells(r: dict, side: str) -> str:
        return (f" {f(r[f'{side}_clip_score'], '{:.3f}')} | {f(r[f'{side}_paired_clip_similarity'], '{:.4f}')} | "
                f"{f(r[f'{side}_clip_fd'], '{:.4f}')} |") if clip else ""
    for r in rows:
        verdict = {None: "no variant of ours within 10%",
                   True: "yes (higher SSIM, lower FD" + (", lower CLIP-FD)" if clip else ")"),
                   False: "no"}[r["ours_better"]]
        lines.append(f"| {r['peer']} | {f(r['peer_speedup'], '{:.2f}x')} | {f(r['peer_paired_ssim'], '{:.3f}')} | "
                     f"{f(r['peer_frechet_distance'], '{:.1f}')} | {f(r['peer_class_accuracy'], '{:.3f}')} |"
                     f"{clip_cells(r, 'peer')} "
                     f"{r['ours'] or '-'} | {f(r['ours_speedup'], '{:.2f}x')} | {f(r['ours_paired_ssim'], '{:.3f}')} | "
                     f"{f(r['ours_frechet_distance'], '{:.1f}')} | {f(r['ours_class_accuracy'], '{:.3f}')} |"
                     f"{clip_cells(r, 'ours')} {verdict} |")
    return "\n".join(lines)


def step_table(result: dict) -> str:
    rows = result["variants"]
    names = list(rows)
    lines = ["| step | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    n_steps = len(next(iter(rows.values()))["step_seconds"])
    for k in range(n_steps):
        lines.append(f"| {k} | " + " | ".join(f"{rows[n]['step_seconds'][k]:.4f}" for n in names) + " |")
    lines.append("| decode | " + " | ".join(f"{rows[n]['decode_seconds']:.4f}" for n in names) + " |")
    if any(rows[n].get("graph_seconds") for n in names):
        lines.append("| one graph (all steps + decode) | " + " | ".join(f"{rows[n]['graph_seconds']:.4f}" for n in names) + " |")
    return "\n".join(lines)


def _save(fig, dest: Path) -> None:
    import matplotlib.pyplot as plt
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_steps(result: dict, dest: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = result["variants"]
    names = list(rows)
    n = result["images"]
    n_steps = len(rows[names[0]]["step_seconds"])
    cmap = plt.get_cmap("viridis", n_steps + 1)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    bottom = np.zeros(len(names))
    for k in range(n_steps + 1):
        vals = np.array([(rows[v]["step_seconds"][k] if k < n_steps else rows[v]["decode_seconds"]) / n for v in names])
        ax.bar(names, vals * 1e3, bottom=bottom * 1e3, color=cmap(k), label=f"step {k}" if k < n_steps else "decode")
        bottom += vals
    whole = np.array([rows[v].get("graph_seconds", 0.0) / n for v in names])
    if whole.any():
        ax.bar(names, whole * 1e3, bottom=bottom * 1e3, color="#bbbbbb", hatch="//", label="one graph (all)")
    ax.set_ylabel("ms per image")
    ax.set_title("Where the time goes, per variant")
    ax.tick_params(axis="x", labelrotation=20)
    ax.legend(fontsize=6, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    _save(fig, dest)


def plot_front(result: dict, dest: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = {k: r for k, r in result["variants"].items() if r.get("paired_ssim") is not None}
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, r in rows.items():
        ax.scatter(r["speedup_total"], r["paired_ssim"], s=40)
        ax.annotate(name, (r["speedup_total"], r["paired_ssim"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.scatter([1.0], [1.0], marker="*", s=90, color="black")
    ax.annotate("baseline", (1.0, 1.0), fontsize=8, xytext=(4, -10), textcoords="offset points")
    ax.set_xlabel("end-to-end speedup (measured, interleaved)")
    ax.set_ylabel("paired SSIM vs baseline")
    ax.set_title("Speed against quality")
    _save(fig, dest)


def _equal_speed_section(result: dict) -> list[str]:
    rows = result.get("equal_speed") or []
    if not rows:
        return []
    return ["## Against the peers at equal measured speed (+-10%)", "",
            ("Each peer recipe beside every variant of ours whose end-to-end speedup, measured in this run, "
             "is within 10% of the peer's. Ours is better when its paired SSIM is higher and its FD lower."), "",
            equal_speed_table(rows), ""]


def attribution_line(result: dict) -> str | None:
    """The bundle's speedup split into the compiled runtime's share and the profile's."""
    a = result.get("attribution")
    if not a:
        return None
    return (f"bundle {a['total']:.2f}x end to end = compiler {a['compiler']:.2f}x (the identity profile exported, "
            f"against the torch baseline) x algorithm {a['algorithm']:.2f}x (the profile's bundle against the "
            f"identity bundle)")


def write_report(result: dict, out_dir: Path, sample_images: dict[str, np.ndarray], title: str) -> Path:
    """bench.json, report.md and the plots in out_dir; returns the report's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "bench.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    plot_steps(result, out_dir / "steps.png")
    plot_front(result, out_dir / "front.png")
    rows = list(sample_images)
    grid = np.concatenate([sample_images[r] for r in rows])
    save_png(tile_grid(grid, rows=len(rows), scale=2), out_dir / "grid.png")
    env = result.get("environment", {})
    md = [f"# {title}", "",
          (f"{result['images']} images, batch {result['batch_size']}, seed {result['seed']}, portable sampler, "
           f"{result.get('timed_passes', 1)} timed pass(es) (times are medians per pass); "
           f"variants warmed up at every timed batch size, then interleaved batch by batch in one process. "
           + ", ".join(f"{k} {', '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in env.items())),
          "",
          ("Speedups are the baseline's time over the variant's, both measured in this run. Paired PSNR/SSIM "
           "compare each variant's image with the baseline's for the same prompt and noise."), "",
          table(result), "", *([attribution_line(result), ""] if result.get("attribution") else []),
          *(["```", *lines(result["promised"], result["images"]), "```", ""] if result.get("promised") else []),
          *_equal_speed_section(result), "## Per-step time (seconds, all images)", "", step_table(result), "",
          "![per-step time](steps.png)", "", "![speed against quality](front.png)", "",
          "## Same seeds, every variant", "", "Rows, top to bottom: " + ", ".join(rows) + ".", "",
          "![grid](grid.png)", ""]
    path = out_dir / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(md))
    return path
