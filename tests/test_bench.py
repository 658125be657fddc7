"""`fastervar bench` and `fastervar demo`: same prompts and noise for every variant, a report whose
figures are bench.json's, and bad arguments refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from fastervar.bench import demo as demo_mod
from fastervar.bench.report import equal_speed, equal_speed_table, table
from fastervar.cli import main
from fastervar.memory import PeakMemory
from fastervar.profiles import resolve

from .test_cli import assert_bad_input
from .test_export import interrupt_trace


def run(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    r = run("bench", "--model", "fashion-tiny", "--images", "20", "--batch-size", "10", "--compare", "fashion-tiny-calibrated-fast", "--reps", "2",
            "--out", str(d / "report"), "--json", str(d / "b.json"))
    assert r.exit_code == 0, r.output
    return d


def test_bench_runs_every_variant_on_the_same_noise(bench_dir):
    res = json.loads((bench_dir / "b.json").read_text())
    rows = res["variants"]
    assert list(rows) == ["baseline", "accelerated", "bundle-identity", "bundle", "bundle-steps", "calibrated-fast",
                          "fastvar", "skipvar-skip1", "skipvar-skip2", "skipvar-uncond3"]
    assert res["timed_passes"] == 2 and [r["peer"] for r in rows.values()] == [False] * 6 + [True] * 4
    # the identity bundle is the baseline compiled: the same tokens, images within one level
    assert rows["bundle-identity"]["paired_psnr"] > 40 and rows["bundle-identity"]["paired_ssim"] > 0.99
    assert rows["bundle-identity"]["class_accuracy"] == rows["baseline"]["class_accuracy"]
    split = res["attribution"]
    assert split["compiler"] == rows["bundle-identity"]["speedup_total"]
    assert split["compiler"] * split["algorithm"] == pytest.approx(rows["bundle"]["speedup_total"])
    # the bundle is the accelerated profile on another backend: same tokens, so the same images
    for b in ("bundle", "bundle-steps"):
        assert abs(rows[b]["paired_ssim"] - rows["accelerated"]["paired_ssim"]) < 1e-3
        assert rows[b]["class_accuracy"] == rows["accelerated"]["class_accuracy"]
    assert rows["bundle"]["graph_seconds"] > 0 and rows["bundle"]["speedup_transformer"] is None
    assert rows["bundle-steps"]["graph_seconds"] == 0 and sum(rows["bundle-steps"]["step_seconds"]) > 0
    for name, r in rows.items():
        assert len(r["step_seconds"]) == 7 and r["seconds_total"] > 0
        assert r["class_accuracy"] is not None and r["frechet_distance"] is not None
        if name != "baseline":
            assert 0 < r["paired_ssim"] <= 1
    assert rows["skipvar-skip1"]["step_seconds"][6] < rows["baseline"]["step_seconds"][6]   # the skipped step
    env = res["environment"]           # int8 speed depends on the CPU: every record names it
    assert env["cpu"] and isinstance(env["int8_instructions"], list) and env["onnxruntime"].startswith("onnxruntime")
    assert env["device"] == "cpu" and env["gpu"] is None and env["torch_threads"] >= 1


def test_bench_report_matches_json(bench_dir):
    rep = bench_dir / "report"
    res = json.loads((rep / "bench.json").read_text())
    assert res == json.loads((bench_dir / "b.json").read_text())
    md = (rep / "report.md").read_text()
    assert table(res) in md
    assert f"compiler {res['attribution']['compiler']:.2f}x" in md
    for png in ("steps.png", "front.png", "grid.png"):
        assert (rep / png).stat().st_size > 1000
    assert (rep / "bundle" / "manifest.json").exists()


def test_bench_random_weights_is_speed_only(tmp_path):
    r = run("bench", "--model", "tiny", "--random-weights", "--images", "4", "--batch-size", "2", "--no-peers",
            "--out", str(tmp_path / "r"))
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "r" / "bench.json").read_text())["variants"]
    assert list(rows) == ["baseline", "accelerated", "bundle-identity", "bundle", "bundle-steps"]
    assert all("paired_ssim" not in r and "class_accuracy" not in r for r in rows.values())


def test_bench_bad_arguments(bench_dir, tmp_path):
    out = str(tmp_path / "o")
    assert_bad_input(run("bench", "--model", "fashion-tiny", "--profile", "nope", "--out", out), "nope")
    assert_bad_input(run("bench", "--model", "fashion-tiny", "--profile", "d16-paper-split", "--out", out), "made for another model")
    assert_bad_input(run("bench", "--model", "fashion-tiny", "--bundle", str(tmp_path), "--no-bundle", "--out", out), "contradict")
    assert_bad_input(run("bench", "--model", "fashion-tiny", "--no-bundle", "--compare", "fashion-tiny-calibrated", "--out", out),
                     "already in the bench")
    assert_bad_input(run("bench", "--model", "fashion-tiny", "--no-bundle", "--compare", "d16-paper-split", "--out", out), "made for another model")
    bundle = str(bench_dir / "report" / "bundle")
    assert_bad_input(run("bench", "--model", "fashion-tiny", "--bundle", bundle, "--cfg", "3", "--out", out), "cfg 1.5 (asked 3.0)")
    assert_bad_input(run("bench", "--model", "fashion-tiny", "--bundle", bundle, "--profile", "fashion-tiny-skipvar-skip1", "--out", out),
                     "was exported with profile 'fashion-tiny-calibrated'")
    assert_bad_input(run("bench", "--model", "fashion-tiny", "--bundle", bundle, "--identity-bundle", bundle, "--out", out),
                     "not the identity profile")
    r = run("bench", "--model", "fashion-tiny", "--images", "1", "--out", out)
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_peak_memory_sees_an_allocation():
    with PeakMemory() as m:
        block = np.ones(64 * 2**20 // 8)            # 64 MiB, touched
        block.sum()
    assert m.peak_bytes is not None and m.peak_bytes >= 48 * 2**20


def quick_calibrate(model, request):
    """Calibration itself is covered in test_profile_cli: the shipped profile, written where the
    demo's request says."""
    from fastervar.calibrate.run import CalibrationRequest
    assert isinstance(request, CalibrationRequest) and request.max_quality_drop is not None
    prof = resolve(f"{model.cfg.name}-calibrated")
    prof.save(request.out)
    return prof, request.report_dir / "report.md"


