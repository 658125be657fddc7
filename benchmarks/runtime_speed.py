"""The exported bundle on onnxruntime against the torch reference, measured side by side.

Default: VAR-d16 shapes with random weights, CPU, batch 1 with guidance. It exports the paper-split
profile once (or reuses --bundle), checks that the runtime's tokens equal the torch accelerated
path's, prints bundle size and the runtime's peak RSS against the weights, then alternates torch
baseline / ORT runtime runs and prints per-step times for both, the VQVAE decoder included.

    python benchmarks/runtime_speed.py --model d16 --reps 3 --json out/runtime_d16.json
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from results_io import write_result

from fastervar.accel.accelerated import AcceleratedModel
from fastervar.export.bundle import export_bundle
from fastervar.models.loading import embedded_model, random_model
from fastervar.models.sampler import generate
from fastervar.models.sampling import SamplingSettings
from fastervar.profile import check_against, identity
from fastervar.profiles import resolve
from fastervar.runtime.manifest import read_manifest
from fastervar.runtime.pipeline import Pipeline

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


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="d16", help="named config with random weights, or fashion-tiny (shipped)")
    ap.add_argument("--profile", default=None, help="profile file, shipped name or 'identity' [default: MODEL-paper-split]")
    ap.add_argument("--bundle", type=Path, default=None, help="bundle dir: reused if it exists, else exported there")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="threads for torch and for each ORT session")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = embedded_model() if args.model == "fashion-tiny" else random_model(args.model)
    model.batch_invariant = False          # the batched decoder, as a server would run it
    spec = args.profile or f"{args.model}-paper-split"
    profile = identity(model.cfg) if spec == "identity" else resolve(spec)
    check_against(profile, model.cfg)
    settings = SamplingSettings(cfg=1.5)
    bundle = args.bundle or Path("out/bundles") / f"{args.model}-{profile.name}"
    export_s = None
    if not (bundle / "manifest.json").exists():
        t0 = time.perf_counter()
        export_bundle(model, profile, bundle, settings, max_batch=max(args.batch, 1))
        export_s = time.perf_counter() - t0
    manifest = read_manifest(bundle, verify=True)
    if manifest.data["profile"]["json"] != profile.to_dict():
        sys.exit(f"{bundle} holds profile {manifest.data['profile']['name']!r}, not {profile.name!r}; pass another --bundle")
    weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bundle_bytes = sum(f.stat().st_size for f in bundle.iterdir())
    rss = {mode: peak_rss(bundle, args.threads, mode) for mode in MODES}
    runtime_weights = manifest.weights["bytes"]

    pipes = {mode: Pipeline.from_bundle(bundle, verify=False, threads=args.threads, prepack=mode == "prepacked",
                                        chain=mode == "chain") for mode in MODES}
    acc = AcceleratedModel(model, profile)
    classes = [(7 * i) % model.cfg.var.num_classes for i in range(args.batch)]
    ref = generate(acc, classes, settings, seed=0, batch_size=args.batch)
    tokens_equal, image_diff = {}, {}
    for mode in ("chain", "shared"):
        got = pipes[mode].generate(classes, seed=0)
        tokens_equal[mode] = all(np.array_equal(got.tokens[k], t.numpy()) for k, t in enumerate(ref.tokens))
        image_diff[mode] = int(np.abs(got.images.astype(int) - ref.images.numpy().astype(int)).max())

    generate(model, classes, settings, seed=0, batch_size=args.batch)          # warm-up
    for mode in MODES:                                                          # warm-up
        pipes[mode].generate(classes, seed=0)
    runs: dict[str, list] = {"torch_baseline": [], **{f"ort_{m}": [] for m in MODES}}
    for rep in range(args.reps):
        g = generate(model, classes, settings, seed=rep, batch_size=args.batch)
        runs["torch_baseline"].append({"steps": g.step_seconds, "decode": g.decode_seconds, "total": g.seconds_total})
        line = f"rep {rep}: torch baseline {g.seconds_total:7.3f}s"
        for mode in MODES:
            r = pipes[mode].generate(classes, seed=rep)
            runs[f"ort_{mode}"].append({"steps": r.step_seconds, "decode": r.decode_seconds, "graph": r.graph_seconds,
                                        "total": r.seconds_total})
            line += f"   ORT {mode} {r.seconds_total:7.3f}s"
        print(line, file=sys.stderr)

    def med(name: str, key: str, k: int | None = None) -> float:
        return statistics.median(r.get(key, 0.0)[k] if k is not None else r.get(key, 0.0) for r in runs[name])

    def ratio(mode: str) -> float:
        return statistics.median(b["total"] / a["total"] for b, a in zip(runs["torch_baseline"], runs[f"ort_{mode}"]))

    print(f"\nmodel {args.model}, profile {profile.name}, batch {args.batch}, {args.threads} threads, {args.reps} reps")
    print(f"bundle {bundle_bytes / 2**20:.1f} MiB = {bundle_bytes / weights_bytes:.3f}x the model's fp32 weights "
          f"({weights_bytes / 2**20:.1f} MiB)" + (f"; exported in {export_s:.0f} s" if export_s else ""))
    for mode in MODES:
        print(f"runtime peak RSS ({mode}) {rss[mode] / 2**20:.1f} MiB = {rss[mode] / runtime_weights:.3f}x the "
              f"bundle's weights ({runtime_weights / 2**20:.1f} MiB)")
    for mode, equal in tokens_equal.items():
        print(f"parity ({mode}) with the torch accelerated path: tokens "
              f"{'equal' if equal else 'DIFFER'} at every step, images within {image_diff[mode]} uint8 level(s)")
    print()
    cols = ["torch_baseline"] + [f"ort_{m}" for m in MODES]
    print(f"{'step':>6} {'tokens':>9} {'mode':>7}" + "".join(f"{c:>16}" for c in cols) + "   (median seconds)")
    for k, plan in enumerate(profile.steps):
        run = plan.keep if plan.mode == "reduce" else (0 if plan.mode == "skip" else model.tokens_at(k))
        print(f"{k:>6} {run:>4}/{model.tokens_at(k):<4}{plan.mode:>7}" + "".join(f"{med(c, 'steps', k):>16.4f}" for c in cols))
    for key in ("decode", "graph", "total"):
        print(f"{key:>6} {'':>9} {'':>7}" + "".join(f"{med(c, key):>16.4f}" for c in cols))
    result = {
        "model": args.model, "profile": profile.name, "batch": args.batch, "reps": args.reps, "threads": args.threads,
        "bundle": str(bundle), "export_seconds": export_s, "model_weights_bytes": weights_bytes,
        "bundle_bytes": bundle_bytes, "bundle_over_weights": bundle_bytes / weights_bytes,
        "runtime_weights_bytes": runtime_weights,
        "runtime_peak_rss_bytes": rss, "rss_over_weights": {m: rss[m] / runtime_weights for m in MODES},
        "tokens_equal": tokens_equal, "image_max_diff": image_diff, "runs": runs,
        "speedup_total": {m: ratio(m) for m in MODES},
    }
    for mode in MODES:
        print(f"\nend-to-end image time, ORT runtime {mode} ({profile.name}) vs torch baseline: "
              f"{result['speedup_total'][mode]:.2f}x")
    write_result(args.json, result)
    return result


if __name__ == "__main__":
    main()
