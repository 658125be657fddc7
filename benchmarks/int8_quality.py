"""int8 bundles against fp32 bundles of the same model and profile, on the runtime: class accuracy
and Frechet distance from the shipped judge, per-step token agreement and paired SSIM.

int8 changes which tokens a seed samples, so paired figures fall fast with the step while class
accuracy and FD say whether the images are still as good.

    python benchmarks/int8_quality.py --profiles fashion-tiny-calibrated,identity --samples-per-class 100 \\
        --json benchmarks/results/int8_quality_cpu.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import ensure_bundle, load_model, load_profile, write_result

from fastervar.evaluate.features import ClassifierFeatures
from fastervar.evaluate.judge import shipped_judge
from fastervar.evaluate.metrics import ssim
from fastervar.evaluate.run import Reference, class_accuracy, distribution_scores
from fastervar.models.sampling import SamplingSettings
from fastervar.runtime.pipeline import Pipeline


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="fashion-tiny", help="the shipped model (the judge knows its data)")
    ap.add_argument("--profiles", default="fashion-tiny-calibrated,identity")
    ap.add_argument("--samples-per-class", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--bundles", type=Path, default=Path("out/bundles"), help="bundles are reused from here")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    model = load_model(args.model)
    settings = SamplingSettings()
    judge = shipped_judge()
    ext, ref = ClassifierFeatures.load(judge), Reference.load(judge)
    classes = [c for c in range(model.cfg.var.num_classes) for _ in range(args.samples_per_class)]
    result = {"model": args.model, "images": len(classes), "seed": args.seed, "profiles": {}}
    for spec in args.profiles.split(","):
        profile = load_profile(spec, model)
        rows, tokens, images = {}, {}, {}
        for precision in ("fp32", "int8"):
            path, _ = ensure_bundle(model, profile, args.bundles / f"{args.model}-{profile.name}-{precision}",
                                    settings, args.batch, precision)
            gen = Pipeline.from_bundle(path).generate(classes, seed=args.seed)
            tokens[precision], images[precision] = gen.tokens, gen.images
            rows[precision] = {"class_accuracy": class_accuracy(ext, gen.images, classes),
                               **distribution_scores(ext, ref, gen.images),
                               "weights_bytes": Pipeline.from_bundle(path, verify=False).manifest.weights["bytes"]}
        agreement = [float((a == b).mean()) if a.size else None for a, b in zip(tokens["fp32"], tokens["int8"])]
        paired = float(ssim(images["fp32"], images["int8"]).mean())
        result["profiles"][profile.name] = {**rows, "token_agreement": agreement, "paired_ssim": paired,
                                            "accuracy_points": 100 * (rows["int8"]["class_accuracy"] - rows["fp32"]["class_accuracy"]),
                                            "fd_change": rows["int8"]["frechet_distance"] / rows["fp32"]["frechet_distance"] - 1}
        r = result["profiles"][profile.name]
        print(f"\n{profile.name}, {len(classes)} images, seed {args.seed}")
        print(f"{'':>6} {'class acc':>10} {'FD':>8} {'KID':>8} {'weights MiB':>12}")
        for precision in ("fp32", "int8"):
            x = rows[precision]
            print(f"{precision:>6} {x['class_accuracy']:>10.3f} {x['frechet_distance']:>8.1f} {x['kid']:>8.4f} "
                  f"{x['weights_bytes'] / 2**20:>12.2f}")
        print(f"int8 vs fp32: class accuracy {r['accuracy_points']:+.1f} points, FD {100 * r['fd_change']:+.1f}%, "
              f"paired SSIM {paired:.3f}")
        print("token agreement per step: " + " ".join("skip" if a is None else f"{a:.3f}" for a in agreement))
    write_result(args.json, result)
    return result


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
