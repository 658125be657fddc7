"""Calibration's promises out of sample: the held-out split, bootstrap margins, and choosing again
when the held-out images break a limit."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from fastervar.calibrate.confidence import DEFAULT_IMAGES, margin, proportion_margin, split
from fastervar.calibrate.holdout import Limits, confirm
from fastervar.calibrate.search import Candidate, meets
from fastervar.cli import main
from fastervar.errors import FastervarError
from fastervar.profile import load
from fastervar.profiles import resolve

from .test_cli import assert_bad_input


def test_the_split_holds_out_an_even_share_of_every_prompt():
    search, held = split(40, 1 / 3)
    assert len(held) == 13 and sorted(search + held) == list(range(40)) and not set(search) & set(held)
    classes = [i % 10 for i in held]                   # seed-major: position i is class i % 10
    assert len(set(classes)) == 10                     # every class has a held-out image
    assert max(np.diff(held)) <= 3                     # spread along the list, not a block at its end
    assert split(2, 1 / 3) == ([0, 1], []) and split(10, 0) == (list(range(10)), [])


def test_a_fake_measure_with_known_noise_gets_wider_margins_on_fewer_prompts():
    """Per-image drops with known noise: the 90% margin follows 1.28 sigma / sqrt(n), widens as
    prompts shrink, and its bound covers the true drop about 90% of the time."""
    rng = np.random.default_rng(1)
    sigma, truth = 0.05, 0.02
    widths = {n: np.mean([margin(rng.normal(truth, sigma, n), 0.9, seed=i) for i in range(20)]) for n in (16, 64, 256)}
    assert widths[16] > widths[64] > widths[256] > 0
    for n, w in widths.items():
        assert w == pytest.approx(1.2816 * sigma / np.sqrt(n), rel=0.2)
    covered = [d.mean() + margin(d, 0.9, seed=i) >= truth
               for i, d in enumerate(rng.normal(truth, sigma, (300, 40)))]
    assert 0.84 <= np.mean(covered) <= 0.96
    assert margin(rng.normal(truth, sigma, 40), 0.0) == 0.0 and margin([0.3], 0.9) == 0.0


def test_a_class_accuracy_bound_does_not_vanish_when_no_image_changes_class():
    """The winner's curse on a small set: a candidate that flipped none of 27 images may still
    lose points on fresh ones. The paired-proportion bound keeps a margin there (a bootstrap of
    all-zero drops has none), narrows with more images, and covers the true drop about as often
    as its confidence says."""
    same = np.ones(27)
    assert margin(same - same, 0.9) == 0.0 and proportion_margin(same, same, 0.9) == pytest.approx(0.044, abs=1e-3)
    searched = round(DEFAULT_IMAGES * 2 / 3)       # the default size's search set keeps a 2-point limit reachable
    assert proportion_margin(np.ones(searched), np.ones(searched), 0.9) < 0.02 < proportion_margin(same, same, 0.9)
    rng = np.random.default_rng(3)
    truth, covered = 0.04 - 0.01, []
    for _ in range(400):                        # each image: lost with p 0.04, gained with p 0.01
        u = rng.random(67)
        base, cand = np.ones(67), np.ones(67)
        cand[u < 0.04] = 0
        base[(u >= 0.04) & (u < 0.05)] = 0
        covered.append((base - cand).mean() + proportion_margin(base, cand, 0.9) >= truth)
    assert 0.85 <= np.mean(covered) <= 0.99


def _cand(name: str, ssim: float, accuracy: float, acc_margin: float = 0.0) -> Candidate:
    return Candidate(None, SimpleNamespace(name=name), 2.0, 1.8, ssim, 30.0, accuracy,
                     margins={"class_accuracy": acc_margin})


def test_a_limit_is_checked_against_the_bound_not_the_estimate():
    assert meets(_cand("a", 0.9, 0.89), 1.5, None, 0.90, 0.02)
    assert not meets(_cand("a", 0.9, 0.89, acc_margin=0.02), 1.5, None, 0.90, 0.02)


class _Held:
    """A held-out set whose judgements are given: profile name -> (SSIM, class accuracy)."""

    def __init__(self, figures: dict[str, tuple[float, float]]):
        self.figures, self.images, self.base_accuracy, self.clip_limit, self.judged = figures, list(range(13)), 0.9, None, []

    def score(self, profile, knobs=None) -> Candidate:
        self.judged.append(profile.name)
        return _cand(profile.name, *self.figures[profile.name])


def test_a_candidate_that_fails_on_the_held_out_images_is_rejected():
    order = [_cand("lucky", 0.95, 0.90), _cand("steady", 0.93, 0.90), _cand("third", 0.92, 0.90)]
    held = _Held({"lucky": (0.94, 0.84), "steady": (0.92, 0.89), "third": (0.91, 0.90)})
    chosen, h = confirm(held, order, Limits(1.5, None, 0.02))
    assert chosen.profile.name == "steady" and h.class_accuracy == 0.89 and held.judged == ["lucky", "steady"]


def test_no_candidate_holding_out_of_sample_is_one_line():
    held = _Held({"lucky": (0.94, 0.84), "steady": (0.92, 0.80)})
    with pytest.raises(FastervarError) as e:
        confirm(held, [_cand("lucky", 0.95, 0.9), _cand("steady", 0.93, 0.9)], Limits(1.5, None, 0.02))
    msg = str(e.value)
    assert "\n" not in msg and "13 held-out images" in msg and "class accuracy drop 0.060 (limit 0.02)" in msg


def run(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


CAL = ("calibrate", "--model", "tiny", "--random-weights", "--classes", "0,3,5", "--calib-images", "7",
       "--batch-size", "6", "--cost-model", "flops")      # 7 images asked: seeds 0-2 of 3 classes, 9 images


@pytest.fixture(scope="module")
def quality_calibrated(tmp_path_factory):
    d = tmp_path_factory.mktemp("held")
    r = run(*CAL, "--max-quality-drop", "0.6", "--out", d / "p.json", "--cache-dir", d / "cache")
    assert r.exit_code == 0, r.output
    return d, r.output


def test_a_profile_records_its_held_out_figures(quality_calibrated):
    d, output = quality_calibrated
    p = load(d / "p.json")
    search, held = p.measured["search"], p.measured["held_out"]
    assert p.calibration["seeds"] == [0, 1, 2] and (search["images"], held["images"]) == (6, 3)
    assert search["confidence"] == 0.9
    assert p.calibration["holdout"]["held_out_images"] == 3 and p.calibration["confidence"] == 0.9
    # the limit held on both sets: on the search images by the bound, on the held-out ones by the estimate
    assert 1 - (search["paired_ssim"] - search["paired_ssim_margin"]) <= 0.6 and 1 - held["paired_ssim"] <= 0.6
    assert search["paired_ssim_margin"] > 0 and held["measured_speedup_total"] > 0
    assert f"held out (3 images the search never saw): paired SSIM {held['paired_ssim']:.3f}" in output
    report = (d / "p-report" / "report.md").read_text()
    assert "## How sure" in report and f"{held['paired_ssim']:.3f} -{held['paired_ssim_margin']:.3f}" in report


def test_a_limit_no_candidate_keeps_out_of_sample_is_one_line_and_exit_2(quality_calibrated, tmp_path, monkeypatch):
    """Every candidate passes on the search images; the held-out images (a fake measure there)
    break the SSIM limit for all: calibrate names the held-out figures and writes nothing."""
    from fastervar.calibrate.search import Searcher
    d, _ = quality_calibrated
    real = Searcher._judge

    def judge(self, profile):
        j = real(self, profile)
        if self.images == [2, 5, 8]:                    # the held-out third of 9 images
            j["ssims"] = [0.1] * len(j["ssims"])
        return j

    monkeypatch.setattr(Searcher, "_judge", judge)
    for f in (d / "cache").glob("judged-*.json"):
        if json.loads(f.read_text())["context"].get("images") == [2, 5, 8]:
            f.unlink()
    r = run(*CAL, "--max-quality-drop", "0.6", "--out", tmp_path / "p.json", "--cache-dir", d / "cache")
    assert_bad_input(r, "no candidate keeps the limits on the 3 held-out images")
    assert "SSIM drop 0.900 (limit 0.6)" in r.output and not (tmp_path / "p.json").exists()


def test_calibration_size_and_split_options_are_checked(tmp_path):
    r = run(*CAL, "--seeds", "0,1", "--max-quality-drop", "0.5", "--out", tmp_path / "p.json")
    assert_bad_input(r, "give --seeds or --calib-images, not both")
    r = run("calibrate", "--model", "tiny", "--random-weights", "--holdout", "0.95", "--max-quality-drop", "0.5",
            "--out", tmp_path / "p.json")
    assert r.exit_code == 2 and "--holdout" in r.output and "Traceback" not in r.output


def test_evaluate_and_bench_print_the_promises_beside_what_they_measure(quality_calibrated):
    from fastervar.evaluate.promises import beside, lines, measured
    d, _ = quality_calibrated
    p = load(d / "p.json")
    held = p.measured["held_out"]
    rows = beside(p, measured({}, {"paired_ssim": 0.3, "speedup_transformer": 1.4}))
    (ssim,) = rows                                       # a quality target: one promise
    assert ssim["limit"] == 0.6 and ssim["held_out"] == pytest.approx(1 - held["paired_ssim"])
    assert ssim["measured"] == pytest.approx(0.7) and ssim["holds"] is False
    text = "\n".join(lines(rows, 100))
    assert "measured here on 100 images" in text and "paired SSIM drop" in text and "BROKEN" in text
    assert beside(p, measured({}, {"paired_ssim": 0.95}))[0]["holds"] is True
    # a profile calibrated before held-out checks (no search or held-out figures) still says what it promised
    old = resolve("fashion-16-calibrated")
    old.measured = {k: v for k, v in old.measured.items() if k not in ("search", "held_out")}
    rows = beside(old, measured({"class_accuracy": 0.94}, {"class_accuracy": 0.90, "paired_ssim": 0.8,
                                                         "speedup_transformer": 2.7}))
    assert {r["measure"]: r["holds"] for r in rows} == {"speedup_transformer": True, "class_accuracy_drop": True}
