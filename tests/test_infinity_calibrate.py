"""Calibrate, bench, evaluate and generate on Infinity, as a user with released-layout files runs
them: prompts as embeddings, a pixel budget and aspects; and the bad input each refuses."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fastervar.calibrate.decision_fit import fit_rule, labels
from fastervar.cli import main
from fastervar.models.infinity.checkpoint import random_infinity
from fastervar.profile import load


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny Infinity in upstream's layout, and four prompts' embeddings of different lengths."""
    d = tmp_path_factory.mktemp("infinity-cal")
    model = random_infinity("infinity-tiny")
    torch.save(model.infinity.state_dict(), d / "infinity.pth")
    torch.save({"vae": model.vae.state_dict()}, d / "vae.pth")
    rng = np.random.default_rng(0)
    lengths = np.array([5, 3, 4, 2])
    emb = rng.standard_normal((4, 5, model.infinity.cfg.text_channels)).astype(np.float32)
    for i, n in enumerate(lengths):
        emb[i, n:] = 0
    np.savez(d / "emb.npz", embeddings=emb, lengths=lengths)
    np.savez(d / "emb2.npz", embeddings=emb[:2], lengths=lengths[:2])
    return d


def model_args(d):
    return ["--checkpoint", d / "infinity.pth", "--vae-checkpoint", d / "vae.pth", "--pn", "0.06M"]


@pytest.fixture(scope="module")
def calibrated(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("cal")
    r = cli("calibrate", *model_args(files), "--text-embeddings", files / "emb2.npz", "--aspect", "1:1",
            "--aspect", "1:2", "--seeds", "0", "--batch-size", "2", "--max-quality-drop", "0.6", "--cost-model",
            "flops", "--out", out / "p.json", "--cache-dir", out / "cache")
    assert r.exit_code == 0, r.output
    return out / "p.json"


@pytest.mark.slow
def test_calibrate_on_infinity_files_then_generate_and_bench_with_the_profile(files, calibrated, tmp_path):
    p = load(calibrated)
    assert p.calibrated and p.model["family"] == "infinity" and p.model["pn"] == "0.06M"
    assert p.model["aspects"] == [1.0, 0.5]                      # the two templates it was judged on
    assert p.calibration["prompts_sha256"] and p.measured["paired_ssim"] >= 0.4
    # kept tokens as shares, which fit every aspect's grid
    assert all(s.keep is None for s in p.steps)
    for aspect in ("1:1", "1:2"):
        r = cli("generate", *model_args(files), "--text-embeddings", files / "emb.npz", "--aspect", aspect,
                "--profile", calibrated, "--out", tmp_path / aspect.replace(":", "x"))
        assert r.exit_code == 0, r.output
        assert len(list((tmp_path / aspect.replace(":", "x")).glob("*.png"))) == 4
    r = cli("bench", *model_args(files), "--text-embeddings", files / "emb.npz", "--profile", calibrated,
            "--compare", "infinity-paper-split", "--batch-size", "2", "--out", tmp_path / "bench",
            "--json", tmp_path / "bench.json")
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "bench.json").read_text())["variants"]
    assert set(rows) == {"baseline", "accelerated", "paper-split"}
    assert rows["accelerated"]["profile"] == p.name and 0 < rows["accelerated"]["paired_ssim"] <= 1
    r = cli("evaluate", *model_args(files), "--text-embeddings", files / "emb.npz", "--profile", calibrated,
            "--json", tmp_path / "eval.json")
    assert r.exit_code == 0, r.output
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert ev["samples"] == 4 and 0 < ev["paired_ssim"] <= 1 and ev["speedup_transformer"] > 0


def test_a_profile_refuses_an_aspect_it_was_not_calibrated_on(files, calibrated, tmp_path):
    r = cli("generate", *model_args(files), "--text-embeddings", files / "emb.npz", "--aspect", "2:1",
            "--profile", calibrated, "--out", tmp_path / "never")
    assert r.exit_code == 2 and "covers 1:1, 1:2, but the model runs at 2:1" in r.output, r.output
    assert "Traceback" not in r.output and not (tmp_path / "never").exists()


