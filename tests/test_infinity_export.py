"""Infinity through export and the torch-free runtime, as a user with released-layout files runs it:
the runtime's bits equal the torch portable sampler's at every step, for the identity profile and
both published recipes, on both engines, at two aspects, with prompts of different lengths in one
batch; and the bad input `run` refuses in one line."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fastervar import bundle_contract as contract
from fastervar.accel.accelerated import AcceleratedModel
from fastervar.accel.presets import template
from fastervar.cli import main
from fastervar.models.infinity.checkpoint import random_infinity
from fastervar.models.sampler import generate_batch
from fastervar.models.text.prompts import TextBatch
from fastervar.profile import identity
from fastervar.runtime.pipeline import Pipeline
from fastervar.utils.noise import image_keys

from .test_bundle_contract import (
    ODD_VALUES,
    _apply,
    _fresh,
    _outside_refs,
    _parent,
    _paths,
    run_or_refuse,
)

ASPECTS = {"1:1": 1.0, "1:2": 0.5}
LENGTHS = np.array([5, 2, 4])


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return save_tiny_infinity(tmp_path_factory.mktemp("infinity-export"))


def save_tiny_infinity(d: Path) -> Path:
    """Tiny random Infinity saved in upstream's layout in `d`, and three prompts of different lengths."""
    model = random_infinity("infinity-tiny")
    torch.save(model.infinity.state_dict(), d / "infinity.pth")
    torch.save({"vae": model.vae.state_dict()}, d / "vae.pth")
    emb = np.random.default_rng(0).standard_normal((3, 5, model.infinity.cfg.text_channels)).astype(np.float32)
    for row, n in zip(emb, LENGTHS):
        row[n:] = 0
    np.savez(d / "emb.npz", embeddings=emb, lengths=LENGTHS)
    return d


def model_args(d):
    return ["--checkpoint", d / "infinity.pth", "--vae-checkpoint", d / "vae.pth", "--pn", "0.06M"]


@pytest.fixture(scope="module")
def bundles(files, tmp_path_factory):
    """The identity bundle at one aspect, with a tiny T5 encoder inside; the paper's split and
    FastVAR's recipe at two aspects."""
    from .test_t5 import tiny_t5_folder
    out = tmp_path_factory.mktemp("bundles")
    t5 = tiny_t5_folder(out / "t5")
    made = {}
    for profile, aspects in (("identity", ["1:1"]), ("infinity-paper-split", ["1:1", "1:2"]),
                             ("infinity-fastvar", ["1:1", "1:2"])):
        flags = [x for a in aspects for x in ("--aspect", a)]
        flags += ["--text-encoder", t5] if profile == "identity" else []
        r = cli("export", *model_args(files), *flags, "--profile", profile, "--out", out / profile)
        assert r.exit_code == 0, r.output
        made[profile] = (out / profile, aspects)
    return made


def _reference(files, profile: str, aspect: str):
    """The torch portable sampler's tokens and images for the three prompts, seed 0."""
    from fastervar.models.infinity.checkpoint import resolve_infinity
    model = resolve_infinity(None, str(files / "infinity.pth"), str(files / "vae.pth"), False, torch.device("cpu"),
                             ASPECTS[aspect], "0.06M")
    prof = identity(model) if profile == "identity" else template(profile, model)
    with np.load(files / "emb.npz") as data:
        text = TextBatch(torch.from_numpy(data["embeddings"]), torch.from_numpy(data["lengths"]))
    return generate_batch(AcceleratedModel(model, prof), text, model.default_settings(), image_keys(0, range(3)))


