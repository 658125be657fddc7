"""Speed of a profile against the baseline on the same backend, measured side by side.

Default: VAR-d16 shapes with random weights on the CPU, batch 1 with guidance, the paper-split
template against the reference sampler. Runs alternate (baseline, accelerated, baseline, ...) so
machine noise hits both alike; the table shows per-step medians and the JSON keeps every rep.

    python benchmarks/accel_speed.py --model d16 --profile d16-paper-split --reps 3 --json out/accel_d16.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from results_io import write_result

from fastervar.accel.accelerated import AcceleratedModel
from fastervar.accel.cost import predicted_speedup
from fastervar.models.loading import embedded_model, random_model
from fastervar.models.sampler import generate
from fastervar.models.sampling import SamplingSettings
from fastervar.profile import check_against, identity
from fastervar.profiles import resolve


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="d16", help="named config with random weights, or fashion-tiny (shipped)")
    ap.add_argument("--profile", default=None, help="profile file or shipped name [default: MODEL-paper-split]")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = embedded_model() if args.model == "fashion-tiny" else random_model(args.model)
    model.batch_invariant = False          # time the batched decoder, as a server would run it
    profile = resolve(args.profile or f"{args.model}-paper-split")
    check_against(profile, model.cfg)
    acc = AcceleratedModel(model, profile)
    settings = SamplingSettings(cfg=1.5)
    classes = [(7 * i) % model.cfg.var.num_classes for i in range(args.batch)]
    generate(model, classes, settings, seed=0, batch_size=args.batch)          # warm-up, both paths
    generate(acc, classes, settings, seed=0, batch_size=args.batch)
    runs: dict[str, list] = {"baseline": [], "accelerated": []}
    for rep in range(args.reps):
        for name, runner in (("baseline", model), ("accelerated", acc)):
            g = generate(runner, classes, settings, seed=rep, batch_size=args.batch)
            runs[name].append({"steps": g.step_seconds, "decode": g.decode_seconds,
                               "transformer": g.seconds_transformer, "total": g.seconds_total})
            print(f"rep {rep} {name:<11} steps {g.seconds_transformer:7.3f}s  total {g.seconds_total:7.3f}s",
                  file=sys.stderr)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    ratios_t = [b["transformer"] / a["transformer"] for b, a in zip(runs["baseline"], runs["accelerated"])]
    ratios_all = [b["total"] / a["total"] for b, a in zip(runs["baseline"], runs["accelerated"])]
    pred = predicted_speedup(model.cfg, identity(model.cfg), profile, args.batch)
    print(f"\nmodel {args.model} (random weights)" if args.model != "fashion-tiny" else "\nmodel fashion-tiny")
    print(f"profile {profile.name}, batch {args.batch}, torch threads {torch.get_num_threads()}, {args.reps} reps\n")
    print(f"{'step':>6} {'tokens':>7} {'mode':>7} {'cfg':>4} {'baseline s':>11} {'accel s':>9} {'ratio':>7}")
    for k, plan in enumerate(profile.steps):
        b = statistics.median(r["steps"][k] for r in runs["baseline"])
        a = statistics.median(r["steps"][k] for r in runs["accelerated"])
        run = plan.keep if plan.mode == "reduce" else (0 if plan.mode == "skip" else model.tokens_at(k))
        print(f"{k:>6} {run:>3}/{model.tokens_at(k):<3} {plan.mode:>7} {'on' if plan.cfg else 'off':>4} "
              f"{b:>11.4f} {a:>9.4f} {b / max(a, 1e-9):>6.2f}x")
    print(f"{'decode':>6} {'':>7} {'':>7} {'':>4} {med('baseline', 'decode'):>11.4f} {med('accelerated', 'decode'):>9.4f}")
    result = {
        "model": args.model, "profile": profile.name, "batch": args.batch, "reps": args.reps,
        "threads": torch.get_num_threads(), "runs": runs,
        "speedup_transformer": statistics.median(ratios_t), "speedup_total": statistics.median(ratios_all),
        "predicted_speedup_transformer": pred["transformer"], "predicted_speedup_total": pred["total"],
    }
    print(f"\ntransformer (scale steps) speedup: {result['speedup_transformer']:.2f}x "
          f"(predicted from FLOPs {pred['transformer']:.2f}x)")
    print(f"end-to-end speedup (decoder included): {result['speedup_total']:.2f}x "
          f"(predicted {pred['total']:.2f}x)")
    write_result(args.json, result)
    return result


if __name__ == "__main__":
    main()