def test_demo_runs_every_stage_and_compares_both_peers_at_equal_speed(tmp_path, monkeypatch):
    monkeypatch.setattr(demo_mod, "calibrate", quick_calibrate)
    r = run("demo", "--model", "fashion-tiny", "--out", str(tmp_path / "d"), "--seeds", "0", "--images", "20")
    assert r.exit_code == 0, r.output
    d = tmp_path / "d"
    assert len(list((d / "images").glob("*.png"))) == 10 and (d / "bundle" / "manifest.json").exists()
    res = json.loads((d / "bench" / "bench.json").read_text())
    assert "calibrated-fast" in res["variants"]
    assert {row["peer"] for row in res["equal_speed"]} == {"fastvar", "skipvar-skip1", "skipvar-skip2", "skipvar-uncond3"}
    assert "bundle vs baseline:" in r.output and "compiler" in r.output
    assert (d / "bundle-identity" / "manifest.json").exists() and "bundle-identity" in res["variants"]


def test_interrupted_demo_leaves_no_half_written_bundle(tmp_path, monkeypatch):
    monkeypatch.setattr(demo_mod, "calibrate", quick_calibrate)
    interrupt_trace(monkeypatch, 2)
    r = run("demo", "--model", "fashion-tiny", "--out", str(tmp_path / "d"), "--seeds", "0,1,2,3,4", "--images", "10")
    assert r.exit_code == 130
    d = tmp_path / "d"
    assert json.loads((d / "profile.json").read_text())["name"]        # the finished stage is whole
    leftovers = [p.name for p in d.iterdir()]
    assert "bundle" not in leftovers and not any(n.startswith(".bundle") for n in leftovers)
    assert not (d / "images").exists()


def _row(speed: float, ssim: float | None, fd: float | None, peer: bool = False) -> dict:
    return {"speedup_total": speed, "paired_ssim": ssim, "frechet_distance": fd, "class_accuracy": 0.5, "peer": peer}


def test_equal_speed_pairs_only_variants_within_ten_percent():
    res = {"variants": {"baseline": _row(1.0, None, 100.0), "accelerated": _row(1.1, 0.9, 120.0),
                        "fast": _row(1.75, 0.7, 300.0), "fastvar": _row(1.05, 0.8, 280.0, peer=True),
                        "skipvar-skip1": _row(1.6, 0.8, 380.0, peer=True), "slow-peer": _row(3.0, 0.5, 900.0, peer=True)}}
    rows = equal_speed(res)
    pairs = [(r["peer"], r["ours"], r["ours_better"]) for r in rows]
    # accelerated is within 10% of fastvar and better on both; fast is within 10% of skipvar-skip1
    # but worse on SSIM; nothing of ours runs near 3x, and the peers are never paired with each other
    assert pairs == [("fastvar", "accelerated", True), ("skipvar-skip1", "fast", False), ("slow-peer", None, None)]
    md = equal_speed_table(rows)
    assert "no variant of ours within 10%" in md and md.count("\n") == len(rows) + 1


def test_bench_compares_extra_profiles_at_equal_speed(bench_dir):
    res = json.loads((bench_dir / "b.json").read_text())
    assert {r["peer"] for r in res["equal_speed"]} == {"fastvar", "skipvar-skip1", "skipvar-skip2", "skipvar-uncond3"}
    assert "at equal measured speed" in (bench_dir / "report" / "report.md").read_text()