@pytest.mark.parametrize("profile", ["identity", "infinity-paper-split", "infinity-fastvar"])
def test_runtime_bits_equal_the_torch_sampler_at_every_step(files, bundles, profile):
    path, aspects = bundles[profile]
    with np.load(files / "emb.npz") as data:
        prompts = [row[:n] for row, n in zip(data["embeddings"], data["lengths"])]
    for aspect in aspects:
        ref = _reference(files, profile, aspect)
        for chain in (True, False):
            pipe = Pipeline.from_bundle(path, chain=chain)
            got = pipe.generate_items([(p, 0, i) for i, p in enumerate(prompts)], aspect=aspect)
            for k, (a, b) in enumerate(zip(ref.tokens, got.tokens)):
                assert np.array_equal(a.numpy(), b), f"{profile} {aspect} chain={chain}: bits differ at step {k}"
            assert got.images.shape == ref.images.shape
            assert np.abs(got.images.astype(int) - ref.images.numpy().astype(int)).max() <= 1


def test_each_image_depends_only_on_its_own_prompt_and_key(files, bundles):
    """A prompt padded beside longer ones, alone, or in another batch split draws the same image."""
    path, _ = bundles["infinity-fastvar"]
    with np.load(files / "emb.npz") as data:
        prompts = [row[:n] for row, n in zip(data["embeddings"], data["lengths"])]
    pipe = Pipeline.from_bundle(path)
    together = pipe.generate_items([(p, 0, i) for i, p in enumerate(prompts)], aspect="1:2")
    alone = pipe.generate_items([(prompts[1], 0, 1)], aspect="1:2")
    split = pipe.generate_items([(p, 0, i) for i, p in enumerate(prompts)], batch_size=2, aspect="1:2")
    assert np.abs(together.images[1].astype(int) - alone.images[0].astype(int)).max() <= 1
    assert all(np.array_equal(a[1], b[0]) for a, b in zip(together.tokens, alone.tokens))
    assert np.abs(together.images.astype(int) - split.images.astype(int)).max() <= 1


def test_the_manifest_names_the_text_condition_and_each_aspect(bundles):
    m = contract.read_manifest(bundles["infinity-paper-split"][0])
    assert m.conditioning == "text" and m.condition_names == (contract.TEXT, contract.TEXT_LENGTHS)
    assert m.aspects == ["1:1", "1:2"] and m.aspect == "1:1" and m.text_channels == 256
    wide = m.at_aspect("1:2")
    assert wide.latent[0][1] < wide.latent[0][2] and m.latent[0][1] == m.latent[0][2]
    text = m.steps[0].spec(contract.TEXT)["shape"]
    assert text[0] == "batch" and text[1] == "text"                  # any batch, any prompt length
    weights = {e.graph for e in m.engines} & {e.graph for e in wide.engines}
    assert not weights                                                # a set of graphs per aspect ...
    assert set(m.steps[0].initializers) & set(wide.steps[0].initializers)   # ... sharing one weights file


def test_run_writes_the_pipelines_images_and_refuses_bad_input_in_one_line(files, bundles, tmp_path):
    path, _ = bundles["infinity-paper-split"]
    r = cli("run", path, "--text-embeddings", files / "emb.npz", "--aspect", "1:2", "--seed", "0",
            "--step-graphs", "--out", tmp_path / "png")
    assert r.exit_code == 0, r.output
    with np.load(files / "emb.npz") as data:
        prompts = [row[:n] for row, n in zip(data["embeddings"], data["lengths"])]
    direct = Pipeline.from_bundle(path).generate_items([(p, 0, i) for i, p in enumerate(prompts)], aspect="1:2")
    for i in range(3):
        png = np.asarray(Image.open(tmp_path / "png" / f"{i:04d}.png").convert("RGB"))
        assert np.abs(png.astype(int) - direct.images[i].astype(int)).max() <= 1
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "narrow.npz", embeddings=rng.standard_normal((1, 3, 100)).astype(np.float32), lengths=[3])
    class_bundle = tmp_path / "class-bundle"
    r = cli("export", "--model", "fashion-tiny", "--profile", "identity", "--out", class_bundle)
    assert r.exit_code == 0, r.output
    for args, message in [
        (["--text-embeddings", tmp_path / "narrow.npz"], "prompt embeddings must be (tokens, 256)"),
        (["--prompt", "a red fox"], "has no text encoder"),
        (["--class", "3"], "is a text-to-image bundle"),
        (["--text-embeddings", files / "emb.npz", "--aspect", "2:1"], "aspect '2:1' is not in"),
        ([], "needs --text-embeddings"),
    ]:
        r = cli("run", path, *args, "--out", tmp_path / "bad")
        assert r.exit_code == 2 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output
        assert not (tmp_path / "bad").exists()
    r = cli("run", class_bundle, "--text-embeddings", files / "emb.npz", "--out", tmp_path / "bad")
    assert r.exit_code == 2 and "is a class-conditional bundle" in r.output, r.output


