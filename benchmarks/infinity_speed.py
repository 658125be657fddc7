"""Infinity's speed under our profiles and the peers' recipes, against our torch baseline.

Infinity-2B widths (2048, 16 heads, its BSQ VAE) at the 1M schedule (1:1, 13 scales up to 64x64),
batch 1 with guidance, on the CPU, with the depth reduced so that a generation runs here in
minutes (`--depth`; every block has the same shape, so a step's ratio is per block, but FastVAR's
literal block range 3..27 covers a different share of a shallower model: the table says which).
Seeded random weights: the figures are speed only, not quality.

Every variant runs through the package's timing harness (`timing.interleaved`, the runner `bench`
and `calibrate` use), interleaved pass by pass on the same prompt and noise, after a warm-up.
Rows: infinity-paper-split, infinity-fastvar, SkipVAR's six static points and its per-image
decision, and any profile given with --profile (say, one `fastervar calibrate` wrote for this
model). Each step's token budget is what the transformer runs: kept/total, 0 when skipped, `u` when
unguided.

    python benchmarks/infinity_speed.py --depth 8 --reps 1 --json benchmarks/results/infinity_speed_cpu.json

A calibrated row, as a user makes one: save this model and its prompt in upstream's file layout,
calibrate on them with the CLI, and time the profile against the baseline:

    python benchmarks/infinity_speed.py --depth 8 --save-model out/inf8
    fastervar calibrate --checkpoint out/inf8/infinity.pth --vae-checkpoint out/inf8/vae.pth \
        --text-embeddings out/inf8/prompt.npz --pn 1M --seeds 0 --batch-size 1 --cost-model flops \
        --target-speedup 3 --out out/inf8/calibrated.json --cache-dir out/inf8/cache
    python benchmarks/infinity_speed.py --depth 8 --profile out/inf8/calibrated.json --only calibrated \
        --json benchmarks/results/infinity_speed_calibrated_cpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from common import write_result

from fastervar.accel.accelerated import AcceleratedModel
from fastervar.accel.presets import paper_split, peers
from fastervar.models.infinity.bsq import BSQVAE
from fastervar.models.infinity.checkpoint import config_name
from fastervar.models.infinity.configs import INFINITY_CONFIGS
from fastervar.models.infinity.family import InfinityModel
from fastervar.models.infinity.schedules import parse_aspect
from fastervar.models.infinity.transformer import Infinity
from fastervar.models.loading import seed_module_
from fastervar.models.text.prompts import TextBatch
from fastervar.profile import Profile, load
from fastervar.timing import TorchRunner, batches, interleaved, speedup, summarize


def reduced_2b(depth: int, pn: str, aspect: str) -> InfinityModel:
    """Infinity-2B's shapes with `depth` blocks and seeded weights."""
    t_cfg, v_cfg = INFINITY_CONFIGS["infinity-2b"]
    t_cfg = dataclasses.replace(t_cfg, depth=depth, chunks=next(c for c in (8, 4, 2, 1) if depth % c == 0))
    with torch.no_grad():
        model = InfinityModel(seed_module_(Infinity(t_cfg), 1), seed_module_(BSQVAE(v_cfg), 2), parse_aspect(aspect),
                              pn, config_name(t_cfg, v_cfg))      # the name the CLI gives it, loaded from files
    return model.eval()


