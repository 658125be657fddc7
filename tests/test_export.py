"""Export and the torch-free runtime: parity with the torch accelerated path, weights stored once,
and every bad bundle refused with one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from fastervar.accel.accelerated import AcceleratedModel
from fastervar.cli import main
from fastervar.export import bundle as bundle_mod
from fastervar.export.bundle import export_bundle
from fastervar.models.loading import random_model, shipped_model
from fastervar.models.sampler import generate
from fastervar.models.sampling import SamplingSettings
from fastervar.profile import identity
from fastervar.profiles import resolve
from fastervar.runtime.pipeline import Pipeline

from .test_cli import assert_bad_input

SETTINGS = SamplingSettings()
CLASSES = [0, 3, 5, 7, 9, 1, 2]


def run(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def embedded():
    """The small shipped model (fashion-tiny): real trained weights, fast enough for export tests."""
    return shipped_model("fashion-tiny")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, embedded):
    root = tmp_path_factory.mktemp("bundles")
    out = {}
    for prof in (identity(embedded.cfg), resolve("fashion-tiny-calibrated"), resolve("fashion-tiny-calibrated-fast")):
        out[prof.name] = (prof, export_bundle(embedded, prof, root / prof.name, SETTINGS, max_batch=4, progress=False))
    return out


def _parity(model, profile, path: Path, classes, seed: int, chain: bool | None = None) -> None:
    ref = generate(AcceleratedModel(model, profile), classes, SETTINGS, seed=seed, batch_size=len(classes))
    got = Pipeline.from_bundle(path, chain=chain).generate(classes, seed=seed)
    for k, t in enumerate(ref.tokens):
        assert np.array_equal(got.tokens[k], t.numpy()), f"step {k} tokens differ"
    diff = np.abs(got.images.astype(int) - ref.images.numpy().astype(int))
    assert diff.max() <= 1


@pytest.mark.parametrize("chain", [True, False], ids=["one-graph", "step-graphs"])
@pytest.mark.parametrize("name", ["identity", "fashion-tiny-calibrated", "fashion-tiny-calibrated-fast"])
def test_runtime_tokens_equal_torch_accelerated_path(bundles, embedded, name, chain):
    prof, path = bundles[name]
    _parity(embedded, prof, path, CLASSES, seed=4, chain=chain)     # 7 images, max batch 4: two chunks


def test_d16_schedule_paper_split_parity(tmp_path):
    """The 10-step 256-px schedule of VAR-d16, with the paper's split (two restoration sources)."""
    from fastervar.accel.presets import paper_split
    model = random_model("tiny-d16-schedule")
    prof = paper_split(model.cfg)
    path = export_bundle(model, prof, tmp_path / "b", SETTINGS, progress=False)
    _parity(model, prof, path, [1, 4], seed=2, chain=True)
    _parity(model, prof, path, [1, 4], seed=2, chain=False)


def test_bundle_layout_and_weights_stored_once(bundles, embedded):
    _, path = bundles["fashion-tiny-calibrated"]
    man = json.loads((path / "manifest.json").read_text())
    assert man["format"] == "fastervar-bundle/3" and man["precision"] == "fp32"
    names = [e["name"] for e in man["engines"]]
    assert names == [f"step{k}" for k in range(7)] + ["decoder"]
    for e in man["engines"]:
        onnx.checker.check_model(str(path / e["graph"]))
        g = onnx.load(str(path / e["graph"]), load_external_data=False)
        ext = {i.name for i in g.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL}
        assert ext == set(e["initializers"])
        assert all(d.value == "weights.bin" for i in g.graph.initializer for d in i.external_data if d.key == "location")
    chain = man["chain"]
    assert [i["name"] for i in chain["inputs"]] == ["labels"] + [f"noise.{k}" for k in range(7)]
    assert set(chain["initializers"]) <= set(man["weights"]["tensors"])   # shares weights.bin, adds nothing
    model_bytes = sum(p.numel() * 4 for p in embedded.parameters())
    bundle_bytes = sum(f.stat().st_size for f in path.iterdir())
    assert bundle_bytes <= 1.15 * model_bytes
    # every transformer weight appears once although seven graphs use it
    assert (path / "weights.bin").stat().st_size < model_bytes


def _official_vocabulary_model():
    """A small transformer over the official VQVAE's 4096 codes: the shapes that decide TopK sizes."""
    from fastervar.models.loading import randomize_
    from fastervar.models.var.configs import TINY_SCHEDULE, ModelConfig, VARConfig, VQVAEConfig
    from fastervar.models.var.family import VARModel
    cfg = ModelConfig("tiny-v4096", VARConfig(depth=1, embed_dim=32, num_heads=1, num_classes=10,
                                              patch_nums=TINY_SCHEDULE),
                      VQVAEConfig(vocab_size=4096, z_channels=8, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1,
                                  num_groups=8))
    return randomize_(VARModel(cfg)).eval()