def test_a_text_bundle_runs_without_torch(files, bundles, tmp_path):
    path, _ = bundles["infinity-fastvar"]
    code = ("import sys; sys.modules['torch'] = None; from fastervar.cli import main; "
            f"main(['run', {str(path)!r}, '--text-embeddings', {str(files / 'emb.npz')!r}, '--aspect', '1:2', "
            f"'--out', {str(tmp_path / 'png')!r}])")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stderr
    ref = _reference(files, "infinity-fastvar", "1:2").images.numpy()
    for i in range(3):
        png = np.asarray(Image.open(tmp_path / "png" / f"{i:04d}.png").convert("RGB"))
        assert np.abs(png.astype(int) - ref[i].astype(int)).max() <= 1


def test_text_bundle_manifests_are_checked(bundles, tmp_path):
    import shutil
    src = bundles["identity"][0]

    def crafted(edit):
        d = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
        shutil.copytree(src, d)
        data = json.loads((d / contract.MANIFEST).read_text())
        edit(data)
        (d / contract.MANIFEST).write_text(json.dumps(data))
        return d

    for edit, message in [
        (lambda m: m["model"]["conditioning"].pop("channels"), "model.conditioning.channels is missing"),
        (lambda m: m["model"]["conditioning"].update(kind="audio"), "model.conditioning.kind must be one of"),
        (lambda m: m.update(aspects=[]), "a text bundle holds at least one aspect"),
        (lambda m: m["aspects"].append(dict(m["aspects"][0])), "names an aspect twice"),
        (lambda m: m["aspects"][0]["engines"][1]["inputs"][0].update(name="labels"), "reads 'labels', which no"),
    ]:
        with pytest.raises(contract.BundleError, match=message.replace("(", r"\(")):
            contract.read_manifest(crafted(edit), verify=False)


def test_int8_logits_stay_close_to_fp32_and_bits_agree():
    """int8 block linears (self- and cross-attention, FFN, AdaLN, step input) against fp32 on the
    same step inputs: logits within 3% (relative L2), bits agreeing at step 0 on 97% or more."""
    from fastervar.export.closeness import closeness
    model = random_infinity("infinity-tiny")
    model.use_schedule(1.0, "0.06M")
    acc = AcceleratedModel(model.eval(), template("infinity-paper-split", model))
    rows = closeness(acc, model.default_settings(), "int8", batch=4)
    assert len(rows) == model.num_steps
    assert all(r.logits_rel_error < 0.03 for r in rows), rows
    assert rows[0].token_agreement >= 0.97 and all(r.token_agreement >= 0.95 for r in rows), rows


