"""`fastervar evaluate`: the JSON fields users rely on, with and without a profile."""

from __future__ import annotations

import json

from click.testing import CliRunner

from fastervar.accel.presets import fastvar
from fastervar.cli import main
from fastervar.models.var.configs import get_config

from .test_cli import assert_bad_input

FIELDS = {"classifier_test_accuracy", "class_accuracy", "frechet_distance", "kid", "reference_frechet_distance",
          "samples", "seconds"}


def test_evaluate_json(tmp_path):
    out = tmp_path / "new" / "folder" / "e.json"          # created as needed, as the README's command expects
    r = CliRunner().invoke(main, ["evaluate", "--model", "tiny", "--random-weights", "--samples-per-class", "3",
                                  "--json", str(out)])
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert FIELDS <= data.keys()
    assert data["samples"] == 30 and 0.9 <= data["classifier_test_accuracy"] <= 1.0
    assert data["frechet_distance"] > 0 and data["reference_samples"] == 30


def test_evaluate_with_profile_reports_both_sides(tmp_path):
    prof = fastvar(get_config("tiny"))
    prof.save(tmp_path / "p.json")
    out = tmp_path / "e.json"
    r = CliRunner().invoke(main, ["evaluate", "--model", "tiny", "--random-weights", "--samples-per-class", "2",
                                  "--profile", str(tmp_path / "p.json"), "--json", str(out)])
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    for side in ("baseline", "accelerated"):
        assert {"class_accuracy", "frechet_distance", "kid", "seconds_transformer", "seconds_total"} <= data[side].keys()
    assert data["speedup_transformer"] > 0 and data["speedup_total"] > 0
    assert 0 < data["paired_ssim"] <= 1 and data["paired_psnr"] > 0
    assert "accelerated" in r.output


def test_evaluate_refuses_models_outside_the_reference_domain(tmp_path):
    r = CliRunner().invoke(main, ["evaluate", "--model", "tiny-d16-schedule", "--random-weights",
                                  "--samples-per-class", "2"])
    assert_bad_input(r, "the judge scores 32 px images of 10 classes")


def test_json_path_under_a_file_is_refused_before_work(tmp_path):
    (tmp_path / "f").write_text("x")
    r = CliRunner().invoke(main, ["evaluate", "--model", "tiny", "--random-weights", "--samples-per-class", "2",
                                  "--json", str(tmp_path / "f" / "e.json")])
    assert_bad_input(r, "a file stands where its folder should be")
