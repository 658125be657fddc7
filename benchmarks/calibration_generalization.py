"""Do calibration's promises hold on images it never saw?

For each setting (a speed target with a class-accuracy limit, or a paired-SSIM limit), `runs`
calibrations on disjoint calibration seeds, each through `fastervar calibrate` as a user runs it,
in two modes:
- `before`: every image searched, limits checked on the estimates (`--holdout 0 --confidence 0`,
  what calibrate did before held-out checks);
- `after`: the defaults (a third of the images held out, limits checked at 0.9 confidence).
Every profile is then run on `fresh` images (100 per class by default, seeds no calibration used),
paired with the baseline on the same noise, and each limit is checked there: class accuracy drop
(the shipped judge), paired SSIM drop. A refused calibration (no candidate keeps the limits) makes
no promise and is counted apart. Fresh images are judged once per distinct plan.

    python benchmarks/calibration_generalization.py --model fashion-16 \\
        --json benchmarks/results/calibration_generalization_fashion16_cpu.json

Candidates are priced by FLOPs (`--cost-model flops`) so that runs do not time probes; the speed
promise is not what this measures (a profile's speed does not depend on which images it draws).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
from common import write_result

from fastervar.accel.accelerated import AcceleratedModel
from fastervar.cli import main
from fastervar.cli.workload import sampling
from fastervar.evaluate.features import ClassifierFeatures
from fastervar.evaluate.judge import pick_judge
from fastervar.evaluate.metrics import ssim
from fastervar.models.loading import shipped_model
from fastervar.profile import Profile, load
from fastervar.timing import TorchRunner, batches, first_pass, interleaved

SETTINGS = {
    "acc0.02-1.5x": ["--target-speedup", "1.5", "--max-accuracy-drop", "0.02"],
    "acc0.05-1.5x": ["--target-speedup", "1.5", "--max-accuracy-drop", "0.05"],
    "acc0.02-2x": ["--target-speedup", "2", "--max-accuracy-drop", "0.02"],
    "acc0.05-2x": ["--target-speedup", "2", "--max-accuracy-drop", "0.05"],
    "acc0.1-1.5x": ["--target-speedup", "1.5", "--max-accuracy-drop", "0.1"],   # the demo's limit
    "ssim0.05": ["--max-quality-drop", "0.05"],
    "ssim0.15": ["--max-quality-drop", "0.15"],
}
MODES = {"before": ["--holdout", "0", "--confidence", "0"], "after": []}
FRESH_SEED = 900_001


def calibrate(model: str, seeds: list[int], setting: list[str], mode: list[str], out: Path, cache: Path,
              batch: int) -> Profile | str:
    """The profile `fastervar calibrate` writes, or its one-line refusal."""
    args = ["calibrate", "--model", model, "--seeds", ",".join(map(str, seeds)), *setting, *mode,
            "--cost-model", "flops", "--batch-size", str(batch), "--out", str(out), "--cache-dir", str(cache)]
    try:
        main.main(args, standalone_mode=False)
    except SystemExit as exc:
        if exc.code:
            return f"exit {exc.code}"
    except Exception as exc:  # noqa: BLE001 -- a FastervarError is the refusal this counts
        return str(exc).splitlines()[0]
    return load(out)


class Fresh:
    """Fresh images: the baseline once, then each plan paired with it on the same noise."""

    def __init__(self, model, judge: ClassifierFeatures, per_class: int, batch: int, work: Path):
        self.model, self.judge, self.batch = model, judge, batch
        self.settings = sampling(model, None, 900, None)         # what calibrate samples with by default
        self.classes = [c for c in range(model.cfg.var.num_classes) for _ in range(per_class)]
        self.labels = np.array(self.classes)
        self.path = work / f"fresh-{FRESH_SEED}-{per_class}.json"     # plans measured, kept across restarts
        base = work / f"fresh-{FRESH_SEED}-{per_class}-baseline.npy"
        if not base.exists():
            work.mkdir(parents=True, exist_ok=True)
            np.save(base, self._images(TorchRunner(model, self.settings)))
        self.base = np.load(base)
        self.base_correct = self._correct(self.base)
        self.known: dict[str, dict] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def _images(self, runner) -> np.ndarray:
        runs = interleaved({"x": runner}, batches(self.classes, FRESH_SEED, self.batch), desc="fresh images")
        return first_pass(runs["x"]).images

    def _correct(self, images: np.ndarray) -> np.ndarray:
        return (self.judge.features_and_classes(images)[1] == self.labels).astype(float)

    def measure(self, profile: Profile) -> dict:
        plan = hashlib.sha256(json.dumps(profile.to_dict()["steps"], sort_keys=True).encode()).hexdigest()[:16]
        if plan not in self.known:
            imgs = self._images(TorchRunner(AcceleratedModel(self.model, profile), self.settings))
            self.known[plan] = {"images": len(imgs), "baseline_class_accuracy": float(self.base_correct.mean()),
                                "class_accuracy_drop": float((self.base_correct - self._correct(imgs)).mean()),
                                "ssim_drop": float(1 - ssim(imgs, self.base).mean())}
            self.path.write_text(json.dumps(self.known))
        return self.known[plan]


def promised(profile: Profile) -> dict[str, float]:
    t = profile.calibration["target"]
    out = {}
    if t.get("max_accuracy_drop") is not None:
        out["class_accuracy_drop"] = t["max_accuracy_drop"]
    if t.get("max_quality_drop") is not None:
        out["ssim_drop"] = t["max_quality_drop"]
    return out


def calibration_figures(profile: Profile) -> dict:
    m = profile.measured
    search, held = m.get("search") or {}, m.get("held_out") or {}
    base = profile.calibration.get("baseline_class_accuracy")
    return {"search_class_accuracy_drop": None if base is None or m.get("class_accuracy") is None
            else search.get("baseline_class_accuracy", base) - m["class_accuracy"],
            "search_ssim_drop": 1 - m["paired_ssim"],
            "held_out_class_accuracy_drop": None if held.get("class_accuracy") is None
            else held["baseline_class_accuracy"] - held["class_accuracy"],
            "held_out_ssim_drop": None if not held else 1 - held["paired_ssim"],
            "predicted_speedup": m["predicted_speedup_transformer"],
            "measured_speedup": m["measured_speedup_transformer"]}


def summarize_rows(rows: list[dict]) -> dict:
    out = {}
    for key in sorted({(r["setting"], r["mode"]) for r in rows}):
        rs = [r for r in rows if (r["setting"], r["mode"]) == key]
        made = [r for r in rs if r.get("fresh")]
        out[f"{key[0]}/{key[1]}"] = {
            "runs": len(rs), "refused": len(rs) - len(made), "held_on_fresh": sum(r["holds"] for r in made),
            "mean_fresh_accuracy_drop": float(np.mean([r["fresh"]["class_accuracy_drop"] for r in made])) if made else None,
            "worst_fresh_accuracy_drop": max((r["fresh"]["class_accuracy_drop"] for r in made), default=None),
            "mean_fresh_ssim_drop": float(np.mean([r["fresh"]["ssim_drop"] for r in made])) if made else None,
            "mean_predicted_speedup": float(np.mean([r["calibration"]["predicted_speedup"] for r in made])) if made else None}
    return out


def table(summary: dict) -> str:
    lines = ["| setting | mode | runs | refused | promise held on fresh | mean fresh acc drop | worst | mean fresh SSIM drop "
             "| mean predicted speedup |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]

    def f(v, fmt="{:.3f}"):
        return "-" if v is None else fmt.format(v)
    for key, s in summary.items():
        setting, mode = key.split("/")
        made = s["runs"] - s["refused"]
        lines.append(f"| {setting} | {mode} | {s['runs']} | {s['refused']} | {s['held_on_fresh']}/{made} | "
                     f"{f(s['mean_fresh_accuracy_drop'])} | {f(s['worst_fresh_accuracy_drop'])} | "
                     f"{f(s['mean_fresh_ssim_drop'])} | {f(s['mean_predicted_speedup'], '{:.2f}x')} |")
    return "\n".join(lines)


def main_() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="fashion-16", choices=["fashion-16", "fashion-tiny"])
    ap.add_argument("--runs", type=int, default=5, help="Calibrations per setting, on disjoint seeds.")
    ap.add_argument("--seeds-per-run", type=int, default=10,
                    help="Seeds per class in each calibration (10: calibrate's default 100 images on 10 classes).")
    ap.add_argument("--fresh-per-class", type=int, default=100)
    ap.add_argument("--settings", default=",".join(SETTINGS), help="Comma-separated names of SETTINGS.")
    ap.add_argument("--modes", default="before,after")
    ap.add_argument("--batch-size", type=int, default=40)
    ap.add_argument("--work", type=Path, default=Path("out/calgen"), help="Profiles and caches (resumable).")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    model = shipped_model(a.model)
    judge_files, _ = pick_judge(model, None, fall_back=False)
    fresh = Fresh(model, ClassifierFeatures.load(judge_files), a.fresh_per_class, a.batch_size, a.work / a.model)
    rows, t0 = [], time.perf_counter()
    for run in range(a.runs):
        seeds = list(range(run * a.seeds_per_run, (run + 1) * a.seeds_per_run))
        cache = a.work / a.model / f"run{run}" / "cache"
        for name in a.settings.split(","):
            for mode in a.modes.split(","):
                out = a.work / a.model / f"run{run}" / f"{name}-{mode}.json"
                got = load(out) if out.exists() else calibrate(a.model, seeds, SETTINGS[name], MODES[mode], out, cache,
                                                                a.batch_size)
                row = {"setting": name, "mode": mode, "run": run, "seeds": seeds}
                if isinstance(got, str):
                    row["refused"] = got
                else:
                    limits, f = promised(got), fresh.measure(got)
                    row |= {"profile": str(out), "limits": limits, "calibration": calibration_figures(got), "fresh": f,
                            "holds": all(f[k] <= v + 1e-9 for k, v in limits.items())}
                rows.append(row)
                print(json.dumps({k: row.get(k) for k in ("setting", "mode", "run", "holds", "refused")}), flush=True)
        # after every run, so that a stopped benchmark still reports the runs it finished
        summary = summarize_rows(rows)
        print(table(summary))
        write_result(a.json, {"model": a.model, "runs": run + 1, "seeds_per_run": a.seeds_per_run,
                              "calibration_images": a.seeds_per_run * model.cfg.var.num_classes,
                              "fresh_images": len(fresh.classes), "fresh_seed": FRESH_SEED, "settings": SETTINGS,
                              "modes": MODES, "summary": summary, "rows": rows,
                              "seconds": time.perf_counter() - t0})


if __name__ == "__main__":
    main_()
