"""Infinity-2B exported and run on the torch-free runtime, against our torch baseline: export cost
and speed at full depth, pn 0.06M (or `--pn`), one aspect, batch 1 with guidance, on the CPU.

Random weights saved once in upstream's file layout (speed only, not quality). Each bundle is made
as a user makes it, `fastervar export --checkpoint ... --vae-checkpoint ...` in a child process
(wall time, peak RSS against the fp32 weights), then its single-graph engine is timed against
the torch baseline, and against the same profile on torch, interleaved in one run through the
package's timing harness. So each row splits its speedup into the algorithm (the profile on
torch against the baseline) and the compiler (the bundle against the profile on torch). Bundles
are timed one at a time: each holds a copy of the weights, and a 24 GB machine cannot keep them
all beside the torch model.

    python benchmarks/infinity_runtime_speed.py --files out/inf2b \\
        --json benchmarks/results/infinity_runtime_2b_cpu.json
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import write_result
from export_cost import INFINITY_PN, ExportFailed, export_once, weight_bytes, write_files

from fastervar.accel.accelerated import AcceleratedModel
from fastervar.accel.presets import template
from fastervar.models.infinity.checkpoint import load_infinity_model
from fastervar.models.infinity.configs import INFINITY_CONFIGS
from fastervar.models.text.prompts import TextBatch
from fastervar.runtime.pipeline import Pipeline
from fastervar.timing import (
    PipelineRunner,
    TorchRunner,
    batches,
    interleaved,
    speedup,
    summarize,
)

VARIANTS = [("identity", "fp32"), ("infinity-paper-split", "fp32"), ("infinity-paper-split", "int8"),
            ("infinity-fastvar", "fp32")]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="infinity-2b", help="a named Infinity configuration")
    ap.add_argument("--files", type=Path, required=True, help="where the checkpoint files are kept (written once)")
    ap.add_argument("--work", type=Path, default=Path("out/inf2b-bundles"), help="bundles, deleted after timing")
    ap.add_argument("--reps", type=int, default=2, help="timed passes after the warm-up")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--pn", default=INFINITY_PN, help="the pixel budget exported and timed, at 1:1")
    ap.add_argument("--only", action="append", default=[], help="PROFILE:PRECISION variants to run (repeatable)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    name = args.model
    files = write_files(name, args.files)
    weights = weight_bytes(name)
    width = INFINITY_CONFIGS[name][0].text_channels
    prompt = args.files / "prompt.npz"
    if not prompt.exists():
        emb = np.random.default_rng(0).standard_normal((1, args.prompt_tokens, width), dtype=np.float32)
        np.savez(prompt, embeddings=emb, lengths=np.array([args.prompt_tokens]))
    with np.load(prompt) as data:
        emb, lengths = data["embeddings"], data["lengths"]
    bank = TextBatch(torch.from_numpy(emb), torch.from_numpy(lengths))
    rows, refused = [], []
    for profile, precision in VARIANTS:
        if args.only and f"{profile}:{precision}" not in args.only:
            continue
        out = args.work / f"{profile}-{precision}"
        shutil.rmtree(out, ignore_errors=True)
        # an int8 decoder calibrates on generations: two of the prompt, as a user would give prompts
        calib = ["--calib-embeddings", str(prompt), "--calib-images", "2"] if precision == "int8" else []
        try:
            cost = export_once(name, profile, out, args.files, precision, extra=calib, pn=args.pn)
        except ExportFailed as exc:           # e.g. refused for memory: recorded, the others still run
            why = str(exc).strip().splitlines()[-1]
            print(f"{profile:<22} {precision:<5} not measured: {why}")
            refused.append({"profile": profile, "precision": precision, "export_refused": why})
            continue
        cost["ratio"] = cost["peak_rss_bytes"] / weights
        t0 = time.perf_counter()
        model = load_infinity_model(files[1], files[3], name, 1.0, args.pn)
        loaded = time.perf_counter() - t0
        settings = model.default_settings()
        runners = {"baseline": TorchRunner(model, settings, prompts=bank)}
        if profile != "identity":
            runners["torch-profile"] = TorchRunner(AcceleratedModel(model, template(profile, model)), settings,
                                                   prompts=bank)
        pipe = Pipeline.from_bundle(out, verify=False)
        runners["bundle"] = PipelineRunner(pipe, prompts=[emb[0, :lengths[0]]])
        runs = interleaved(runners, batches([0], 0, 1), reps=args.reps, desc=f"{profile} {precision}")
        times = {name: summarize(passes) for name, passes in runs.items()}
        ref, got = runs["baseline"][0][0], runs["bundle"][0][0]
        row = {"profile": profile, "precision": precision, "export": cost, "model_load_seconds": loaded,
               "seconds": {name: t.seconds for name, t in times.items()},
               "speedup_total": speedup(runs["baseline"], runs["bundle"]),
               "algorithm": speedup(runs["baseline"], runs["torch-profile"]) if "torch-profile" in runs else 1.0,
               "bits_agree_with_baseline": [float((a == b).mean()) if a.size else None
                                            for a, b in zip(ref.tokens, got.tokens)]}
        row["compiler"] = row["speedup_total"] / row["algorithm"]
        rows.append(row)
        print(f"{profile:<22} {precision:<5} export {cost['seconds'] / 60:5.1f} min, peak {cost['peak_rss_bytes'] / 2**30:5.2f} "
              f"GiB ({cost['ratio']:.2f}x); baseline {row['seconds']['baseline']:6.1f} s, bundle "
              f"{row['seconds']['bundle']:6.1f} s: {row['speedup_total']:.2f}x = algorithm {row['algorithm']:.2f}x "
              f"x compiler {row['compiler']:.2f}x")
        del pipe, runners, model, runs
        gc.collect()
        shutil.rmtree(out, ignore_errors=True)
    print(f"\n{name} (fp32 weights {weights / 2**30:.2f} GiB), pn {args.pn} 1:1, batch 1 with guidance, "
          f"random weights; torch threads {torch.get_num_threads()}")
    print(f"{'profile':<22} {'prec':<5} {'export':>8} {'peak/weights':>12} {'baseline':>9} {'bundle':>8} "
          f"{'speedup':>8} {'algorithm':>9} {'compiler':>8}")
    for r in rows:
        print(f"{r['profile']:<22} {r['precision']:<5} {r['export']['seconds'] / 60:6.1f} m {r['export']['ratio']:>11.2f}x "
              f"{r['seconds']['baseline']:>8.1f}s {r['seconds']['bundle']:>7.1f}s {r['speedup_total']:>7.2f}x "
              f"{r['algorithm']:>8.2f}x {r['compiler']:>7.2f}x")
    result = {"model": name, "pn": args.pn, "aspect": "1:1", "batch": 1, "guided": True,
              "weights": "seeded random, from files in upstream's layout (speed only)", "weights_bytes": weights,
              "reps": args.reps, "rows": rows, "refused": refused, "command": " ".join(["python", *sys.argv])}
    write_result(args.json, result)
    return result


if __name__ == "__main__":
    main()