@pytest.mark.parametrize("args, message", [
    (["--pn", "0.25M"], "does not match the model's schedule"),                 # another budget
    (["--model", "tiny", "--random-weights", "--class", "1"], "model.family is 'infinity', but the model is 'var'"),
])
def test_a_profile_for_another_budget_or_family_is_refused(files, calibrated, tmp_path, args, message):
    common = model_args(files)[:4] + ["--text-embeddings", files / "emb.npz"] if args[0] == "--pn" else []
    r = cli("generate", *common, *args, "--profile", calibrated, "--out", tmp_path / "never")
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output


def test_fit_decision_refuses_too_few_prompts_before_any_work(files, tmp_path):
    r = cli("calibrate", *model_args(files), "--text-embeddings", files / "emb2.npz", "--seeds", "0,1",
            "--max-quality-drop", "0.3", "--fit-decision", "--out", tmp_path / "p.json", "--cache-dir", tmp_path / "c")
    assert r.exit_code == 2 and "--fit-decision needs at least 2 prompts and 8 images" in r.output, r.output
    assert "Traceback" not in r.output and not (tmp_path / "c").exists() and not (tmp_path / "p.json").exists()
    r = cli("calibrate", *model_args(files), "--text-embeddings", files / "emb.npz", "--seeds", "0,1",
            "--target-speedup", "2", "--fit-decision", "--out", tmp_path / "p.json")
    assert r.exit_code == 2 and "give it with --max-quality-drop" in r.output


def test_text_and_class_options_are_refused_on_the_other_kind_of_model(files, tmp_path):
    r = cli("calibrate", *model_args(files), "--text-embeddings", files / "emb.npz", "--classes", "1,2",
            "--max-quality-drop", "0.3", "--out", tmp_path / "p.json")
    assert r.exit_code == 2 and "class options (--classes) are for class-conditional VAR models" in r.output
    r = cli("bench", "--model", "tiny", "--random-weights", "--aspect", "1:2", "--out", tmp_path / "b")
    assert r.exit_code == 2 and "--aspect is for text-to-image models" in r.output
    r = cli("bench", *model_args(files), "--text-embeddings", files / "emb.npz", "--bundle", tmp_path,
            "--out", tmp_path / "b")
    assert r.exit_code == 2 and "not exported yet" in r.output
    r = cli("evaluate", *model_args(files), "--text-embeddings", files / "emb.npz")
    assert r.exit_code == 2 and "give --profile" in r.output


# -- the decision fit's pieces --------------------------------------------------------------------------
def test_each_image_is_labelled_with_its_fastest_move_that_keeps_the_threshold():
    per_move = {1: np.array([0.9, 0.9, 0.5]), 2: np.array([0.85, 0.7, 0.4]), 3: np.array([0.6, 0.9, 0.3])}
    # image 1 keeps the bar with 3 steps moved even though 2 fails it: the fastest that passes wins
    assert labels(per_move, 0.8).tolist() == [2, 3, 0]


def test_fitted_rules_as_numbers_reproduce_scikit_learns_predictions():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from fastervar.decision_rule import Rule
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 2)) * [0.05, 0.1] + [0.1, 0.5]
    first = {0: 0, 1: 12, 2: 11, 3: 10}
    for y in (np.digitize(x[:, 0], [0.05, 0.1, 0.15]),        # four classes
              (x[:, 1] > 0.5).astype(int) * 2,                 # two classes: one coefficient row in sklearn
              np.full(60, 1)):                                 # one class: a constant rule
        rule = Rule.from_dict(fit_rule(x, y, first))
        if len(set(y)) > 1:
            scaler = StandardScaler().fit(x)
            want = LogisticRegression(max_iter=1000).fit(scaler.transform(x), y).predict(scaler.transform(x))
        else:
            want = y
        assert np.array_equal(rule.predict(x), want)


