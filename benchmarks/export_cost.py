"""What `fastervar export` costs: wall time and peak memory, against the model's weights.

Each export runs as the user runs it (`fastervar export --model M --random-weights --profile P`) in
its own child process; its peak resident set is the high-water mark (VmHWM) the export itself
reports, and the ratio divides it by the bytes of the model's weights. (The child's ru_maxrss is
not used: Linux carries into it the resident set of the process that spawned it, so a benchmark
holding a loaded model inflated it: 19.6 GiB for an Infinity-2B export whose own VmHWM was 10.2.) A model too large for this
machine is not exported: its peak is projected from the largest measured ratio.

    python benchmarks/export_cost.py --models d16 --profiles d16-paper-split,identity \\
        --project d30,d36 --json benchmarks/results/export_cost_cpu.json

From checkpoint files as users have them (upstream's names; loading maps them instead of reading a
second copy of the weights), at each precision:

    python benchmarks/export_cost.py --models d16 --from-files out/d16files --precisions fp32,int8 \\
        --project "" --json benchmarks/results/export_cost_files_cpu.json

Infinity-2B at full depth (8.8 GB of fp32 weights), from its files, at the 0.06M budget and one aspect:

    python benchmarks/export_cost.py --models infinity-2b --from-files out/inf2b --profiles \\
        infinity-paper-split,identity --precisions fp32,int8 --project "" \\
        --json benchmarks/results/export_cost_infinity2b_cpu.json
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from common import write_result

from fastervar.memory import available_bytes
from fastervar.models.var.configs import get_config
from fastervar.models.var.family import VARModel

INFINITY_PN = "0.06M"      # an Infinity export is asked for this budget at 1:1, unless told otherwise


def weight_bytes(name: str) -> int:
    """The fp32 bytes of a named model's tensors, counted on the meta device (no memory)."""
    with torch.device("meta"):
        if name.startswith("infinity"):
            from fastervar.models.infinity.bsq import BSQVAE
            from fastervar.models.infinity.configs import INFINITY_CONFIGS
            from fastervar.models.infinity.transformer import Infinity
            t_cfg, v_cfg = INFINITY_CONFIGS[name]
            parts = (Infinity(t_cfg), BSQVAE(v_cfg))
        else:
            model = VARModel(get_config(name))
            parts = (model.var, model.vae)
    return sum(t.numel() * 4 for part in parts for t in part.state_dict().values())


def write_files(model: str, folder: Path) -> list[str]:
    """The model's seeded random weights as two files in upstream's layout and names (written once),
    so that an export reads checkpoints as users have them; returns the export's options for them."""
    if model.startswith("infinity"):
        main, vae = folder / f"{model.replace('-', '_')}_reg.pth", folder / "infinity_vae_d32reg.pth"
    else:
        main, vae = folder / f"var_{model}.pth", folder / "vae_ch160v4096z32.pth"
    if not (main.exists() and vae.exists()):
        folder.mkdir(parents=True, exist_ok=True)
        if model.startswith("infinity"):
            from fastervar.models.infinity.checkpoint import random_infinity
            m = random_infinity(model)
            torch.save(m.infinity.state_dict(), main)
            torch.save({"vae": m.vae.state_dict()}, vae)
        else:
            from fastervar.models.loading import random_model
            m = random_model(model)
            torch.save(m.var.state_dict(), main)
            torch.save(m.vae.state_dict(), vae)
        del m
    return ["--checkpoint", str(main), "--vae-checkpoint", str(vae)]


class ExportFailed(SystemExit):
    """An export that exited non-zero (a benchmark of several variants may record it and go on)."""