@pytest.mark.parametrize("top_k", [900, 0], ids=["top-k-900", "top-p-only"])
def test_bundles_take_one_noise_value_per_token_and_fit_tensorrt_topk(tmp_path, top_k):
    """No noise input has a vocabulary axis, and no TopK asks TensorRT for more than 3840 (k = V =
    4096 without top-k); the runtime still samples the torch path's tokens."""
    from fastervar.export.inspect import bundle_facts
    model = _official_vocabulary_model()
    settings = SamplingSettings(top_k=top_k, top_p=0.96)
    prof = identity(model.cfg)
    path = export_bundle(model, prof, tmp_path / "b", settings, max_batch=2, progress=False)
    facts = bundle_facts(path)
    pn = model.cfg.var.patch_nums
    seen = 0
    for graph, f in facts.items():
        for name, shape in f["noise"].items():
            k = int(name.split(".")[1]) if "." in name else int(graph.removeprefix("step").removesuffix(".onnx"))
            assert shape == ["batch", pn[k] ** 2], (graph, name, shape)
            seen += 1
    assert seen == 2 * len(pn)                  # every step graph and every step of the chain
    ks = [k for f in facts.values() for k in f["topk"]]
    assert ks and all(k is not None and k <= 3840 for k in ks)
    assert max(ks) == (900 if top_k else 3840)
    ref = generate(AcceleratedModel(model, prof), [3, 8], settings, seed=1, batch_size=2)
    got = Pipeline.from_bundle(path).generate([3, 8], seed=1)
    assert all(np.array_equal(got.tokens[k], t.numpy()) for k, t in enumerate(ref.tokens))


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
def test_export_leaves_the_callers_model_where_it_was(tmp_path, device):
    """Export traces on the CPU in float32; the model it was handed comes back unchanged."""
    model = random_model("tiny").to(device, torch.float64)
    model.batch_invariant = True
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_bundle(model, identity(model.cfg), tmp_path / "b", SETTINGS, progress=False)
    w = model.var.head.weight
    assert w.device.type == device and w.dtype == torch.float64 and model.batch_invariant
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_runtime_names_the_fix_when_onnxruntime_packages_clash(monkeypatch):
    from fastervar.errors import FastervarError
    from fastervar.runtime import sessions
    monkeypatch.setattr(sessions, "available_providers", lambda: ["cpu"])
    monkeypatch.setattr(sessions, "installed_onnxruntime_packages", lambda: ["onnxruntime", "onnxruntime-gpu"])
    with pytest.raises(FastervarError, match="pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"):
        sessions._check_available("cuda")
    monkeypatch.setattr(sessions, "installed_onnxruntime_packages", lambda: ["onnxruntime"])
    with pytest.raises(FastervarError, match="is not available here; available: cpu"):
        sessions._check_available("cuda")


def test_cli_run_writes_the_pngs_generate_writes(bundles, tmp_path):
    _, path = bundles["fashion-tiny-calibrated"]
    a, b = tmp_path / "run", tmp_path / "gen"
    r = run("run", str(path), "--class", "2", "--class", "8", "--class", "8", "--seed", "5", "--out", str(a))
    assert r.exit_code == 0, r.output
    r = run("generate", "--model", "fashion-tiny", "--profile", "fashion-tiny-calibrated", "--sampler", "portable", "--class", "2",
            "--class", "8", "--class", "8", "--seed", "5", "--out", str(b))
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) == ["0000.png", "0001.png", "0002.png"]
    for n in names:
        x, y = (np.asarray(Image.open(d / n)).astype(int) for d in (a, b))
        assert np.abs(x - y).max() <= 1


