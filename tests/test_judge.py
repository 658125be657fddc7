"""Your own data, your own judge: model folders load without --model, `--judge DIR` scores with the
classifier `train-tiny` wrote for the user's data, and the shipped judge warns when it is asked to
score weights it was not made for."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from fastervar.assets import ROOT, shipped_model_dir
from fastervar.cli import main
from fastervar.evaluate.judge import CLASSIFIER, NOT_SHIPPED, REAL_IMAGES, STATS
from fastervar.models.loading import random_model, resolve_model
from fastervar.models.var.checkpoint import save_model_dir

from .test_cli import assert_bad_input


def run(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def shifted_judge(tmp_path_factory):
    """A judge folder laid out as `train-tiny --out` writes it, whose classifier calls every class
    c what the shipped one calls c - 1: scores made with it differ from the shipped judge's."""
    d = tmp_path_factory.mktemp("judge")
    (d / "classifier").mkdir()
    sd = load_file(str(ROOT / CLASSIFIER))
    sd["out.weight"], sd["out.bias"] = sd["out.weight"].roll(1, 0).contiguous(), sd["out.bias"].roll(1, 0).contiguous()
    save_file(sd, str(d / CLASSIFIER))
    shutil.copy(ROOT / STATS, d / STATS)
    shutil.copy(ROOT / REAL_IMAGES, d / REAL_IMAGES)
    return d


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory):
    """The shipped weights copied into a folder of the user's, as if they had trained them."""
    d = tmp_path_factory.mktemp("user") / "fashion-tiny"
    shutil.copytree(shipped_model_dir("fashion-tiny"), d)
    return d


def test_model_folder_loads_without_model_name(tmp_path):
    model = random_model("tiny-d16-schedule")                # a schedule the weights alone cannot tell
    save_model_dir(model, tmp_path / "m")
    by_dir = resolve_model(str(tmp_path / "m"), None, None, False)
    by_files = resolve_model(None, str(tmp_path / "m" / "var.safetensors"), str(tmp_path / "m" / "vae.safetensors"),
                             False)
    for m in (by_dir, by_files):
        assert m.cfg == model.cfg and m.weights_origin == "checkpoint"
    r = run("generate", "--model", str(tmp_path / "m"), "--class", "3", "--out", str(tmp_path / "o"))
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o" / "0000.png").exists()
    assert resolve_model(None, None, None, False).weights_origin == "shipped"


def test_missing_model_folder_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_bad_input(run("generate", "--model", str(tmp_path / "empty"), "--class", "1", "--out", str(tmp_path / "o")),
                     "has no config.json")


def test_evaluate_uses_the_given_judge(tmp_path, shifted_judge, user_folder):
    base, mine = tmp_path / "base.json", tmp_path / "mine.json"
    r = run("evaluate", "--model", "fashion-tiny", "--samples-per-class", "3", "--json", str(base))
    assert r.exit_code == 0, r.output
    assert "warning" not in r.stderr                              # shipped weights, shipped judge
    r = run("evaluate", "--model", str(user_folder), "--samples-per-class", "3", "--judge", str(shifted_judge),
            "--json", str(mine))
    assert r.exit_code == 0, r.output
    assert "warning" not in r.stderr                              # the user named the judge
    a, b = json.loads(base.read_text()), json.loads(mine.read_text())
    assert a["judge"] == "shipped Fashion-MNIST judge" and b["judge"] == f"judge in {shifted_judge}"
    assert a["class_accuracy"] > 0.6 and b["class_accuracy"] < 0.2      # the shifted judge disagrees with every class


def test_user_weights_without_judge_get_the_warning(tmp_path, user_folder):
    r = run("evaluate", "--model", str(user_folder), "--samples-per-class", "2", "--json", str(tmp_path / "e.json"))
    assert r.exit_code == 0, r.output
    assert f"warning: {NOT_SHIPPED}" in r.stderr
    r = run("bench", "--model", str(user_folder), "--no-bundle", "--no-peers", "--images", "10",
            "--out", str(tmp_path / "b"), "--json", str(tmp_path / "b.json"))
    assert r.exit_code == 0, r.output
    assert f"warning: {NOT_SHIPPED}" in r.stderr
    assert json.loads((tmp_path / "b.json").read_text())["quality"] == "paired"    # no silent Fashion-MNIST scores


def test_bench_judges_with_the_given_judge(tmp_path, shifted_judge, user_folder):
    r = run("bench", "--model", str(user_folder), "--no-bundle", "--no-peers", "--images", "10",
            "--judge", str(shifted_judge), "--out", str(tmp_path / "b"), "--json", str(tmp_path / "b.json"))
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "b.json").read_text())
    assert res["quality"] == "full" and res["judge"] == f"judge in {shifted_judge}"
    assert res["variants"]["baseline"]["class_accuracy"] < 0.3


def test_bad_judge_folders_are_one_line(tmp_path, shifted_judge):
    assert_bad_input(run("evaluate", "--model", "fashion-tiny", "--judge", str(tmp_path / "nope"), "--samples-per-class", "2"), "not a folder")
    partial = tmp_path / "partial"
    shutil.copytree(shifted_judge, partial)
    (partial / STATS).unlink()
    assert_bad_input(run("evaluate", "--model", "fashion-tiny", "--judge", str(partial), "--samples-per-class", "2"),
                     "missing classifier/fashion_test_stats.npz")
    (partial / STATS).write_bytes(b"not an npz")
    assert_bad_input(run("evaluate", "--model", "fashion-tiny", "--judge", str(partial), "--samples-per-class", "2"), "cannot read")
    assert_bad_input(run("evaluate", "--model", "d16", "--random-weights", "--judge", str(shifted_judge)),
                     "the judge scores 32 px images of 10 classes")


def test_calibrate_records_the_judge_it_used(tmp_path, shifted_judge):
    r = run("calibrate", "--model", "tiny", "--random-weights", "--classes", "0,3,5", "--seeds", "0",
            "--target-speedup", "1.2", "--max-accuracy-drop", "1", "--batch-size", "3", "--judge", str(shifted_judge),
            "--out", str(tmp_path / "p.json"), "--cache-dir", str(tmp_path / "cache"))
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "p.json").read_text())["calibration"]["judge"] == f"judge in {shifted_judge}"
