"""Which quality measure, taken on calibration-sized prompt sets, predicts the 1000-image Frechet
distance? `calibrate` has 40 prompts to choose a profile with; users judge it by FD on 1000.

Generates 100 images per class with the baseline and each profile (same noise), then for every
pair of profiles whose 1000-image FDs differ by 5% or more, draws class-balanced 40-image subsets
(4 per class, like `calibrate`'s 10 classes x 4 seeds) and counts how often each small-sample
measure orders the pair as FD does: paired SSIM, class accuracy, and the judge-feature shift
`calibrate` uses (`evaluate.metrics.feature_shift`).

    python benchmarks/closeness_metrics.py --json benchmarks/results/closeness_metrics_fashion16.json
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from common import write_result

from fastervar.accel.accelerated import AcceleratedModel
from fastervar.evaluate.features import ClassifierFeatures
from fastervar.evaluate.judge import shipped_judge
from fastervar.evaluate.metrics import feature_shift, frechet_distance, gaussian_stats, ssim
from fastervar.evaluate.run import Reference
from fastervar.models.loading import shipped_model
from fastervar.models.sampling import SamplingSettings
from fastervar.profiles import resolve, shipped
from fastervar.timing import TorchRunner, batches, first_pass, interleaved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="fashion-16")
    ap.add_argument("--profiles", nargs="*", help="default: every shipped MODEL-* profile")
    ap.add_argument("--samples-per-class", type=int, default=100)
    ap.add_argument("--subsets", type=int, default=30)
    ap.add_argument("--json")
    a = ap.parse_args()

    model = shipped_model(a.model)
    judge = ClassifierFeatures.load(shipped_judge())
    ref = Reference.load(shipped_judge())
    names = a.profiles or sorted(n for n in shipped() if n.startswith(f"{a.model}-"))
    classes = np.repeat(np.arange(model.cfg.var.num_classes), a.samples_per_class)
    runners = {"baseline": TorchRunner(model, SamplingSettings())}
    runners |= {n: TorchRunner(AcceleratedModel(model, resolve(n)), SamplingSettings()) for n in names}
    runs = interleaved(runners, batches(classes.tolist(), 0, 50), desc="batches")
    images = {n: first_pass(r).images for n, r in runs.items()}
    feats, preds = {}, {}
    for n, im in images.items():
        feats[n], preds[n] = judge.features_and_classes(im)

    per_image_ssim = {n: ssim(images["baseline"], images[n]) for n in names}
    rows = {n: {"frechet_distance": frechet_distance(*gaussian_stats(feats[n]), ref.mu, ref.sigma),
                "class_accuracy": float((preds[n] == classes).mean()),
                "paired_ssim": float(per_image_ssim[n].mean()),
                "feature_shift": feature_shift(feats["baseline"], feats[n])} for n in names}

    rng = np.random.default_rng(0)
    subsets = [np.concatenate([rng.choice(np.nonzero(classes == c)[0], 4, replace=False)
                               for c in np.unique(classes)]) for _ in range(a.subsets)]
    measures = {  # higher is closer to the baseline
        "paired_ssim": lambda n, ix: per_image_ssim[n][ix].mean(),
        "class_accuracy": lambda n, ix: (preds[n][ix] == classes[ix]).mean(),
        "feature_shift": lambda n, ix: -feature_shift(feats["baseline"][ix], feats[n][ix]),
    }
    pairs = [(p, q) for p, q in itertools.combinations(names, 2)
             if abs(rows[p]["frechet_distance"] / rows[q]["frechet_distance"] - 1) >= 0.05]
    agreement = {}
    for m, f in measures.items():
        hits = [(f(p, ix) > f(q, ix)) == (rows[p]["frechet_distance"] < rows[q]["frechet_distance"])
                for p, q in pairs for ix in subsets]
        agreement[m] = float(np.mean(hits))

    print("| profile | FD (1000) | class acc | paired SSIM | feature shift |\n|---|---:|---:|---:|---:|")
    for n, r in sorted(rows.items(), key=lambda kv: kv[1]["frechet_distance"]):
        print(f"| {n} | {r['frechet_distance']:.1f} | {r['class_accuracy']:.3f} | {r['paired_ssim']:.3f} "
              f"| {r['feature_shift']:.4f} |")
    print(f"\nOrdering pairs as the 1000-image FD does, on {a.subsets} class-balanced 40-image subsets "
          f"x {len(pairs)} pairs:")
    for m, v in agreement.items():
        print(f"  {m}: {v:.1%}")
    if a.json:
        write_result(Path(a.json), {"model": a.model, "samples": len(classes), "profiles": rows, "pairs": len(pairs),
                              "subsets": a.subsets, "agreement_with_fd": agreement,
                              "command": "python benchmarks/closeness_metrics.py"})


if __name__ == "__main__":
    main()
