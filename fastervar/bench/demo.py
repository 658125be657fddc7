"""`fastervar demo`: the whole product on the embedded model, into one folder.

calibrate (profile + report) -> export (bundle) -> run (one image per class, torch-free runtime)
-> bench (every variant side by side, with the model's shipped calibrated profiles, made at other
speeds, so that the peers have a profile of ours near their speed). Each stage writes atomically, so an interruption leaves
finished stages whole and nothing half-written.
"""

from __future__ import annotations

import time
from pathlib import Path

from tqdm.auto import tqdm

from ..assets import EMBEDDED_MODEL_NAME
from ..calibrate.run import CalibrationRequest, calibrate
from ..evaluate.judge import shipped_judge
from ..export.bundle import export_bundle
from ..models.checkpoint import weights_sha256
from ..models.loading import shipped_model
from ..models.sampling import SamplingSettings
from ..profile import identity
from ..profiles import resolve, shipped
from ..utils.images import image_folder, write_pngs
from .command import bench, runtime_variants


def run_demo(out: Path, seeds: list[int], max_quality_drop: float, images: int,
             model_name: str | None = None, max_accuracy_drop: float = 0.1) -> list[str]:
    """Run the four stages on a shipped model (the embedded one by default); returns the summary
    lines the CLI prints."""
    t0 = time.perf_counter()
    model = shipped_model(model_name or EMBEDDED_MODEL_NAME)
    settings = SamplingSettings()
    classes = list(range(model.cfg.var.num_classes))

    tqdm.write("[1/4] calibrate: measure the baseline, search profiles")
    profile, cal_report = calibrate(model, CalibrationRequest(
        classes=classes, seeds=seeds, settings=settings, out=out / "profile.json", report_dir=out / "calibration",
        cache_dir=out / ".cache", max_quality_drop=max_quality_drop, max_accuracy_drop=max_accuracy_drop, batch=16,
        name=f"{model.cfg.name}-demo",
        judge=shipped_judge()))
    tqdm.write("[2/4] export: ONNX graphs with the profile baked in (and the identity profile, for attribution)")
    sha = weights_sha256(model)
    bundle = export_bundle(model, profile, out / "bundle", settings, max_batch=16, weights_sha256=sha)
    identity_bundle = export_bundle(model, identity(model), out / "bundle-identity", settings, max_batch=16,
                                    weights_sha256=sha)
    tqdm.write("[3/4] run: one image per class on the torch-free runtime")
    pipes = runtime_variants(bundle, "cpu", identity_bundle)
    gen = pipes["bundle"].generate(classes, seed=0)
    with image_folder(out / "images") as stage:
        write_pngs(gen.images, stage)
    tqdm.write("[4/4] bench: baseline, accelerated, bundle, the shipped calibrated profiles and the peers side by side")
    # the model's shipped calibrated profiles, made at other speeds, for the equal-speed table
    shipped_ours = [resolve(n) for n in sorted(shipped())
                    if n.startswith(f"{model.cfg.name}-calibrated") and n != profile.name]
    result, report = bench(model, profile, pipes, settings, images, 0, 16, out / "bench", "full", compare=shipped_ours,
                           judge=shipped_judge())
    rows = result["variants"]
    b = rows["bundle"]
    split = result["attribution"]
    return [
        f"profile:            {out / 'profile.json'} (calibration report {cal_report})",
        f"bundle:             {bundle}",
        f"images:             {out / 'images'} ({len(gen.images)} PNGs from the runtime)",
        f"bench:              {report}",
        (f"bundle vs baseline: {b['speedup_total']:.2f}x end to end; paired SSIM {b['paired_ssim']:.3f}; class accuracy {rows['baseline']['class_accuracy']:.3f} -> "
         f"{b['class_accuracy']:.3f}; FD {rows['baseline']['frechet_distance']:.1f} -> {b['frechet_distance']:.1f}"),
        (f"of which:           compiler {split['compiler']:.2f}x (identity bundle vs torch) x algorithm "
         f"{split['algorithm']:.2f}x (profile vs identity, both bundles)"),
        f"done in {time.perf_counter() - t0:.0f} s",
    ]