def test_int8_bundle_quantizes_every_block_linear_and_keeps_images_batch_invariant(files, tmp_path):
    import onnx
    out = tmp_path / "int8"
    r = cli("export", *model_args(files), "--profile", "infinity-paper-split", "--precision", "int8",
            "--calib-embeddings", files / "emb.npz", "--out", out)
    assert r.exit_code == 0, r.output
    m = contract.read_manifest(out)
    assert m.data["precision"] == "int8" and m.decoder.precision == "int8"
    assert m.data["decoder_calibration"]["source"] == "prompts" and m.data["decoder_calibration"]["images"] == 3
    ops = [n.op_type for n in onnx.load(str(out / m.steps[1].graph), load_external_data=False).graph.node]
    depth = random_infinity("infinity-tiny").depth
    # per block: qkv, proj, cross q, cross kv, cross proj, fc1, fc2 (and the shared AdaLN, step input)
    assert ops.count("MatMulInteger") >= 7 * depth, ops.count("MatMulInteger")
    with np.load(files / "emb.npz") as data:
        prompts = [row[:n] for row, n in zip(data["embeddings"], data["lengths"])]
    pipe = Pipeline.from_bundle(out)
    together = pipe.generate_items([(p, 0, i) for i, p in enumerate(prompts)])
    alone = pipe.generate_items([(prompts[2], 0, 2)])
    assert all(np.array_equal(a[2], b[0]) for a, b in zip(together.tokens, alone.tokens))
    assert np.array_equal(together.images[2], alone.images[0])


def test_fp16_logits_stay_close_to_fp32():
    """Half weights under autocast against fp32 on the same step inputs, the paper's split (its
    pruned steps choose their tokens in float32): logits within 0.1% (measured at most 0.072%,
    largest error 0.003 of their std), bits agreeing on 99% or more at every step."""
    from fastervar.export.closeness import closeness
    model = random_infinity("infinity-tiny")
    model.use_schedule(1.0, "0.06M")
    acc = AcceleratedModel(model.eval(), template("infinity-paper-split", model))
    rows = closeness(acc, model.default_settings(), "fp16", batch=4)
    assert len(rows) == model.num_steps
    assert all(r.logits_rel_error <= 1e-3 and r.logits_max_error <= 0.01 for r in rows), rows
    assert all(r.token_agreement >= 0.99 for r in rows), rows


def test_fp16_text_bundle_is_half_size_and_runs_at_each_aspect(files, bundles, tmp_path):
    """`--precision fp16` on a text model: half weights for every aspect's graphs (the aspects
    share them), the text encoder kept fp32, bits close to the torch sampler's on both engines,
    and `run --prompt` working."""
    import onnx
    from .test_t5 import tiny_t5_folder
    out = tmp_path / "fp16"
    r = cli("export", *model_args(files), "--aspect", "1:1", "--aspect", "1:2", "--profile", "infinity-paper-split",
            "--precision", "fp16", "--text-encoder", tiny_t5_folder(tmp_path / "t5"), "--out", out)
    assert r.exit_code == 0, r.output
    m = contract.read_manifest(out)
    assert m.data["precision"] == "fp16"

    def stored(graph: str) -> dict[int, int]:
        """Bytes of the graph's stored weights, by ONNX data type."""
        sizes: dict[int, int] = {}
        for init in onnx.load(str(out / graph), load_external_data=False).graph.initializer:
            length = {e.key: e.value for e in init.external_data}.get("length")
            if length is not None:
                sizes[init.data_type] = sizes.get(init.data_type, 0) + int(length)
        return sizes

    # The exporter's masked attention runs in float32, so each cross-attention's output projection
    # is stored float32: 11% of this tiny model's step weights.
    steps = stored(m.at_aspect("1:2").steps[2].graph)
    assert steps[onnx.TensorProto.FLOAT16] > 6 * steps.get(onnx.TensorProto.FLOAT, 0), steps
    encoder = stored(m.data["text_encoder"]["graph"])
    assert set(encoder) == {onnx.TensorProto.FLOAT}
    fp32 = (bundles["infinity-paper-split"][0] / "weights.bin").stat().st_size
    assert (out / "weights.bin").stat().st_size - sum(encoder.values()) < 0.6 * fp32
    with np.load(files / "emb.npz") as data:
        prompts = [row[:n] for row, n in zip(data["embeddings"], data["lengths"])]
    for aspect in ASPECTS:
        ref = _reference(files, "infinity-paper-split", aspect)
        for chain in (True, False):
            got = Pipeline.from_bundle(out, chain=chain).generate_items([(p, 0, i) for i, p in enumerate(prompts)],
                                                                       aspect=aspect)
            agree = [np.mean(a.numpy() == b) for a, b in zip(ref.tokens, got.tokens)]
            assert agree[0] == 1.0 and min(agree) >= 0.99, (aspect, chain, agree)
            assert got.images.shape == ref.images.shape
    r = cli("run", out, "--prompt", "a red fox", "--aspect", "1:2", "--out", tmp_path / "img")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "img" / "0000.png").exists()