def export_once(model: str, profile: str, out: Path, files: Path | None = None, precision: str = "fp32",
                extra: Sequence[str] = (), pn: str = INFINITY_PN) -> dict:
    """One export in a child process, with `extra` options: its wall time, peak RSS and bundle size.
    An int8 Infinity export without them keeps its decoder fp32 (its calibration needs prompts)."""
    exe = Path(sys.executable).with_name("fastervar")
    source = ["--model", model, "--random-weights"] if files is None else write_files(model, files)
    shape = ["--pn", pn, "--aspect", "1:1"] if model.startswith("infinity") else []
    if not extra and model.startswith("infinity") and precision == "int8":
        extra = ["--decoder-precision", "fp32"]
    cmd = [str(exe), "export", *source, *shape, "--profile", profile, "--precision", precision, *extra,
           "--out", str(out)]
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - t0
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise ExportFailed(f"export failed ({' '.join(cmd)}):\n{output[-2000:]}")
    print(output.strip().splitlines()[-1])
    size = sum(f.stat().st_size for f in out.iterdir())
    reported = re.search(r"peak memory ([0-9.]+) GiB", output)
    peak = round(float(reported.group(1)) * 2**30) if reported else usage.ru_maxrss * 1024
    return {"seconds": seconds, "peak_rss_bytes": peak, "bundle_bytes": size,
            "peak_source": "the export's VmHWM" if reported else "ru_maxrss"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="d16", help="comma-separated named models to export (random weights)")
    ap.add_argument("--profiles", default="MODEL-paper-split,identity",
                    help="comma-separated profiles; MODEL stands for the model's name")
    ap.add_argument("--project", default="d30", help="models whose peak is projected, not measured")
    ap.add_argument("--work", type=Path, default=None, help="where bundles are written (default: a temp dir)")
    ap.add_argument("--from-files", type=Path, default=None, metavar="DIR",
                    help="export from checkpoint files in upstream's layout kept in DIR (written there once "
                         "from seeded random weights), as users do, instead of --random-weights")
    ap.add_argument("--precisions", default="fp32", help="comma-separated: fp32, fp16, int8")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="fastervar-export-cost-"))
    rows = []
    for model in args.models.split(","):
        weights = weight_bytes(model)
        for spec in args.profiles.split(","):
            for precision in args.precisions.split(","):
                profile = spec.replace("MODEL", model)
                out = work / f"{model}-{profile}-{precision}"
                row = {"model": model, "profile": profile, "precision": precision, "weights_bytes": weights,
                       "source": "random weights" if args.from_files is None else "checkpoint files",
                       **export_once(model, profile, out, args.from_files, precision)}
                row["ratio"] = row["peak_rss_bytes"] / weights
                rows.append(row)
                shutil.rmtree(out, ignore_errors=True)
    worst = max(r["ratio"] for r in rows)
    projected = []
    for model in filter(None, args.project.split(",")):
        weights = weight_bytes(model)
        projected.append({"model": model, "weights_bytes": weights, "projected_peak_bytes": worst * weights})

    print(f"\n{'model':<6} {'profile':<20} {'prec':<5} {'weights':>9} {'wall':>8} {'peak RSS':>9} {'ratio':>6} {'bundle':>9}")
    for r in rows:
        print(f"{r['model']:<6} {r['profile']:<20} {r['precision']:<5} {r['weights_bytes'] / 2**30:>7.2f} G "
              f"{r['seconds'] / 60:>6.1f} m "
              f"{r['peak_rss_bytes'] / 2**30:>7.2f} G {r['ratio']:>5.2f}x {r['bundle_bytes'] / 2**30:>7.2f} G")
    free = available_bytes()
    for p in projected:
        fits = "" if free is None else (" (fits here)" if p["projected_peak_bytes"] < free else " (more than this machine has)")
        print(f"{p['model']:<6} {'projected':<20} {'':<5} {p['weights_bytes'] / 2**30:>7.2f} G {'':>8} "
              f"{p['projected_peak_bytes'] / 2**30:>7.2f} G {worst:>5.2f}x{fits}")
    write_result(args.json, {"command": " ".join(sys.argv), "cpus": os.cpu_count(),
                             "torch": torch.__version__, "rows": rows, "projected": projected})


if __name__ == "__main__":
    main()
