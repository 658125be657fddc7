"""How close fp16 and int8 bundles stay to fp32: per step on the same inputs (raw logits and
tokens, `fastervar.export.closeness`), and through the whole chain (token agreement per step of
the bundles as `fastervar run` runs them, where a flipped token changes every later input).

    python benchmarks/precision_closeness.py --models fashion-16,tiny-d16-schedule,tiny --batch 16 \\
        --json benchmarks/results/precision_closeness_cpu.json
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import numpy as np
from common import ensure_bundle, load_model, write_result

from fastervar.accel.accelerated import AcceleratedModel
from fastervar.export.closeness import closeness
from fastervar.models.sampling import SamplingSettings
from fastervar.profile import identity
from fastervar.runtime.pipeline import Pipeline


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="fashion-16,tiny-d16-schedule,tiny")
    ap.add_argument("--batch", type=int, default=16, help="images per step for the same-input comparison")
    ap.add_argument("--images", type=int, default=8, help="images generated through the chain")
    ap.add_argument("--bundles", type=Path, default=Path("out/bundles"), help="bundles are reused from here")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    settings = SamplingSettings()
    result = {"batch": args.batch, "images": args.images, "models": {}}
    for name in args.models.split(","):
        model = load_model(name)
        profile = identity(model.cfg)
        acc = AcceleratedModel(model, profile)
        classes = [(7 * i) % model.cfg.var.num_classes for i in range(args.images)]
        row: dict = {}
        chain = {}
        for precision in ("fp32", "fp16", "int8"):
            path, _ = ensure_bundle(model, profile, args.bundles / f"{name}-identity-{precision}", settings,
                                    args.images, precision, calib_images=4 if precision == "int8" else None)
            chain[precision] = Pipeline.from_bundle(path).generate(classes, seed=0).tokens
        for precision in ("fp16", "int8"):
            steps = closeness(acc, settings, precision, batch=args.batch)
            agree = [float(np.mean(a == b)) for a, b in zip(chain["fp32"], chain[precision])]
            row[precision] = {"per_step": [asdict(s) for s in steps], "chain_token_agreement": agree}
            print(f"{name} {precision}: per step, on the same inputs: logits within "
                  f"{100 * max(s.logits_rel_error for s in steps):.3f}% (largest error "
                  f"{max(s.logits_max_error for s in steps):.3f} std), step-0 tokens agree "
                  f"{steps[0].token_agreement:.3f}; through the chain, tokens agree per step: "
                  + " ".join(f"{a:.3f}" for a in agree))
        result["models"][name] = row
    write_result(args.json, result)
    return result


if __name__ == "__main__":
    main()
