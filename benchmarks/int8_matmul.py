"""Does int8 pay on this CPU? A bare onnxruntime MatMul (fp32) against MatMulInteger (uint8 x
int8, the kernel int8 bundles run) at a transformer linear's shape, interleaved through the one
timing harness. Where the CPU has no int8 dot-product instructions (VNNI, AMX) the two are about
as fast, and an int8 bundle is only smaller.

    python benchmarks/int8_matmul.py --json benchmarks/results/int8_matmul_cpu.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort
from common import write_result
from onnx import TensorProto, helper

from fastervar.timing import Batch, Run, interleaved, summarize
from fastervar.utils.machine import cpu_model, int8_instructions


def _session(op: str, m: int, k: int, n: int, threads: int) -> tuple[ort.InferenceSession, dict]:
    rng = np.random.default_rng(0)
    if op == "MatMul":
        x, w, kind = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32), TensorProto.FLOAT
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
        out_type, extra = TensorProto.FLOAT, []
    else:
        x = rng.integers(0, 256, (m, k), dtype=np.uint8)
        w, kind = rng.integers(-127, 128, (k, n), dtype=np.int8), TensorProto.UINT8
        nodes = [helper.make_node("MatMulInteger", ["x", "w", "zp"], ["y"])]
        out_type, extra = TensorProto.INT32, [helper.make_tensor("zp", TensorProto.UINT8, [], [128])]
    graph = helper.make_graph(nodes, op, [helper.make_tensor_value_info("x", kind, [m, k])],
                              [helper.make_tensor_value_info("y", out_type, [m, n])],
                              [helper.make_tensor("w", TensorProto.FLOAT if op == "MatMul" else TensorProto.INT8,
                                                  [k, n], w.flatten().tolist())] + extra)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]), {"x": x}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="512,1024,4096", help="M,K,N: tokens x inputs x outputs (VAR-d16's fc1)")
    ap.add_argument("--calls", type=int, default=20, help="products per timed batch")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    m, k, n = (int(v) for v in args.shape.split(","))
    runners = {}
    for op in ("MatMul", "MatMulInteger"):
        session, feeds = _session(op, m, k, n, args.threads)

        def run(batch: Batch, session=session, feeds=feeds) -> Run:
            for _ in range(args.calls):
                session.run(None, feeds)
            return Run(np.zeros((1, 1, 1, 3), np.uint8), [], [], 0.0)
        runners[op] = run
    runs = interleaved(runners, [Batch((0,), ((0, 0),), 0)], reps=args.reps, progress=False)
    ops = 2 * m * k * n * args.calls
    rates = {op: ops / summarize(passes).seconds / 1e9 for op, passes in runs.items()}
    result = {"shape": [m, k, n], "threads": args.threads, "gops": rates,
              "int8_over_fp32": rates["MatMulInteger"] / rates["MatMul"]}
    print(f"{cpu_model()} ({', '.join(int8_instructions()) or 'no int8 instructions'}), {args.threads} threads, "
          f"{m}x{k} @ {k}x{n}: MatMul {rates['MatMul']:.0f} GOP/s, MatMulInteger {rates['MatMulInteger']:.0f} "
          f"GOP/s ({result['int8_over_fp32']:.2f}x)")
    write_result(args.json, result)
    return result


if __name__ == "__main__":
    main()