def run_without_torch(bundle: Path, out: Path) -> None:
    """`fastervar run` in a fresh interpreter where torch and the toolchain cannot be imported."""
    code = ("import sys\n"
            "for m in ('torch', 'onnx', 'tqdm', 'scipy', 'safetensors', 'matplotlib'): sys.modules[m] = None\n"
            "from fastervar.cli import main\n"
            f"main(['run', {str(bundle)!r}, '--class', '1', '--out', {str(out)!r}])\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stderr
    assert (out / "0000.png").exists()


def test_runtime_runs_with_torch_and_toolchain_unimportable(bundles, tmp_path):
    run_without_torch(bundles["identity"][1], tmp_path / "o")


def _copy(bundles, tmp_path, name="identity") -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(bundles[name][1], dst)
    return dst


def test_bad_bundles_are_refused_with_one_line(bundles, tmp_path):
    out = str(tmp_path / "o")
    b = _copy(bundles, tmp_path)
    with open(b / "step3.onnx", "ab") as f:
        f.write(b"x")
    assert_bad_input(run("run", str(b), "--class", "1", "--out", out), "step3.onnx does not match the hash")
    (b / "step3.onnx").unlink()
    assert_bad_input(run("run", str(b), "--class", "1", "--out", out), "missing step3.onnx")
    shutil.rmtree(b)
    b = _copy(bundles, tmp_path)
    (b / "chain.onnx").write_bytes(b"not a graph")
    assert_bad_input(run("run", str(b), "--class", "1", "--out", out), "chain.onnx does not match the hash")
    shutil.rmtree(b)
    b = _copy(bundles, tmp_path)
    with open(b / "weights.bin", "r+b") as f:
        f.seek(5000)
        f.write(b"\x13\x37")
    assert_bad_input(run("run", str(b), "--class", "1", "--out", out), "weights.bin does not match the hash")
    man = json.loads((b / "manifest.json").read_text())
    man["format"] = "fastervar-bundle/0"
    (b / "manifest.json").write_text(json.dumps(man))
    assert_bad_input(run("run", str(b), "--class", "1", "--out", out), "'fastervar-bundle/0' is not supported")
    (b / "manifest.json").write_text("{not json")
    assert_bad_input(run("run", str(b), "--class", "1", "--out", out), "not valid JSON")
    assert_bad_input(run("run", str(tmp_path / "nope"), "--class", "1", "--out", out), "does not exist")
    assert not Path(out).exists()


def test_bad_run_arguments(bundles, tmp_path):
    _, path = bundles["identity"]
    out = str(tmp_path / "o")
    assert_bad_input(run("run", str(path), "--class", "10", "--out", out), "class index 10 is out of range")
    r = run("run", str(path), "--class", "1", "--out", out, "--provider", "cuda")
    assert_bad_input(r, "provider 'cuda' is not available here; available: cpu")
    assert not Path(out).exists()


def test_export_cli_tensorrt_missing_keeps_onnx_bundle(tmp_path):
    pytest.importorskip("onnxruntime")
    from fastervar.export.tensorrt import tensorrt_available
    if tensorrt_available() is None:
        pytest.skip("tensorrt is installed here: the missing-tensorrt message cannot be shown")
    out = tmp_path / "b"
    r = run("export", "--model", "tiny", "--random-weights", "--profile", "identity", "--out", str(out), "--tensorrt")
    assert r.exit_code == 0, r.output
    assert "--tensorrt skipped: tensorrt is not installed" in r.output
    assert (out / "manifest.json").exists() and not list(out.glob("*.plan"))
    assert Pipeline.from_bundle(out).generate([1]).images.shape == (1, 32, 32, 3)


def interrupt_trace(monkeypatch, at: int) -> None:
    """Make export's `at`-th graph trace raise KeyboardInterrupt, as Ctrl-C would."""
    calls = []
    real = bundle_mod._trace

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(bundle_mod, "_trace", interrupted)


def test_interrupted_export_leaves_nothing(tmp_path, monkeypatch):
    interrupt_trace(monkeypatch, 3)
    r = run("export", "--model", "tiny", "--random-weights", "--profile", "identity", "--out", str(tmp_path / "b"))
    assert r.exit_code == 130
    assert list(tmp_path.iterdir()) == []


def test_export_bad_arguments(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    r = run("export", "--model", "tiny", "--random-weights", "--profile", "identity", "--out", str(tmp_path))
    assert_bad_input(r, "is not a bundle")
    assert (tmp_path / "keep.txt").read_text() == "mine"
    r = run("export", "--model", "tiny", "--random-weights", "--profile", "fashion-tiny-calibrated",
            "--out", str(tmp_path / "b"))
    assert_bad_input(r, "fashion-tiny")
    assert not (tmp_path / "b").exists()


def test_fp16_bundle_is_half_size_and_runs(tmp_path):
    """What the README says of fp16 end to end: on `tiny`, the first two steps' tokens equal fp32's;
    later ones drift (a flipped token changes every later step's input)."""
    model = random_model("tiny")
    a = export_bundle(model, identity(model.cfg), tmp_path / "a", SETTINGS, progress=False)
    b = export_bundle(model, identity(model.cfg), tmp_path / "b", SETTINGS, precision="fp16", progress=False)
    wa, wb = ((p / "weights.bin").stat().st_size for p in (a, b))
    assert wb < 0.6 * wa
    classes = [1, 2, 3, 4, 5, 6, 7, 8]
    out = Pipeline.from_bundle(b).generate(classes, seed=0)
    ref = Pipeline.from_bundle(a).generate(classes, seed=0)
    assert out.images.shape == ref.images.shape
    assert all(np.array_equal(out.tokens[k], ref.tokens[k]) for k in (0, 1))
    assert np.mean(out.tokens[-1] == ref.tokens[-1]) > 0.5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fashion-16", "tiny-d16-schedule"])
def test_fp16_steps_stay_close_to_fp32(name):
    """Per step on the same inputs, fp16 logits are within 0.1% of fp32's (measured: at most
    0.034% on fashion-16, 0.048% on tiny-d16-schedule; largest error under 0.007 of their std)."""
    from fastervar.export.closeness import closeness
    model = shipped_model(name) if name == "fashion-16" else random_model(name)
    rows = closeness(AcceleratedModel(model, identity(model.cfg)), SETTINGS, "fp16", batch=4)
    assert all(r.logits_rel_error <= 1e-3 and r.logits_max_error <= 0.02 for r in rows), rows
