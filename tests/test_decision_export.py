"""A per-image decision (SkipVAR's kind) through export and the torch-free runtime: the bundle
holds the preview graph and each move's step graphs, the runtime picks each image's move with the
same rule and features, and its bits equal the torch sampler's at every step, on a tiny Infinity
saved in upstream's layout, at two aspects, with prompts of different lengths in one batch."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fastervar import bundle_contract as contract
from fastervar.accel.accelerated import AcceleratedModel, preview_features
from fastervar.calibrate.decision_fit import geometry
from fastervar.decision_rule import Decision
from fastervar.errors import FastervarError
from fastervar.models.infinity.checkpoint import resolve_infinity
from fastervar.models.sampler import generate_batch
from fastervar.models.text.prompts import TextBatch
from fastervar.profile import identity, load
from fastervar.runtime.pipeline import Pipeline
from fastervar.utils.noise import image_keys

from .test_bundle_contract import ODD_VALUES, _apply, _fresh, _outside_refs, _parent, _paths, run_or_refuse
from .test_infinity_export import ASPECTS, cli, model_args, save_tiny_infinity

KEYS = image_keys(0, range(3))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return save_tiny_infinity(tmp_path_factory.mktemp("decision-files"))


def _model(files, aspect: str):
    return resolve_infinity(None, str(files / "infinity.pth"), str(files / "vae.pth"), False, torch.device("cpu"),
                            ASPECTS[aspect], "0.06M")


def _text(files) -> TextBatch:
    with np.load(files / "emb.npz") as data:
        return TextBatch(torch.from_numpy(data["embeddings"]), torch.from_numpy(data["lengths"]))


def _rule(classes_first: dict[int, int], feature: int, threshold: float) -> dict:
    """A two-class rule on one feature: class 1 (its move) where the feature exceeds `threshold`."""
    coef = [[0.0, 0.0], [0.0, 0.0]]
    coef[1][feature] = 1.0
    return {"scaler": {"mean": [0.0, 0.0], "scale": [1.0, 1.0]},
            "model": {"classes": [0, 1], "coef": coef, "intercept": [0.0, -threshold]},
            "first_step": {str(c): f for c, f in classes_first.items()}}


def splitting_decision(model, inputs, keys) -> dict:
    """A decision whose thresholds split three images into three moves: the one with the most
    arriving detail skips the last step; of the other two, the one with the higher FFT ratio runs
    the last two steps on its conditional half, the third runs every step as planned."""
    steps = model.num_steps
    where = geometry(steps)
    seen = {}

    def watch(k, state, out):
        if k in (where["compare_step"], where["after_step"]):
            seen[k] = state.f_hat.clone()

    generate_batch(model, inputs, model.default_settings(), keys, on_step=watch)
    x = preview_features(model, seen[where["after_step"]], seen[where["compare_step"]], where["preview_step"], 0.4)
    order = np.argsort(x[:, 0])
    skip_at = (x[order[-1], 0] + x[order[-2], 0]) / 2
    rest = sorted(order[:-1], key=lambda i: x[i, 1])
    uncond_at = (x[rest[0], 1] + x[rest[1], 1]) / 2
    return {**where, "freq_ratio": 0.4, "skip": _rule({0: 0, 1: steps - 1}, 0, float(skip_at)),
            "uncond": _rule({0: 0, 1: steps - 2}, 1, float(uncond_at))}


@pytest.fixture(scope="module")
def decided(files, tmp_path_factory):
    """An identity profile with a decision that splits the three prompts at 1:1 into three moves,
    and its bundle at 1:1 and 1:2. Returns the profile's path and the bundle's."""
    model = _model(files, "1:1")
    prof = identity(model, "tiny-decision")
    prof.decision = splitting_decision(model, _text(files), KEYS)
    out = tmp_path_factory.mktemp("decision")
    prof.save(out / "decision.json")
    r = cli("export", *model_args(files), "--aspect", "1:1", "--aspect", "1:2", "--profile", out / "decision.json",
            "--out", out / "bundle")
    assert r.exit_code == 0, r.output
    return out / "decision.json", out / "bundle"


def test_runtime_picks_the_same_moves_and_draws_the_same_bits(files, decided):
    profile_path, bundle = decided
    prof = load(profile_path)
    with np.load(files / "emb.npz") as data:
        prompts = [row[:n] for row, n in zip(data["embeddings"], data["lengths"])]
    pipe = Pipeline.from_bundle(bundle)
    assert not pipe.single_graph                  # a decision cannot run as one graph
    with pytest.raises(FastervarError, match="decides per image between steps"):
        Pipeline.from_bundle(bundle, chain=True)
    steps = prof.num_steps
    for aspect in ASPECTS:
        ref = generate_batch(AcceleratedModel(_model(files, aspect), prof), _text(files),
                             _model(files, aspect).default_settings(), KEYS)
        got = pipe.generate_items([(p, 0, i) for i, p in enumerate(prompts)], aspect=aspect)
        for k, (a, b) in enumerate(zip(ref.tokens, got.tokens)):
            assert np.array_equal(a.numpy(), b), f"{aspect}: bits differ at step {k}"
        assert np.abs(got.images.astype(int) - ref.images.numpy().astype(int)).max() <= 1
        if aspect == "1:1":
            assert sorted(got.moves) == sorted(["none", f"skip from {steps - 1}", f"uncond from {steps - 2}"])
            skipped = got.moves.index(f"skip from {steps - 1}")
            assert (got.tokens[-1][skipped] == -1).all() and (got.tokens[-2][skipped] >= 0).all()


def test_each_image_gets_its_own_move_alone_or_batched(files, decided):
    _, bundle = decided
    with np.load(files / "emb.npz") as data:
        prompts = [row[:n] for row, n in zip(data["embeddings"], data["lengths"])]
    pipe = Pipeline.from_bundle(bundle)
    together = pipe.generate_items([(p, 0, i) for i, p in enumerate(prompts)])
    for i, p in enumerate(prompts):
        alone = pipe.generate_items([(p, 0, i)])
        assert alone.moves == [together.moves[i]]
        assert np.abs(alone.images[0].astype(int) - together.images[i].astype(int)).max() <= 1


def test_the_manifest_holds_the_preview_and_every_moves_graphs(decided):
    _, bundle = decided
    m = contract.read_manifest(bundle)
    assert m.chain is None
    d = m.decision
    assert isinstance(d.rule, Decision) and set(d.moves) == set(d.rule.move_set())
    steps = m.num_steps
    assert d.moves[("skip", steps - 1)] == []
    assert [e.step for e in d.moves[("uncond", steps - 2)]] == [steps - 2, steps - 1]
    first = d.moves[("uncond", steps - 2)][0]
    assert first.spec(contract.cache_names(1)[0])["shape"][0] == "rows"     # it slices the guided cache itself
    assert d.preview.spec(contract.PREVIEW, "outputs")["shape"][:2] == ["batch", 3]


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["aspects"][0].pop("decision"), "aspects[0].decision is missing"),
    (lambda d: d["aspects"][0]["decision"]["moves"].pop(), "has no graphs for the move"),
    (lambda d: d["aspects"][0].__setitem__("chain", d["aspects"][0]["engines"][-1]), "chain must be null"),
    (lambda d: d["aspects"][0]["decision"]["moves"][0].__setitem__("first", 0), "must be a step after"),
    (lambda d: d["profile"]["json"]["decision"].__setitem__("after_step", "9"), "profile.json: profile field decision"),
])
def test_a_broken_decision_entry_is_refused_in_one_line(decided, tmp_path, edit, message):
    _, bundle = decided
    copy = _fresh(bundle, tmp_path / "b")
    data = json.loads((copy / contract.MANIFEST).read_text())
    edit(data)
    (copy / contract.MANIFEST).unlink()             # a hard link to the fixture's manifest: replace, do not write through
    (copy / contract.MANIFEST).write_text(json.dumps(data))
    with pytest.raises(contract.BundleError, match=re.escape(message)) as info:
        contract.read_manifest(copy, verify=False)
    assert "\n" not in str(info.value)


@st.composite
def decision_mutations(draw, manifest: dict):
    """A manifest whose decision part (the rule, the preview, the moves) is damaged: a field deleted
    or retyped, or a graph path pointed outside."""
    m = copy.deepcopy(manifest)
    roots = [("profile", "json", "decision")] + [("aspects", i, "decision") for i in range(len(m["aspects"]))]
    paths = [p for r in roots for p in _paths(_parent(m, r + ("x",)), r) if p != r] + roots
    kind = draw(st.sampled_from(["delete", "retype", "path"]))
    path = draw(st.sampled_from([p for p in paths if p[-1] == "graph"] if kind == "path" else paths))
    if kind == "delete":
        del _parent(m, path)[path[-1]]
    else:
        values = _outside_refs(Path("OUTSIDE")) if kind == "path" else ODD_VALUES
        _parent(m, path)[path[-1]] = draw(st.sampled_from(values))
    return m


@pytest.fixture(scope="module")
def decision_made(decided, tmp_path_factory):
    """The decision bundle, and beside it an 'outside' copy a damaged manifest might reach."""
    root = tmp_path_factory.mktemp("decision-contract")
    shutil.copytree(decided[1], root / "bundle")
    shutil.copytree(decided[1], root / "outside")
    return root / "bundle"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_decision_manifests_load_or_fail_in_one_line_and_never_open_outside(decision_made, files, tmp_path,
                                                                                  data):
    outside = decision_made.parent / "outside"
    manifest = data.draw(decision_mutations(json.loads((decision_made / contract.MANIFEST).read_text())))
    bundle = _fresh(decision_made, tmp_path / "b")
    _apply(bundle, outside, manifest, {})
    with np.load(files / "emb.npz") as emb:
        prompt = emb["embeddings"][0][:int(emb["lengths"][0])]
    result = run_or_refuse(outside, lambda: Pipeline.from_bundle(bundle).generate_items([(prompt, 0, 0)]))
    if result is not None:
        assert result.images.shape[0] == 1


def test_run_without_torch_writes_the_pipelines_images_and_says_what_it_decided(files, decided, tmp_path):
    _, bundle = decided
    code = ("import sys; sys.modules['torch'] = None; from fastervar.cli import main; "
            f"main(['run', {str(bundle)!r}, '--text-embeddings', {str(files / 'emb.npz')!r}, "
            f"'--out', {str(tmp_path / 'png')!r}])")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stderr
    steps = contract.read_manifest(bundle).num_steps
    assert f"per-image decision: 1 none, 1 skip from {steps - 1}, 1 uncond from {steps - 2}" in p.stdout, p.stdout
    with np.load(files / "emb.npz") as data:
        prompts = [row[:n] for row, n in zip(data["embeddings"], data["lengths"])]
    ref = Pipeline.from_bundle(bundle).generate_items([(q, 0, i) for i, q in enumerate(prompts)]).images
    for i in range(3):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "png" / f"{i:04d}.png").convert("RGB")), ref[i])


def test_a_class_conditional_decision_bundle_draws_the_torch_samplers_bits(tmp_path):
    """The same on the embedded VAR model: the decision sits at the manifest's top level."""
    from fastervar.models.loading import shipped_model
    from fastervar.export.bundle import export_bundle
    model = shipped_model("fashion-tiny")
    classes, keys = [0, 3, 7], image_keys(5, range(3))
    prof = identity(model.cfg, "tiny-var-decision")
    prof.decision = splitting_decision(model, torch.tensor(classes), keys)
    path = export_bundle(model, prof, tmp_path / "b", model.default_settings(), max_batch=4, progress=False)
    ref = generate_batch(AcceleratedModel(model, prof), torch.tensor(classes), model.default_settings(), keys)
    got = Pipeline.from_bundle(path).generate(classes, seed=5)
    assert len(set(got.moves)) == 3
    for k, (a, b) in enumerate(zip(ref.tokens, got.tokens)):
        assert np.array_equal(a.numpy(), b), f"bits differ at step {k}"
    assert np.abs(got.images.astype(int) - ref.images.numpy().astype(int)).max() <= 1
