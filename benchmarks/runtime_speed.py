"""The exported bundle on onnxruntime against the torch baseline, through the package's timing harness.

Default: VAR-d16 shapes with random weights, CPU, batch 1 with guidance. It exports the profile
once (or reuses --bundle), checks that the runtime's tokens equal the torch accelerated path's,
prints what the graphs ask of TensorRT, bundle size and the runtime's peak RSS against the
weights, then times the torch baseline against three ways of running the bundle, interleaved.

    python benchmarks/runtime_speed.py --model d16 --reps 3 --json out/runtime_d16.json
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from common import ensure_bundle, graph_checks, load_model, load_profile, write_result

from fastervar.accel.accelerated import AcceleratedModel
from fastervar.models.sampling import SamplingSettings
from fastervar.profile import check_against
from fastervar.runtime.pipeline import Pipeline
from fastervar.timing import PipelineRunner, TorchRunner, batches, first_pass, interleaved, speedup, summarize

# chain: the single whole-generation graph in one session (what `fastervar run` uses);
# shared: one session per step graph on one memory-mapped weight copy; prepacked: the same with
# onnxruntime's per-session weight repacking.
MODES = ("chain", "shared", "prepacked")
RSS_PROBE = """
import sys
from fastervar.runtime.pipeline import Pipeline
mode = sys.argv[3]
p = Pipeline.from_bundle(sys.argv[1], verify=False, threads=int(sys.argv[2]), prepack=mode == "prepacked",
                         chain=mode == "chain")
p.generate([1], seed=0)
# VmHWM is this process's own peak; getrusage's ru_maxrss would carry the parent's across fork+exec
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(int(hwm.split()[1]) * 1024)
"""


def peak_rss(bundle: Path, threads: int, mode: str) -> int:
    """Peak resident memory of a fresh process that loads the bundle and makes one image."""
    out = subprocess.run([sys.executable, "-c", RSS_PROBE, str(bundle), str(threads), mode],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def open_pipeline(bundle: Path, threads: int, mode: str) -> Pipeline:
    return Pipeline.from_bundle(bundle, verify=False, threads=threads, prepack=mode == "prepacked", chain=mode == "chain")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="d16", help="named config with random weights, or fashion-tiny (shipped)")
    ap.add_argument("--profile", default=None, help="profile file, shipped name or 'identity' [default: MODEL-paper-split]")
    ap.add_argument("--bundle", type=Path, default=None, help="bundle dir: reused if it exists, else exported there")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"],
                    help="of the bundle; int8 tokens are not expected to equal the fp32 torch path's")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="threads for torch and for each ORT session")
    ap.add_argument("--modes", default=",".join(MODES),
                    help="ways to run the bundle, comma-separated; at VAR-d16 batch 16 all three do not fit in 24 GB")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    modes = tuple(m for m in args.modes.split(",") if m)
    if not modes or set(modes) - set(MODES):
        raise SystemExit(f"--modes takes some of {', '.join(MODES)}")
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    profile = load_profile(args.profile, model)
    check_against(profile, model.cfg)
    settings = SamplingSettings(cfg=1.5)
    bundle, export_s = ensure_bundle(model, profile, args.bundle or Path("out/bundles") / f"{args.model}-{profile.name}",
                                     settings, args.batch, args.precision)
    checks = graph_checks(bundle)
    weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bundle_bytes = sum(f.stat().st_size for f in bundle.iterdir())
    rss = {mode: peak_rss(bundle, args.threads, mode) for mode in modes}
    runtime_weights = Pipeline.from_bundle(bundle, verify=True, chain=False).manifest.weights["bytes"]

    runners = {"torch_baseline": TorchRunner(model, settings),
               "torch_accelerated": TorchRunner(AcceleratedModel(model, profile), settings)}
    runners.update({f"ort_{m}": PipelineRunner(open_pipeline(bundle, args.threads, m)) for m in modes})
    classes = [(7 * i) % model.cfg.var.num_classes for i in range(args.batch)]
    runs = interleaved(runners, batches(classes, 0, args.batch), reps=args.reps)
    ref = first_pass(runs["torch_accelerated"])
    tokens_equal, image_diff = {}, {}
    for mode in modes:
        got = first_pass(runs[f"ort_{mode}"])
        tokens_equal[mode] = all(np.array_equal(a, b) for a, b in zip(got.tokens, ref.tokens))
        image_diff[mode] = int(np.abs(got.images.astype(int) - ref.images.astype(int)).max())
    t = {name: summarize(passes) for name, passes in runs.items()}

    print(f"\nmodel {args.model}, profile {profile.name}, batch {args.batch}, {args.threads} threads, {args.reps} reps")
    print(f"bundle {bundle_bytes / 2**20:.1f} MiB = {bundle_bytes / weights_bytes:.3f}x the model's fp32 weights "
          f"({weights_bytes / 2**20:.1f} MiB)" + (f"; exported in {export_s:.0f} s" if export_s else ""))
    for mode in modes:
        print(f"runtime peak RSS ({mode}) {rss[mode] / 2**20:.1f} MiB = {rss[mode] / runtime_weights:.3f}x the "
              f"bundle's weights ({runtime_weights / 2**20:.1f} MiB)")
        print(f"parity ({mode}) with the torch accelerated path: tokens "
              f"{'equal' if tokens_equal[mode] else 'DIFFER'} at every step, images within {image_diff[mode]} level(s)")
    print(f"\n{'step':>6} {'tokens':>9} {'mode':>7}" + "".join(f"{c:>18}" for c in t) + "   (median seconds)")
    for k, plan in enumerate(profile.steps):
        run = plan.keep if plan.mode == "reduce" else (0 if plan.mode == "skip" else model.tokens_at(k))
        print(f"{k:>6} {run:>4}/{model.tokens_at(k):<4}{plan.mode:>7}" + "".join(f"{x.step_seconds[k]:>18.4f}" for x in t.values()))
    for key in ("decode_seconds", "graph_seconds", "seconds"):
        print(f"{key.split('_')[0]:>6} {'':>9} {'':>7}" + "".join(f"{getattr(x, key):>18.4f}" for x in t.values()))
    result = {
        "model": args.model, "profile": profile.name, "precision": args.precision, "batch": args.batch, "reps": args.reps,
        "threads": args.threads,
        "bundle": str(bundle), "export_seconds": export_s, "graph_checks": checks, "model_weights_bytes": weights_bytes,
        "bundle_bytes": bundle_bytes, "bundle_over_weights": bundle_bytes / weights_bytes,
        "runtime_weights_bytes": runtime_weights, "runtime_peak_rss_bytes": rss,
        "rss_over_weights": {m: rss[m] / runtime_weights for m in modes},
        "tokens_equal": tokens_equal, "image_max_diff": image_diff, "timings": {n: vars(x) for n, x in t.items()},
        "speedup_total": {name: speedup(runs["torch_baseline"], runs[name]) for name in runners},
    }
    for name, value in result["speedup_total"].items():
        print(f"end-to-end speedup against the torch baseline: {name} {value:.2f}x")
    write_result(args.json, result)
    return result


if __name__ == "__main__":
    main()