def test_export_refuses_what_text_bundles_do_not_support_in_one_line(files, tmp_path):
    for args, message in [
        (["--precision", "int8"], "calibrates on its generations from prompts"),
        (["--text-encoder", tmp_path], "no tokenizer.json"),
    ]:
        r = cli("export", *model_args(files), "--profile", "identity", *args, "--out", tmp_path / "b")
        assert r.exit_code == 2 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output
        assert not (tmp_path / "b").exists()
    r = cli("export", "--model", "fashion-tiny", "--profile", "identity", "--aspect", "1:2", "--out", tmp_path / "b")
    assert r.exit_code == 2 and "--aspect is for text-to-image models" in r.output, r.output


@st.composite
def text_mutations(draw, manifest: dict):
    """A damaged text manifest (any field deleted or retyped, a path pointed outside) and the links
    to make beside it."""
    m = copy.deepcopy(manifest)
    links: dict[str, str] = {}
    kind = draw(st.sampled_from(["delete", "retype", "path", "link"]))
    if kind in ("delete", "retype"):
        path = draw(st.sampled_from(_paths(m)))
        if kind == "delete":
            del _parent(m, path)[path[-1]]
        else:
            _parent(m, path)[path[-1]] = draw(st.sampled_from(ODD_VALUES))
    elif kind == "path":
        fields = [("weights", "file"), ("text_encoder", "graph"), ("text_encoder", "tokenizer"),
                  ("aspects", 0, "chain", "graph")]
        fields += [("aspects", 0, "engines", i, "graph") for i in range(len(m["aspects"][0]["engines"]))]
        path = draw(st.sampled_from(fields))
        _parent(m, path)[path[-1]] = draw(st.sampled_from(_outside_refs(Path("OUTSIDE"))))
        links["link-out"] = "OUTSIDE/tokenizer.json"
    else:
        victim = draw(st.sampled_from(["weights.bin", "1x1-step0.onnx", "1x1-chain.onnx", "tokenizer.json",
                                       "text_encoder.onnx"]))
        links[victim] = f"OUTSIDE/{victim}"
    return m, links


@pytest.fixture(scope="module")
def text_made(bundles, tmp_path_factory):
    """The identity text bundle, and beside it an 'outside' copy a damaged manifest might reach."""
    root = tmp_path_factory.mktemp("text-contract")
    shutil.copytree(bundles["identity"][0], root / "bundle")
    shutil.copytree(bundles["identity"][0], root / "outside")
    return root / "bundle"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_text_manifests_load_or_fail_in_one_line_and_never_open_outside(text_made, tmp_path, data):
    outside = text_made.parent / "outside"
    base = json.loads((text_made / contract.MANIFEST).read_text())
    manifest, links = data.draw(text_mutations(base))
    bundle = _fresh(text_made, tmp_path / "b")
    _apply(bundle, outside, manifest, links)
    chain = data.draw(st.sampled_from([None, False]))
    result = run_or_refuse(outside, lambda: Pipeline.from_bundle(bundle, chain=chain).generate_items(
        [("a red fox", 0, 0)]))
    if result is not None:
        assert result.images.shape[0] == 1
        data_ = json.loads((bundle / contract.MANIFEST).read_text())
        names = [data_["weights"]["file"], data_["text_encoder"]["graph"], data_["text_encoder"]["tokenizer"]]
        names += [e["graph"] for a in data_["aspects"] for e in a["engines"]]
        assert all((bundle / n).resolve().is_relative_to(bundle.resolve()) for n in names)