def budget(profile: Profile | None, model: InfinityModel, k: int) -> str:
    """What the transformer runs at step k under the profile."""
    n = model.tokens_at(k)
    if profile is None:
        return str(n)
    plan = profile.steps[k]
    if profile.decision is not None and k > profile.decision["after_step"]:
        return "per image"
    unguided = "" if plan.cfg else "u"
    if plan.mode == "skip":
        return "0"
    if plan.mode == "full":
        return f"{n}{unguided}"
    kept = plan.kept(n)
    where = f" in blocks {plan.layers[0]}-{plan.layers[1] - 1}" if plan.layers else ""
    return f"{kept}/{n}{where}{unguided}"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--pn", default="1M")
    ap.add_argument("--aspect", default="1:1")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=1, help="timed passes after the warm-up")
    ap.add_argument("--profile", action="append", default=[], help="another profile file (repeatable)")
    ap.add_argument("--only", action="append", default=[], help="run only these variants (repeatable)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--upstream-src", type=Path, metavar="DIR",
                    help="a FoundationVision/Infinity tree: its own sampler on the same weights is a row "
                         "(`upstream`, its official sampler)")
    ap.add_argument("--save-model", type=Path, metavar="DIR",
                    help="write the model (infinity.pth, vae.pth, upstream's layout) and the prompt (prompt.npz) "
                         "for `fastervar calibrate`, then stop")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    model = reduced_2b(args.depth, args.pn, args.aspect)
    built = time.perf_counter() - t0
    cfg = model.infinity.cfg
    emb = np.random.default_rng(0).standard_normal((1, args.prompt_tokens, cfg.text_channels), dtype=np.float32)
    bank = TextBatch(torch.from_numpy(emb), torch.tensor([args.prompt_tokens]))
    if args.save_model is not None:
        args.save_model.mkdir(parents=True, exist_ok=True)
        torch.save(model.infinity.state_dict(), args.save_model / "infinity.pth")
        torch.save({"vae": model.vae.state_dict()}, args.save_model / "vae.pth")
        np.savez(args.save_model / "prompt.npz", embeddings=emb, lengths=np.array([args.prompt_tokens]))
        print(f"wrote {args.save_model}: infinity.pth, vae.pth, prompt.npz")
        return {}
    settings = model.default_settings()          # Infinity's cfg 3, top-p 0.97, tau 0.5; the portable sampler
    profiles: dict[str, Profile | None] = {"baseline": None, "paper-split": paper_split(model)}
    profiles.update({p.name.removeprefix(f"{model.name}-"): p for p in peers(model)})
    profiles.update({Path(f).stem: load(f) for f in args.profile})
    if args.only:
        profiles = {k: v for k, v in profiles.items() if k == "baseline" or k in args.only}
    runners = {name: TorchRunner(model if p is None else AcceleratedModel(model, p), settings, prompts=bank)
               for name, p in profiles.items()}
    if args.upstream_src is not None:
        from fastervar.bench.upstream_infinity import UpstreamInfinityRunner, load_upstream
        net, vae, schedule = load_upstream(args.upstream_src, model)
        runners["upstream"] = UpstreamInfinityRunner(net, vae, schedule, settings, bank, model.vae.cfg.codebook_dim)
        profiles["upstream"] = None
    runs = interleaved(runners, batches([0], 0, 1), reps=args.reps, desc=f"{len(runners)} variants")
    times = {name: summarize(passes) for name, passes in runs.items()}
    base = times["baseline"]
    pruned = f"blocks 3..{min(27, args.depth - 1)}" if args.depth > 3 else "none of them"
    blocks = f"{args.depth} blocks (FastVAR's range 3..27 prunes {pruned})"
    print(f"\nInfinity-2B widths, {blocks}, pn {args.pn} {args.aspect}, batch 1 with guidance, random weights "
          f"(speed only); torch threads {torch.get_num_threads()}; built in {built:.0f} s")
    rows = {}
    for name, p in profiles.items():
        t = times[name]
        tokens = [budget(p, model, k) for k in range(model.num_steps)]
        # a step skipped (by the profile, or for this image by a decision) has no ratio
        per_step = [None if n == "0" or a < 1e-3 else b / a for b, a, n in zip(base.step_seconds, t.step_seconds,
                                                                                tokens)]
        rows[name] = {"profile": None if p is None else p.name, "seconds_total": t.seconds,
                      "seconds_steps": None if name == "upstream" else t.seconds_steps, "step_seconds": t.step_seconds,
                      "decode_seconds": t.decode_seconds,
                      "speedup_steps": None if name == "upstream" else speedup(runs["baseline"], runs[name], "steps"),
                      "speedup_total": speedup(runs["baseline"], runs[name]),
                      "speedup_per_step": per_step,
                      "tokens_per_step": tokens}
    print(f"\n{'variant':<16} {'steps s':>8} {'total s':>8} {'steps x':>8} {'total x':>8}")
    for name, r in rows.items():
        steps = "-" if r["seconds_steps"] is None else f"{r['seconds_steps']:.2f}"
        ratio = "-" if r["speedup_steps"] is None else f"{r['speedup_steps']:.2f}x"
        print(f"{name:<16} {steps:>8} {r['seconds_total']:>8.2f} {ratio:>8} {r['speedup_total']:>7.2f}x")
    print("\nper step: speedup against the baseline (token budget)")
    print(f"{'step':>4} {'grid':>6} " + " ".join(f"{name[:14]:>22}" for name in rows))
    for k in range(model.num_steps):
        h, w = model.grid(k)
        cells = []
        for r in rows.values():
            x = r["speedup_per_step"][k]
            shown = "-" if r["profile"] is None and x is None else ("skip" if x is None else f"{x:.2f}x")
            cells.append(f"{shown + ' (' + r['tokens_per_step'][k] + ')':>22}")
        print(f"{k:>4} {f'{h}x{w}':>6} " + " ".join(cells))
    result = {"model": "infinity-2b widths", "depth": args.depth, "pn": args.pn, "aspect": args.aspect, "batch": 1,
              "guided": True, "weights": "seeded random (speed only)", "reps": args.reps,
              "settings": dataclasses.asdict(settings), "grids": [list(model.grid(k)) for k in range(model.num_steps)],
              "variants": rows,
              "command": "python benchmarks/infinity_speed.py " + " ".join(argv if argv is not None else
                                                                            __import__("sys").argv[1:])}
    write_result(args.json, result)
    return result


if __name__ == "__main__":
    main()
