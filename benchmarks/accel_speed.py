"""Speed of a profile against the baseline in torch, through the package's timing harness.

Default: VAR-d16 shapes with random weights on the CPU, batch 1 with guidance, the paper-split
template against the baseline (the model's own batched step loop). Runs are interleaved after a
warm-up at the timed batch size; the table shows per-step medians, the JSON every pass.

    python benchmarks/accel_speed.py --model d16 --profile d16-paper-split --reps 3 --json out/accel_d16.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import load_model, load_profile, write_result

from fastervar.accel.accelerated import AcceleratedModel
from fastervar.accel.cost import predicted_speedup
from fastervar.models.sampling import SamplingSettings
from fastervar.profile import check_against, identity
from fastervar.timing import TorchRunner, batches, interleaved, speedup, summarize


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
    model = load_model(args.model)
    profile = load_profile(args.profile, model)
    check_against(profile, model.cfg)
    settings = SamplingSettings(cfg=1.5)
    runners = {"baseline": TorchRunner(model, settings), "accelerated": TorchRunner(AcceleratedModel(model, profile), settings)}
    classes = [(7 * i) % model.cfg.var.num_classes for i in range(args.batch)]
    runs = interleaved(runners, batches(classes, 0, args.batch), reps=args.reps)
    t = {name: summarize(passes) for name, passes in runs.items()}
    pred = predicted_speedup(model.cfg, identity(model.cfg), profile, args.batch)
    print(f"\nmodel {args.model}" + (" (random weights)" if args.model != "fashion-tiny" else ""))
    print(f"profile {profile.name}, batch {args.batch}, torch threads {torch.get_num_threads()}, {args.reps} reps\n")
    print(f"{'step':>6} {'tokens':>7} {'mode':>7} {'cfg':>4} {'baseline s':>11} {'accel s':>9} {'ratio':>7}")
    for k, plan in enumerate(profile.steps):
        b, a = t["baseline"].step_seconds[k], t["accelerated"].step_seconds[k]
        run = plan.keep if plan.mode == "reduce" else (0 if plan.mode == "skip" else model.tokens_at(k))
        print(f"{k:>6} {run:>3}/{model.tokens_at(k):<3} {plan.mode:>7} {'on' if plan.cfg else 'off':>4} "
              f"{b:>11.4f} {a:>9.4f} {b / max(a, 1e-9):>6.2f}x")
    print(f"{'decode':>6} {'':>7} {'':>7} {'':>4} {t['baseline'].decode_seconds:>11.4f} "
          f"{t['accelerated'].decode_seconds:>9.4f}")
    result = {
        "model": args.model, "profile": profile.name, "batch": args.batch, "reps": args.reps,
        "threads": torch.get_num_threads(), "timings": {name: vars(x) for name, x in t.items()},
        "speedup_transformer": speedup(runs["baseline"], runs["accelerated"], "steps"),
        "speedup_total": speedup(runs["baseline"], runs["accelerated"]),
        "predicted_speedup_transformer": pred["transformer"], "predicted_speedup_total": pred["total"],
    }
    print(f"\ntransformer (scale steps) speedup: {result['speedup_transformer']:.2f}x "
          f"(predicted from FLOPs {pred['transformer']:.2f}x)")
    print(f"end-to-end speedup (decoder included): {result['speedup_total']:.2f}x (predicted {pred['total']:.2f}x)")
    write_result(args.json, result)
    return result


if __name__ == "__main__":
    main()
