"""`fastervar serve` under load: throughput and p50/p95 latency at several concurrencies, against
direct batched generation of the same images by the timing harness.

A local Ray Serve on 127.0.0.1 with one replica; each client sends one JSON request per image and
waits for its PNG, so concurrency is the number of requests in flight. The direct row is
`Pipeline.generate_items` over batches of the bundle's max batch, in one process, without HTTP.

    python benchmarks/serve_load.py --concurrency 1,8,32 --requests 96 --json benchmarks/results/serve_load_cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import ensure_bundle, load_model, load_profile, write_result

from fastervar.models.sampling import SamplingSettings
from fastervar.runtime.pipeline import Pipeline
from fastervar.serve import ServeOptions, free_port, serve_bundle, shutdown, start_ray
from fastervar.timing import PipelineRunner, batches, interleaved, summarize


def _request(url: str, item: tuple[int, int, int]) -> float:
    body = json.dumps({"class": item[0], "seed": item[1], "index": item[2]}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as r:
        r.read()
        if r.status != 200:
            raise SystemExit(f"request {item} answered {r.status}")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="fashion-tiny")
    ap.add_argument("--profile", default="fashion-tiny-calibrated")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests", type=int, default=96, help="requests per concurrency level")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--batch-wait-ms", type=float, default=20.0)
    ap.add_argument("--bundles", type=Path, default=Path("out/bundles"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    model = load_model(args.model)
    profile = load_profile(args.profile, model)
    bundle, _ = ensure_bundle(model, profile, args.bundles / f"{args.model}-{profile.name}-fp32",
                              SamplingSettings(), args.max_batch)
    del model
    items = [((7 * i) % 10, 0, i) for i in range(args.requests)]

    direct = interleaved({"direct": PipelineRunner(Pipeline.from_bundle(bundle))},
                         batches([c for c, _, _ in items], 0, args.max_batch), reps=3, progress=False)
    direct_s = summarize(direct["direct"]).seconds
    rows = {"direct": {"concurrency": None, "images_per_second": args.requests / direct_s,
                       "p50_ms": None, "p95_ms": None}}

    with tempfile.TemporaryDirectory(prefix="fvray", dir="/tmp") as root:
        start_ray(root)
        port = free_port()
        serve_bundle(ServeOptions(str(bundle), batch_wait_ms=args.batch_wait_ms), "127.0.0.1", port, 1, blocking=False)
        url = f"http://127.0.0.1:{port}/generate"
        try:
            _request(url, items[0])                          # warm the replica
            for c in (int(x) for x in args.concurrency.split(",")):
                t0 = time.perf_counter()
                with ThreadPoolExecutor(c) as pool:
                    lat = list(pool.map(lambda it: _request(url, it), items))
                wall = time.perf_counter() - t0
                q = statistics.quantiles(lat, n=20)
                rows[f"serve-c{c}"] = {"concurrency": c, "images_per_second": args.requests / wall,
                                       "p50_ms": 1e3 * statistics.median(lat), "p95_ms": 1e3 * q[18]}
            with urllib.request.urlopen(url.replace("/generate", "/stats"), timeout=30) as r:
                sizes = json.loads(r.read())["batches"]
        finally:
            shutdown()

    print(f"\n{args.model}, profile {profile.name}, {args.requests} images per row, max batch {args.max_batch}, "
          f"batch wait {args.batch_wait_ms:g} ms, one replica")
    print(f"{'row':>12} {'images/s':>9} {'vs direct':>10} {'p50 ms':>8} {'p95 ms':>8}")
    for name, r in rows.items():
        rel = r["images_per_second"] / rows["direct"]["images_per_second"]
        p50 = "" if r["p50_ms"] is None else f"{r['p50_ms']:.1f}"
        p95 = "" if r["p95_ms"] is None else f"{r['p95_ms']:.1f}"
        print(f"{name:>12} {r['images_per_second']:>9.1f} {rel:>9.2f}x {p50:>8} {p95:>8}")
    print(f"batch sizes the replica formed: mean {statistics.mean(sizes):.1f}, max {max(sizes)}")
    result = {"model": args.model, "profile": profile.name, "requests": args.requests, "max_batch": args.max_batch,
              "batch_wait_ms": args.batch_wait_ms, "rows": rows, "batch_sizes": sizes}
    write_result(args.json, result)
    return result


if __name__ == "__main__":
    main()
