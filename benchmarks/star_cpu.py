"""Where STAR's time goes on the CPU, per scale step, and what stable sampling costs.

STAR-d30 shapes at 256 px (the 10-scale schedule; seeded random weights, which do not change the
time), one prompt with guidance (batch 1, so 2 rows through the transformer), the official
sampler as upstream runs it (cfg 4.0, top-k 600, top-p 0.8). Two variants share the weights,
interleaved through the timing harness:
- `sampler`: the model with the sampler head, which fills scale 9 (16x16, the last at 256 px) by
  stable sampling (8 sub-steps: 5 from the main head, 3 through the 3-block sampler head);
- `plain`: the same transformer on `sample.py`'s path, one draw per scale.
The stable-sampling share is the sampler variant's extra time at its stable scales over its total.

    python benchmarks/star_cpu.py --json benchmarks/results/star_cpu.json
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch
from common import write_result

from fastervar.models.loading import seed_module_
from fastervar.models.star.configs import StarPair, get_pair
from fastervar.models.star.family import StarModel
from fastervar.models.star.text import StarText
from fastervar.models.sampling import SamplingSettings
from fastervar.timing import TorchRunner, batches, interleaved


def models(name: str) -> dict[str, StarModel]:
    """The sampler model and the plain one, sharing one set of seeded weights."""
    pair = get_pair(name)
    sampler = StarModel(StarPair(f"{name} + sampler head", replace(pair.star, sampler_head=True), pair.vae))
    seed_module_(sampler.star, 1)
    seed_module_(sampler.vae, 2)
    plain = StarModel(pair)
    plain.star, plain.vae = sampler.star, sampler.vae
    return {"sampler": sampler.eval(), "plain": plain.eval()}


def prompts(channels: int, length: int = 12) -> StarText:
    gen = torch.Generator().manual_seed(0)
    mask = (torch.arange(77) < length).long()[None]
    null_mask = (torch.arange(77) < 2).long()[None]
    return StarText(torch.randn(1, 77, channels, generator=gen), torch.randn(1, channels, generator=gen), mask,
                    torch.randn(1, 77, channels, generator=gen), torch.randn(1, channels, generator=gen), null_mask)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="star-256-d30", help="A named STAR configuration (its shapes).")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--json", help="Write the results here.")
    args = ap.parse_args()

    t0 = time.perf_counter()
    variants = models(args.model)
    build_seconds = time.perf_counter() - t0
    settings = SamplingSettings(cfg=4.0, top_k=600, top_p=0.8, sampler="official")
    text = prompts(variants["sampler"].cfg.text_channels)
    runners = {name: TorchRunner(m, settings, prompts=text) for name, m in variants.items()}
    passes = interleaved(runners, batches([0], seed=42, batch_size=1), reps=args.reps)

    first = variants["sampler"].stable_from()
    steps = {name: np.median([[*r[0].step_seconds, r[0].decode_seconds] for r in runs], axis=0)
             for name, runs in passes.items()}
    totals = {name: float(s.sum()) for name, s in steps.items()}
    stable_extra = float((steps["sampler"][first:-1] - steps["plain"][first:-1]).sum())
    pns = variants["sampler"].patch_nums
    print(f"{args.model} shapes, 256 px, batch 1 (2 rows), official sampler, median of {args.reps}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'step':>5} {'grid':>6} {'sampler s':>10} {'plain s':>9}")
    for k, pn in enumerate(pns):
        mark = " stable" if k >= first else ""
        print(f"{k:>5} {pn:>3}x{pn:<2} {steps['sampler'][k]:>10.3f} {steps['plain'][k]:>9.3f}{mark}")
    print(f"{'VAE':>5} {'':>6} {steps['sampler'][-1]:>10.3f} {steps['plain'][-1]:>9.3f}")
    print(f"total: sampler {totals['sampler']:.2f} s, plain {totals['plain']:.2f} s; stable sampling adds "
          f"{stable_extra:.2f} s, {100 * stable_extra / totals['sampler']:.1f}% of the sampler model's time")
    if args.json:
        write_result(args.json, {
            "model": args.model, "resolution": 256, "batch": 1, "settings": {"cfg": 4.0, "top_k": 600, "top_p": 0.8,
                                                                             "sampler": "official"},
            "reps": args.reps, "stable_from": first, "patch_nums": list(pns),
            "step_seconds": {name: [float(x) for x in s[:-1]] for name, s in steps.items()},
            "decode_seconds": {name: float(s[-1]) for name, s in steps.items()},
            "total_seconds": totals, "stable_sampling_seconds": stable_extra,
            "stable_sampling_share": stable_extra / totals["sampler"], "build_seconds": build_seconds,
            "command": "python benchmarks/star_cpu.py" + (f" --json {args.json}" if args.json else ""),
        })


if __name__ == "__main__":
    main()
