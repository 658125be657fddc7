"""Upstream VAR's own sampler against ours, on the same weights, in one process, interleaved.

Variants, all through the package's timing harness (warm-up at the timed batch size, then
batch by batch in turn):
    upstream            FoundationVision/VAR `autoregressive_infer_cfg`, from the clone given
    official            our baseline with the official sampler: upstream's images, checked here
    baseline            our baseline as the product runs it (portable sampler)
    accelerated         the profile (default MODEL-paper-split) in torch
    bundle-identity     the identity profile exported, on onnxruntime (one graph)
    bundle              the profile exported, on onnxruntime (one graph)
Speedups are against `upstream`. Bundles are exported once into --bundles and reused; the graph
check prints what they ask of TensorRT (noise shapes, largest TopK).

    pip install huggingface_hub          # upstream imports it
    python benchmarks/upstream_speed.py --upstream-src ~/VAR --model d16 --batches 1,16 --reps 2 --json out/upstream.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from common import ensure_bundle, graph_checks, load_model, load_profile, write_result

from fastervar.accel.accelerated import AcceleratedModel
from fastervar.bench.upstream import UpstreamRunner, load_upstream
from fastervar.models.sampling import SamplingSettings
from fastervar.profile import check_against, identity
from fastervar.runtime.pipeline import Pipeline
from fastervar.timing import PipelineRunner, TorchRunner, batches, first_pass, interleaved, speedup, summarize


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream-src", type=Path, required=True, help="a clone of FoundationVision/VAR")
    ap.add_argument("--model", default="d16", help="named official config (random weights)")
    ap.add_argument("--profile", default=None, help="profile file or shipped name [default: MODEL-paper-split]")
    ap.add_argument("--batches", default="1,16", help="batch sizes, comma-separated")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="threads for torch and for each ORT session")
    ap.add_argument("--bundles", type=Path, default=Path("out/bundles"), help="where the bundles are exported once")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [int(b) for b in args.batches.split(",")]
    model = load_model(args.model)                     # ours first: building upstream turns init off
    profile = load_profile(args.profile, model)
    check_against(profile, model.cfg)
    upstream = load_upstream(args.upstream_src, model)
    settings = SamplingSettings(cfg=1.5, top_k=900, top_p=0.96)
    official = SamplingSettings(cfg=1.5, top_k=900, top_p=0.96, sampler="official")
    paths = {}
    for name, prof in (("bundle-identity", identity(model.cfg)), ("bundle", profile)):
        paths[name], _ = ensure_bundle(model, prof, args.bundles / f"{args.model}-{prof.name}-b{max(sizes)}",
                                       settings, max(sizes))
    checks = {name: graph_checks(path) for name, path in paths.items()}
    runners = {"upstream": UpstreamRunner(upstream, official), "official": TorchRunner(model, official),
               "baseline": TorchRunner(model, settings),
               "accelerated": TorchRunner(AcceleratedModel(model, profile), settings)}
    runners.update({name: PipelineRunner(Pipeline.from_bundle(path, threads=args.threads))
                    for name, path in paths.items()})
    result = {"model": args.model, "profile": profile.name, "threads": args.threads, "reps": args.reps,
              "upstream_src": str(args.upstream_src), "graph_checks": checks, "sections": []}
    for batch in sizes:
        classes = [(7 * i) % model.cfg.var.num_classes for i in range(batch)]
        runs = interleaved(runners, batches(classes, 0, batch), reps=args.reps, desc=f"batch {batch}")
        same = np.abs(first_pass(runs["upstream"]).images.astype(int) - first_pass(runs["official"]).images.astype(int))
        section = {"batch": batch, "official_vs_upstream_max_diff": int(same.max()), "variants": {}}
        print(f"\n{args.model} (random weights), batch {batch}, {args.threads} threads, {args.reps} reps, "
              f"profile {profile.name}; our official sampler vs upstream: images within {int(same.max())} level(s)")
        print(f"{'variant':<16} {'s/image':>9} {'vs upstream':>12} {'vs baseline':>12}")
        for name, passes in runs.items():
            t = summarize(passes)
            row = {"seconds_per_image": t.seconds / batch, "passes": t.passes,
                   "speedup_vs_upstream": speedup(runs["upstream"], passes),
                   "speedup_vs_baseline": speedup(runs["baseline"], passes)}
            section["variants"][name] = row
            print(f"{name:<16} {row['seconds_per_image']:>9.3f} {row['speedup_vs_upstream']:>11.2f}x "
                  f"{row['speedup_vs_baseline']:>11.2f}x")
        v = section["variants"]
        section["attribution"] = {"compiler": v["bundle-identity"]["speedup_vs_baseline"],
                                  "algorithm": speedup(runs["bundle-identity"], runs["bundle"]),
                                  "total": v["bundle"]["speedup_vs_baseline"]}
        a = section["attribution"]
        print(f"bundle vs our baseline {a['total']:.2f}x = compiler {a['compiler']:.2f}x (identity bundle vs torch) "
              f"x algorithm {a['algorithm']:.2f}x (profile vs identity, both bundles)")
        result["sections"].append(section)
        write_result(args.json, result)
    return result


if __name__ == "__main__":
    main()