def test_evaluate_with_clip_compares_each_image_with_its_baseline(files, tmp_path):
    """`evaluate --clip` on Infinity: the identity profile's images are the baseline's (paired CLIP
    similarity 1, CLIP-FD 0); paper-split's differ, and the figures say by how much."""
    pytest.importorskip("transformers", reason="the tiny CLIP folder is written with transformers")
    from .test_clip import _folder
    from fastervar.profile import identity
    clip, _ = _folder(tmp_path, "quick_gelu", True)
    identity(random_infinity("infinity-tiny").spec(), "identity").save(tmp_path / "identity.json")
    got = {}
    for profile in ("identity", "infinity-paper-split"):
        r = cli("evaluate", *model_args(files), "--text-embeddings", files / "emb.npz", "--profile",
                tmp_path / "identity.json" if profile == "identity" else profile,
                "--clip", clip, "--json", tmp_path / f"{profile}.json")
        assert r.exit_code == 0, r.output
        got[profile] = json.loads((tmp_path / f"{profile}.json").read_text())
    assert got["identity"]["paired_clip_similarity"] == pytest.approx(1.0, abs=1e-9)
    assert got["identity"]["clip_fd"] == pytest.approx(0.0, abs=1e-6)
    assert got["infinity-paper-split"]["paired_clip_similarity"] < 1 - 1e-6
    assert got["infinity-paper-split"]["clip_fd"] > 1e-6
    assert "clip_score" not in got["identity"]            # embeddings carry no prompt text to score against


def test_evaluate_clip_scores_each_side_against_its_prompt_text(tmp_path):
    """With prompt texts (a T5 folder), `evaluate --clip` gives each side's CLIP score; the
    baseline's equals what `clip-score` gives on `generate`'s images for the same prompts."""
    pytest.importorskip("transformers", reason="transformers builds the tiny T5 and CLIP folders")
    from tests.test_t5 import tiny_t5_folder

    from .test_clip import _folder
    clip, _ = _folder(tmp_path, "gelu", True)
    tiny_t5_folder(tmp_path / "t5")
    prompts = ["a red cat on the grass", "the dog"]
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n")
    common = ["--model", "infinity-tiny", "--random-weights", "--pn", "0.06M", "--text-encoder", tmp_path / "t5",
              "--prompts", tmp_path / "p.txt", "--seed", "3"]
    r = cli("evaluate", *common, "--profile", "infinity-paper-split", "--clip", clip, "--json", tmp_path / "e.json")
    assert r.exit_code == 0, r.output
    ev = json.loads((tmp_path / "e.json").read_text())
    r = cli("generate", *common, "--out", tmp_path / "base")
    assert r.exit_code == 0, r.output
    r = cli("clip-score", tmp_path / "base", "--prompts", tmp_path / "p.txt", "--clip", clip, "--json",
            tmp_path / "s.json")
    assert r.exit_code == 0, r.output
    assert ev["clip_score_baseline"] == pytest.approx(json.loads((tmp_path / "s.json").read_text())["clip_score"],
                                                      abs=1e-6)
    assert 0 <= ev["clip_score"] <= 100 and 0 < ev["paired_clip_similarity"] <= 1


@pytest.mark.slow
def test_calibrate_with_clip_on_infinity_keeps_the_clip_score(tmp_path, files):
    """`calibrate --clip --max-clip-drop` on the tiny Infinity with prompt texts (a T5 folder): the
    profile's CLIP-score drop is within the limit and the report shows it; with embeddings there is
    no text to score, and the limit is refused in one line before any work."""
    pytest.importorskip("transformers", reason="transformers builds the tiny T5 and CLIP folders")
    from tests.test_t5 import tiny_t5_folder

    from .test_clip import _folder
    clip, _ = _folder(tmp_path, "gelu", True)
    tiny_t5_folder(tmp_path / "t5")
    (tmp_path / "p.txt").write_text("a red cat on the grass\nthe dog\n")
    r = cli("calibrate", "--model", "infinity-tiny", "--random-weights", "--pn", "0.06M", "--text-encoder",
            tmp_path / "t5", "--prompts", tmp_path / "p.txt", "--seeds", "0,1", "--batch-size", "4",
            "--max-quality-drop", "0.6", "--cost-model", "flops", "--clip", clip, "--max-clip-drop", "0.5",
            "--out", tmp_path / "p.json", "--cache-dir", tmp_path / "cache")
    assert r.exit_code == 0, r.output
    p = load(tmp_path / "p.json")
    assert p.measured["clip_score_drop"] <= 0.5 and p.calibration["target"]["max_clip_drop"] == 0.5
    assert "CLIP score may drop by at most" in (tmp_path / "p-report" / "report.md").read_text()
    r = cli("calibrate", *model_args(files), "--text-embeddings", files / "emb.npz", "--max-quality-drop", "0.6",
            "--clip", clip, "--max-clip-drop", "0.5", "--out", tmp_path / "q.json", "--cache-dir", tmp_path / "c2")
    assert r.exit_code == 2 and "prompts' text" in r.output and not (tmp_path / "c2").exists()
