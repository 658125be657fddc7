"""GPU speed of the VAR pipeline: eager against the package's CUDA-graph fast path, baseline and
accelerated, through the package's timing harness (and a bundle's TensorRT plans when given).

Variants, per model and batch size, with seeded random weights:
    eager          the baseline's step loop, eager (what `generate --device cuda` ran before the fast path)
    graphs         the baseline as `generate`, `bench` and `evaluate` run it on a GPU: CUDA graphs
    accel          the profile (default MODEL-paper-split), eager
    accel+graphs   the profile on the fast path
    tensorrt       `--bundle DIR` built with --tensorrt, on the runtime's TensorRT engines
Graphed variants must sample their eager twin's tokens (checked, in the JSON). Speedups are
against `eager`. The JSON is rewritten after every section.

    bash benchmarks/gpu.sh --models d16,d30 --batches 1,16 --reps 5
    python benchmarks/gpu.py --device cpu --models tiny --batches 1 --reps 1      # smoke test (no graphs)
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np
import torch
from common import load_model, load_profile, write_result

from fastervar.accel.accelerated import AcceleratedModel
from fastervar.errors import FastervarError
from fastervar.models.sampling import SamplingSettings
from fastervar.timing import PipelineRunner, TorchRunner, batches, first_pass, interleaved, speedup, summarize

TWINS = {"graphs": "eager", "accel+graphs": "accel"}


def runners(model, acc, settings: SamplingSettings, device: str, bundle: Path | None) -> tuple[dict, dict]:
    """The variants this machine can run, and why the others were left out."""
    out = {"eager": TorchRunner(model, settings, fast=False), "accel": TorchRunner(acc, settings, fast=False)}
    skipped = {}
    if device == "cuda":
        out.update({"graphs": TorchRunner(model, settings), "accel+graphs": TorchRunner(acc, settings)})
    else:
        skipped.update(dict.fromkeys(TWINS, "needs CUDA"))
    if bundle is None:
        skipped["tensorrt"] = "no --bundle given"
    else:
        from fastervar.runtime.pipeline import Pipeline
        try:
            out["tensorrt"] = PipelineRunner(Pipeline.from_bundle(bundle, provider="tensorrt"))
        except FastervarError as exc:
            skipped["tensorrt"] = str(exc)
    return out, skipped


def section(name: str, model, batch: int, args: argparse.Namespace, device: str) -> dict:
    profile = load_profile(args.profile, model)
    acc = AcceleratedModel(model, profile)
    settings = SamplingSettings(cfg=1.5)
    bundle = args.bundle if name == args.bundle_model else None
    run, skipped = runners(model, acc, settings, device, bundle)
    classes = [(7 * i) % model.cfg.var.num_classes for i in range(batch)]
    runs = interleaved(run, batches(classes, args.seed, batch), reps=args.reps, device=device, warmup=args.warmup,
                       memory=True, desc=f"{name} batch {batch}")
    out = {"model": name, "batch": batch, "profile": profile.name, "skipped": skipped, "variants": {},
           "plan": [{"step": k, "tokens": model.tokens_at(k), "mode": p.mode, "cfg": p.cfg, "keep": p.keep}
                    for k, p in enumerate(profile.steps)]}
    for v, passes in runs.items():
        t = summarize(passes)
        row = {"ms_per_image": 1e3 * t.seconds / batch, "steps_ms_per_image": 1e3 * t.seconds_steps / batch,
               "decode_ms_per_image": 1e3 * t.decode_seconds / batch,
               "step_ms_per_image": [1e3 * s / batch for s in t.step_seconds], "passes_s": t.passes,
               "speedup_total": speedup(runs["eager"], passes),
               "speedup_steps": speedup(runs["eager"], passes, "steps") if t.graph_seconds == 0 else None,
               "peak_mib": max((r.peak_bytes or 0) for p in passes for r in p) / 2**20}
        twin = TWINS.get(v)
        if twin is not None:
            mine, theirs = first_pass(passes), first_pass(runs[twin])
            row["tokens_match"] = all(np.array_equal(a, b) for a, b in zip(mine.tokens, theirs.tokens))
            row["image_max_diff"] = int(np.abs(mine.images.astype(int) - theirs.images.astype(int)).max())
        out["variants"][v] = row
    return out


def print_section(sec: dict) -> None:
    print(f"\n== {sec['model']}  batch {sec['batch']}  profile {sec['profile']}  (ms per image, medians)")
    print(f"{'variant':<13} {'steps':>9} {'decode':>8} {'total':>9} {'steps x':>8} {'total x':>8} {'tokens':>16}")
    for name, v in sec["variants"].items():
        tok = "" if "tokens_match" not in v else ("same as " if v["tokens_match"] else "DIFFER from ") + TWINS[name]
        steps_x = "-" if v["speedup_steps"] is None else f"{v['speedup_steps']:.2f}x"
        print(f"{name:<13} {v['steps_ms_per_image']:>9.2f} {v['decode_ms_per_image']:>8.2f} {v['ms_per_image']:>9.2f} "
              f"{steps_x:>8} {v['speedup_total']:>7.2f}x {tok:>16}")
    for name, why in sec["skipped"].items():
        print(f"{name:<13} skipped: {why}")


def environment(device: str) -> dict:
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "device": device, "threads": torch.get_num_threads()}
    if device == "cuda":
        env.update(gpu=torch.cuda.get_device_name(), tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    return env


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--models", default="d16", help="comma list of named configs (random weights)")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--reps", type=int, default=5, help="timed passes per variant, interleaved")
    ap.add_argument("--warmup", type=int, default=2, help="untimed passes per variant first (graphs capture here)")
    ap.add_argument("--profile", default=None, help="profile file or shipped name [MODEL-paper-split]")
    ap.add_argument("--bundle", type=Path, default=None, help="bundle with TensorRT plans, for --bundle-model")
    ap.add_argument("--bundle-model", default=None, help="model the bundle was built for [first of --models]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device cuda: torch {torch.__version__} sees no CUDA GPU (use --device cpu for a smoke test)")
    models = [m for m in args.models.split(",") if m]
    args.bundle_model = args.bundle_model or models[0]
    result = {"environment": environment(args.device), "settings": {k: str(v) for k, v in vars(args).items()},
              "sections": []}
    print(" ".join(f"{k}={v}" for k, v in result["environment"].items()))
    for name in models:
        model = load_model(name).to(args.device)
        for batch in (int(b) for b in args.batches.split(",")):
            sec = section(name, model, batch, args, args.device)
            print_section(sec)
            result["sections"].append(sec)
            write_result(args.json, result)
        del model
        if args.device == "cuda":
            torch.cuda.empty_cache()
    return result


if __name__ == "__main__":
    main()
