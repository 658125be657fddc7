"""Profiles on the command line: calibrate, profiles list/show, --profile, and their bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from fastervar.calibrate.latency import FEATURES
from fastervar.cli import main
from fastervar.profile import load

from .test_cli import assert_bad_input


def run(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    d = tmp_path_factory.mktemp("cal")
    r = run("calibrate", "--model", "tiny", "--random-weights", "--classes", "0,3,5", "--seeds", "0,1",
            "--target-speedup", "1.2", "--batch-size", "6", "--out", str(d / "p.json"),
            "--cache-dir", str(d / "cache"))
    assert r.exit_code == 0, r.output
    return d


def test_calibrate_writes_profile_report_and_cache(calibrated):
    p = load(calibrated / "p.json")
    assert p.calibrated and p.measured["predicted_speedup_transformer"] >= 1.2
    # priced by a latency model fitted here, with the FLOP ratio kept beside it
    lm = p.calibration["latency_model"]
    assert lm["features"] == list(FEATURES) and min(lm["coefficients"]) >= 0 and lm["batch"] == 6
    assert p.measured["predicted_speedup_transformer_flops"] > 1
    assert p.calibration["classes"] == [0, 3, 5] and p.calibration["seeds"] == [0, 1]
    report = calibrated / "p-report"
    assert sorted(f.name for f in report.iterdir()) == ["convergence.png", "cost_per_step.png", "front.png", "report.md"]
    assert "Candidates tried" in (report / "report.md").read_text()
    assert len(list((calibrated / "cache").glob("measure-*.npz"))) == 1
    assert len(list((calibrated / "cache").glob("latency-*.json"))) == 1


def test_calibrate_is_deterministic_and_reuses_measurements(calibrated):
    d = calibrated
    r = run("calibrate", "--model", "tiny", "--random-weights", "--classes", "0,3,5", "--seeds", "0,1",
            "--target-speedup", "1.2", "--batch-size", "6", "--out", str(d / "q.json"), "--cache-dir", str(d / "cache"))
    assert r.exit_code == 0 and "reusing baseline measurements" in r.output and "reusing the latency model" in r.output
    a, b = load(d / "p.json"), load(d / "q.json")
    assert [s.__dict__ for s in a.steps] == [s.__dict__ for s in b.steps]


def test_an_interrupted_calibration_resumes_without_judging_again(calibrated, tmp_path, monkeypatch):
    """A calibration stopped part-way (a session ending) keeps every judgement it made: the rerun
    judges only the rest, and chooses what an uninterrupted run chose."""
    from fastervar.calibrate.search import Searcher
    judge, calls = Searcher._judge, []

    def counted(self, profile, stop_after=None):
        calls.append(profile.name)
        if stop_after is not None and len(calls) > stop_after:
            raise KeyboardInterrupt
        return judge(self, profile)

    # the uninterrupted run's measurements and clock (its speed check is timed), without its judgements
    shutil.copytree(calibrated / "cache", tmp_path / "cache")
    for f in (tmp_path / "cache").glob("judged-*.json"):
        f.unlink()
    args = ("calibrate", "--model", "tiny", "--random-weights", "--classes", "0,3,5", "--seeds", "0,1",
            "--target-speedup", "1.2", "--batch-size", "6", "--cache-dir", str(tmp_path / "cache"))
    monkeypatch.setattr(Searcher, "_judge", lambda self, p: counted(self, p, stop_after=5))
    r = run(*args, "--out", str(tmp_path / "p.json"))
    assert r.exit_code != 0 and not (tmp_path / "p.json").exists()
    (judged,) = (tmp_path / "cache").glob("judged-*.json")      # the search's: nothing held out was judged yet
    assert len(json.loads(judged.read_text())["payload"]) == 5
    calls.clear()
    monkeypatch.setattr(Searcher, "_judge", lambda self, p: counted(self, p))
    r = run(*args, "--out", str(tmp_path / "p.json"))
    assert r.exit_code == 0, r.output
    both = sorted((tmp_path / "cache").glob("judged-*.json"))      # and the held-out images' judgements
    assert len(both) == 2 and sum(len(json.loads(f.read_text())["payload"]) for f in both) == 5 + len(calls)
    assert [s.__dict__ for s in load(tmp_path / "p.json").steps] == [s.__dict__ for s in load(calibrated / "p.json").steps]
    calls.clear()                                    # everything judged: a third run runs no candidate
    r = run(*args, "--out", str(tmp_path / "q.json"))
    assert r.exit_code == 0 and calls == []
    judged.write_text("{not json")                   # a corrupt cache is judged again, with one warning
    r = run(*args, "--out", str(tmp_path / "q.json"))
    assert r.exit_code == 0 and "ignoring unreadable cache" in r.output and calls


def test_unreachable_target_names_the_closest(calibrated, tmp_path):
    r = run("calibrate", "--model", "tiny", "--random-weights", "--classes", "0,3,5", "--seeds", "0,1",
            "--target-speedup", "40", "--batch-size", "6", "--out", str(tmp_path / "p.json"),
            "--cache-dir", str(calibrated / "cache"))
    assert_bad_input(r, "no candidate meets the target (speedup 40x); closest: predicted speedup")
    assert not (tmp_path / "p.json").exists()


def test_generate_with_profile(calibrated, tmp_path):
    r = run("generate", "--model", "tiny", "--random-weights", "--class", "3", "--profile",
            str(calibrated / "p.json"), "--out", str(tmp_path / "o"))
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o" / "0000.png").exists()


def test_profiles_list_and_show():
    r = run("profiles", "list")
    assert r.exit_code == 0 and "d16-paper-split" in r.output and "fashion-tiny-fastvar" in r.output
    rows = {line.split()[0]: line.split() for line in r.output.splitlines()[1:]}
    assert rows["d16-paper-split"][3] == "4.15x"                     # FLOPs for every row, comparable
    assert rows["fashion-tiny-calibrated"][4].endswith("x")          # and the fitted latency model's where there is one
    assert rows["fashion-tiny-skipvar-skip1"][4] == "SkipVAR"         # (none for templates: the description follows)
    shown = json.loads(run("profiles", "show", "d36-paper-split").output)
    assert shown["model"]["config"] == "d36" and shown["calibrated"] is False


@pytest.mark.parametrize("edit, fragment", [
    (lambda d: "{not json", "malformed JSON at line 1"),
    (lambda d: d["steps"][6].update(mode="prune") or d, "steps[6].mode: unknown mode 'prune'"),
    (lambda d: d["steps"][6].update(selector="best") or d, "steps[6].selector: unknown selector 'best'"),
    (lambda d: d["steps"][6].update(keep=65) or d, "steps[6].keep = 65 must be between 1 and the step's 64 tokens"),
    (lambda d: d["steps"][6].update(ranks={"ffn.fc1": 64}) or d, "steps[6].ranks.ffn.fc1 = 64 must be below"),
])
def test_bad_profiles(tmp_path, edit, fragment):
    base = {"format": "fastervar-profile/1", "name": "t", "model": {"config": "tiny", "patch_nums": [1, 2, 3, 4, 5, 6, 8]},
            "stages": {"semantic": [0, 1, 2, 3, 4], "refine": [5, 6]},
            "steps": [{"mode": "full", "cfg": True}] * 6 + [
                {"mode": "reduce", "cfg": False, "keep": 16, "selector": "grid", "restore_from": 5}]}
    d = edit(json.loads(json.dumps(base)))
    f = tmp_path / "p.json"
    f.write_text(d if isinstance(d, str) else json.dumps(d))
    r = run("generate", "--model", "tiny", "--random-weights", "--class", "1", "--profile", str(f),
            "--out", str(tmp_path / "o"))
    assert_bad_input(r, fragment)
    assert not (tmp_path / "o").exists()


def test_profile_for_another_model(tmp_path):
    r = run("generate", "--model", "tiny", "--random-weights", "--class", "1", "--profile", "d16-paper-split",
            "--out", str(tmp_path / "o"))
    assert_bad_input(r, "this profile was made for another model")


def test_calibrate_needs_one_target(tmp_path):
    r = run("calibrate", "--model", "tiny", "--random-weights", "--out", str(tmp_path / "p.json"))
    assert_bad_input(r, "give exactly one target")
    r = run("calibrate", "--model", "tiny", "--random-weights", "--match-peer", "skipvar-skip2", "--target-speedup", "2",
            "--out", str(tmp_path / "p.json"))
    assert_bad_input(r, "give exactly one target")
    r = run("calibrate", "--model", "tiny", "--random-weights", "--match-peer", "hart", "--out", str(tmp_path / "p.json"))
    assert r.exit_code == 2 and "'hart' is not one of" in r.output and "Traceback" not in r.output


def test_calibrate_official_sampler_is_one_line(tmp_path):
    r = run("calibrate", "--model", "tiny", "--random-weights", "--sampler", "official", "--target-speedup", "1.2",
            "--out", str(tmp_path / "p.json"))
    assert_bad_input(r, "only the portable sampler gives")
    assert not (tmp_path / "p.json").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="calibrating on a GPU needs CUDA (no GPU here)")
def test_calibrate_runs_on_cuda(tmp_path):
    r = run("calibrate", "--model", "tiny", "--random-weights", "--device", "cuda", "--classes", "0,3", "--seeds", "0",
            "--target-speedup", "1.1", "--batch-size", "2", "--out", str(tmp_path / "p.json"),
            "--cache-dir", str(tmp_path / "cache"))
    assert r.exit_code == 0, r.output
    assert load(tmp_path / "p.json").calibrated


def test_match_peer_targets_the_peer_speed(calibrated):
    d = calibrated
    r = run("calibrate", "--model", "tiny", "--random-weights", "--classes", "0,3,5", "--seeds", "0,1",
            "--match-peer", "skipvar-skip1", "--batch-size", "6", "--out", str(d / "m.json"), "--cache-dir", str(d / "cache"))
    assert r.exit_code == 0, r.output
    p = load(d / "m.json")
    target = p.calibration["target"]
    peer = next(row for row in p.calibration["equal_speed_vs_peers"] if row["peer"] == "tiny-skipvar-skip1")
    assert target["match_peer"] == "skipvar-skip1" and target["speedup"] == round(0.9 * peer["peer_speedup"], 3)
    assert p.measured["predicted_speedup_transformer"] >= target["speedup"]


def test_a_calibration_that_fails_while_writing_leaves_neither_profile_nor_report(calibrated, tmp_path, monkeypatch):
    from fastervar.calibrate import run as calibrate_run

    def half_written(stage, *args, **kwargs):
        (stage / "report.md").write_text("half")
        raise KeyboardInterrupt
    monkeypatch.setattr(calibrate_run, "write_report", half_written)
    r = run("calibrate", "--model", "tiny", "--random-weights", "--classes", "0,3,5", "--seeds", "0,1",
            "--target-speedup", "1.2", "--batch-size", "6", "--out", str(tmp_path / "p.json"),
            "--cache-dir", str(calibrated / "cache"))
    assert r.exit_code == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == []            # no profile, no report, no temp folder
