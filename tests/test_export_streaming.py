"""Streaming export: parameters bound to the weights file without a copy of the model, constant
subgraphs folded once, a machine too small refused before anything is written, and the peak
memory of a real export bounded by the weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from fastervar.cli import main
from fastervar.export.fold import ConstantBinder
from fastervar.export.weights import WeightStore

from .test_cli import assert_bad_input


def _matmul_graph(name: str) -> onnx.ModelProto:
    """y = x @ (W^T * 2): the weight arrives as an input, as the exporter leaves it."""
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    nodes = [helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]),
             helper.make_node("Mul", ["Wt", "two"], ["W2"]),
             helper.make_node("MatMul", ["x", "W2"], ["y"])]
    graph = helper.make_graph(nodes, name,
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64]),
                               helper.make_tensor_value_info("W", TensorProto.FLOAT, [32, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])], [two])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_binder_folds_weight_transforms_once_and_stores_only_what_graphs_read(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    w = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)
    store = WeightStore(tmp_path / "weights.bin")
    binder = ConstantBinder(store, 17)
    graphs = [_matmul_graph(f"g{i}") for i in range(2)]
    used = [binder.bind(g, {"W": w}) for g in graphs]
    store.close()

    # only the folded weight is stored (not W, not the intermediate transpose), and only once
    assert used[0] == used[1] and len(store.tensors) == 1
    assert (tmp_path / "weights.bin").stat().st_size == w.nbytes
    assert np.array_equal(store.read(used[0][0]), (w.T * 2).astype(np.float32))
    for g in graphs:
        assert [n.op_type for n in g.graph.node] == ["MatMul"]
        assert [i.name for i in g.graph.input] == ["x"]
    path = tmp_path / "g.onnx"
    onnx.save(graphs[0], str(path))
    onnx.checker.check_model(str(path))
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, x @ (w.T * 2), rtol=1e-5, atol=1e-5)


def test_export_refuses_a_machine_without_the_memory_and_writes_nothing(tmp_path, monkeypatch):
    import fastervar.memory
    monkeypatch.setattr(fastervar.memory, "available_bytes", lambda: 2**20)
    out = tmp_path / "b"
    r = CliRunner().invoke(main, ["export", "--model", "tiny", "--random-weights", "--profile", "identity",
                                  "--out", str(out)])
    assert_bad_input(r, "export needs about")
    assert list(tmp_path.iterdir()) == []


_CHILD = """
import json, sys
import torch
from fastervar.export.bundle import export_bundle
from fastervar.memory import peak_resident_bytes, reset_peak_resident, resident_bytes
from fastervar.models.var.configs import TINY_SCHEDULE, TINY_VAE, ModelConfig, VARConfig
from fastervar.models.var.family import VARModel
from fastervar.models.sampling import SamplingSettings
from fastervar.profile import identity

torch.manual_seed(0)
cfg = ModelConfig("mem-test", VARConfig(depth=5, embed_dim=512, num_heads=8, num_classes=10,
                                        patch_nums=TINY_SCHEDULE), TINY_VAE)
model = VARModel(cfg).eval()
weights = sum(t.numel() * 4 for part in (model.var, model.vae) for t in part.state_dict().values())
start = resident_bytes()
assert reset_peak_resident()
export_bundle(model, identity(cfg), sys.argv[1], SamplingSettings(), progress=False)
print(json.dumps({"weights": weights, "start": start, "peak": peak_resident_bytes()}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="reads the peak resident set from Linux /proc")
def test_export_peak_memory_grows_at_most_one_and_a_half_times_the_weights(tmp_path):
    done = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "bundle")], check=False, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    m = json.loads(done.stdout.strip().splitlines()[-1])
    assert m["weights"] > 90 * 2**20                         # a model of about 100 MB
    growth = m["peak"] - m["start"]
    assert growth <= 1.5 * m["weights"], (growth / m["weights"], m)
    assert (tmp_path / "bundle" / "manifest.json").exists()


def test_binder_never_reuses_a_result_computed_from_a_released_intermediate(tmp_path):
    """Two graphs fold W^T then slice it differently; the transposes are dropped after use, and the
    second slice must not be taken for the first (each graph gets its own rows)."""
    w = np.arange(64 * 32, dtype=np.float32).reshape(64, 32)
    store = WeightStore(tmp_path / "weights.bin")
    binder = ConstantBinder(store, 17)
    for rows in (4, 9, 4, 9):
        starts = helper.make_tensor("starts", TensorProto.INT64, [1], [0])
        ends = helper.make_tensor("ends", TensorProto.INT64, [1], [rows])
        nodes = [helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]),
                 helper.make_node("Slice", ["Wt", "starts", "ends"], ["part"]),
                 helper.make_node("MatMul", ["x", "part"], ["y"])]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, rows]),
                                               helper.make_tensor_value_info("W", TensorProto.FLOAT, [64, 32])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 64])], [starts, ends])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        (name,) = binder.bind(model, {"W": w})
        assert np.array_equal(store.read(name), w.T[:rows])
    store.close()
