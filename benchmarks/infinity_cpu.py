"""Where Infinity's time goes, per scale step: self-attention, cross-attention, FFN, the rest, and
the decoder. Infinity-2B shapes with seeded random weights (the values do not change the time).

On these CPUs the 2B model at `--pn 0.06M` (256x256) is what fits; on a GPU use `--device cuda
--pn 1M`. One image with guidance (batch 1, so 2 rows through the transformer), the official
sampler as upstream runs it.

    python benchmarks/infinity_cpu.py --json benchmarks/results/infinity_cpu.json
    python benchmarks/infinity_cpu.py --device cuda --pn 1M --reps 3
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from common import write_result

from fastervar.models.infinity.checkpoint import random_infinity
from fastervar.models.infinity.family import DEFAULT_SETTINGS
from fastervar.models.infinity.schedules import parse_aspect
from fastervar.models.sampler import batch_generator, generate_batch
from fastervar.models.text.prompts import TextBatch
from fastervar.utils.noise import image_keys

PARTS = ("self_attention", "cross_attention", "ffn")


class PartClock:
    """Wall time inside each block's self-attention, cross-attention and FFN, per scale step."""

    def __init__(self, model, device: torch.device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.step = 0
        self.seconds: dict[int, dict[str, float]] = defaultdict(lambda: dict.fromkeys(PARTS, 0.0))
        for blk in model.infinity.blocks:
            for part, module in zip(PARTS, (blk.sa, blk.ca, blk.ffn)):
                module.register_forward_pre_hook(self._start)
                module.register_forward_hook(self._stopper(part))
        self._t0 = 0.0

    def _start(self, *_):
        self.sync()
        self._t0 = time.perf_counter()

    def _stopper(self, part: str):
        def stop(*_):
            self.sync()
            self.seconds[self.step][part] += time.perf_counter() - self._t0
        return stop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="infinity-2b")
    ap.add_argument("--pn", default="0.06M")
    ap.add_argument("--aspect", default="1:1")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--prompt-tokens", type=int, default=32, help="Length of the (random) prompt embedding.")
    ap.add_argument("--reps", type=int, default=1, help="Timed generations (after one warm-up on a GPU).")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    device = torch.device(args.device)

    t0 = time.perf_counter()
    model = random_infinity(args.model, h_div_w=parse_aspect(args.aspect), pn=args.pn).to(device)
    build = time.perf_counter() - t0
    cfg = model.infinity.cfg
    emb = np.random.default_rng(0).standard_normal((1, args.prompt_tokens, cfg.text_channels), dtype=np.float32)
    text = TextBatch(torch.from_numpy(emb), torch.tensor([args.prompt_tokens]))
    settings = replace(DEFAULT_SETTINGS, sampler="official")
    clock = PartClock(model, device)

    def once():
        clock.seconds.clear()

        def on_step(k, state, out):
            clock.step = k + 1
        clock.step = 0
        with torch.no_grad():
            return generate_batch(model, text, settings, image_keys(0, [0]), batch_generator(settings, device, 0),
                                  on_step=on_step)

    if device.type == "cuda":
        once()
    runs = []
    for _ in range(args.reps):
        g = once()
        runs.append((g.step_seconds, g.decode_seconds, {k: dict(v) for k, v in clock.seconds.items()}))
    steps, decode, parts = runs[int(np.argmin([sum(r[0]) + r[1] for r in runs]))]      # the fastest run

    rows = []
    print(f"{args.model} ({sum(p.numel() for p in model.infinity.parameters()) / 1e9:.2f}B), {args.device}, "
          f"pn {args.pn}, aspect {args.aspect}, batch 1 with guidance, {torch.get_num_threads()} threads; "
          f"built in {build:.0f} s")
    print(f"{'step':>4} {'grid':>7} {'tokens':>6} {'seconds':>8} {'SA':>6} {'CA':>6} {'FFN':>6} {'other':>6}")
    for k, sec in enumerate(steps):
        p = parts.get(k, dict.fromkeys(PARTS, 0.0))
        other = sec - sum(p.values())
        h, w = model.schedule[k]
        rows.append({"step": k, "grid": [h, w], "tokens": h * w, "seconds": sec, **p, "other": other})
        print(f"{k:>4} {f'{h}x{w}':>7} {h * w:>6} {sec:>8.3f} " +
              " ".join(f"{p[x] / sec:>6.0%}" for x in PARTS) + f" {other / sec:>6.0%}")
    total = sum(steps) + decode
    shares = {x: sum(r[x] for r in rows) / total for x in (*PARTS, "other")}
    shares["decoder"] = decode / total
    print(f"decoder {decode:.3f} s; total {total:.3f} s = " +
          ", ".join(f"{k} {v:.0%}" for k, v in shares.items()))
    write_result(args.json, {"model": args.model, "device": args.device, "pn": args.pn, "aspect": args.aspect,
                             "threads": torch.get_num_threads(), "batch": 1, "guided": True, "steps": rows,
                             "decode_seconds": decode, "total_seconds": total, "shares": shares,
                             "command": "python benchmarks/infinity_cpu.py " +
                                        f"--model {args.model} --pn {args.pn} --device {args.device}"})


if __name__ == "__main__":
    main()
