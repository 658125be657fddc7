"""TensorRT plans: building and running them, and failing clearly where TensorRT is absent.

The real round trip needs tensorrt, cuda-python and a GPU and skips elsewhere. The engine's
own bookkeeping (shapes, buffers, copies) is also checked against a stand-in TensorRT, on
host memory everywhere and on real GPU memory where cuda-python and a GPU are present.
"""

from __future__ import annotations

import ctypes
import enum
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastervar.errors import FastervarError
from fastervar.export.tensorrt import build_plan, profile_shapes, tensorrt_available
from fastervar.runtime import tensorrt_engine
from fastervar.runtime.tensorrt_engine import TensorRTEngine, runtime_available

REPO = Path(__file__).resolve().parents[1]
X = {"name": "x", "dtype": "float32", "shape": ["batch", 8]}
Y = {"name": "y", "dtype": "float32", "shape": ["batch", 16]}


@pytest.fixture
def no_tensorrt(monkeypatch):
    """Make `import tensorrt` fail as it does where it is not installed."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


def test_tensorrt_available_gives_the_reason(no_tensorrt):
    reason = tensorrt_available()
    assert reason is not None and "tensorrt" in reason and "\n" not in reason
    assert "tensorrt" in runtime_available()


def test_build_plan_without_tensorrt_is_a_fastervar_error(no_tensorrt, tmp_path):
    with pytest.raises(FastervarError, match="tensorrt"):
        build_plan(tmp_path / "g.onnx", tmp_path / "g.plan", [X], max_batch=2, fp16=False)
    assert not (tmp_path / "g.plan").exists()


def test_engine_without_tensorrt_is_a_fastervar_error(no_tensorrt, tmp_path):
    with pytest.raises(FastervarError, match="tensorrt"):
        TensorRTEngine(tmp_path / "g.plan", [X], [Y])


def test_runtime_module_does_not_import_torch():
    code = "import sys, fastervar.runtime.tensorrt_engine; assert 'torch' not in sys.modules"
    p = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                       cwd=REPO)
    assert p.returncode == 0, p.stderr


def test_profile_ranges_symbolic_dims_up_to_the_batch_bound():
    assert profile_shapes(["batch", 8], 4) == ((1, 8), (4, 8))
    assert profile_shapes(["rows", 3, 16], 4) == ((1, 3, 16), (8, 3, 16))
    assert profile_shapes([1, 5], 4) == ((1, 5), (1, 5))
    with pytest.raises(FastervarError, match="tokens"):
        profile_shapes(["tokens"], 4)
    with pytest.raises(FastervarError, match="max-batch"):
        profile_shapes(["batch"], 0)


# ---- a stand-in TensorRT whose "plan" computes y = 2 * x, moving data with cudart ----

class FakeCudart:
    """cuda-python's calling convention over host memory, so the engine runs without a GPU."""

    class cudaError_t(enum.IntEnum):
        cudaSuccess = 0

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    def __init__(self):
        self.blocks: dict[int, np.ndarray] = {}
        self.streams = 0

    def cudaMalloc(self, nbytes):
        block = np.zeros(nbytes, np.uint8)
        self.blocks[block.ctypes.data] = block
        return self.cudaError_t.cudaSuccess, block.ctypes.data

    def cudaFree(self, ptr):
        del self.blocks[ptr]
        return (self.cudaError_t.cudaSuccess,)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        ctypes.memmove(dst, src, nbytes)
        return (self.cudaError_t.cudaSuccess,)

    def cudaStreamCreate(self):
        self.streams += 1
        return self.cudaError_t.cudaSuccess, 7

    def cudaStreamSynchronize(self, stream):
        return (self.cudaError_t.cudaSuccess,)

    def cudaStreamDestroy(self, stream):
        self.streams -= 1
        return (self.cudaError_t.cudaSuccess,)


class FakeTensorRT:
    """Just the TensorRT surface that TensorRTEngine touches."""

    class ILogger:
        class Severity(enum.Enum):
            INTERNAL_ERROR = 0
            ERROR = 1
            WARNING = 2
            INFO = 3
            VERBOSE = 4

        def __init__(self):
            pass

    class TensorIOMode(enum.Enum):
        INPUT = 1
        OUTPUT = 2

    def __init__(self, cudart):
        self.cudart = cudart

    @staticmethod
    def nptype(dtype):
        return dtype

    def Runtime(self, logger):
        fake = self

        class Runtime:
            def deserialize_cuda_engine(self, plan):
                return FakeEngine(fake.cudart) if plan == b"doubling plan" else None

        return Runtime()


class FakeEngine:
    num_io_tensors = 2

    def __init__(self, cudart):
        self.cudart = cudart

    def get_tensor_name(self, i):
        return "xy"[i]

    def get_tensor_mode(self, name):
        return FakeTensorRT.TensorIOMode.INPUT if name == "x" else FakeTensorRT.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return np.float32

    def create_execution_context(self):
        return FakeContext(self.cudart)


class FakeContext:
    def __init__(self, cudart):
        self.cudart = cudart
        self.shape: tuple[int, ...] = ()
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name, shape):
        if len(shape) != 2 or not 1 <= shape[0] <= 4 or shape[1] != 8:
            return False
        self.shape = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return self.shape if name == "x" else (self.shape[0], 16)

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr

    def execute_async_v3(self, stream):
        c = self.cudart
        x = np.empty(self.shape, np.float32)
        c.cudaMemcpyAsync(x.ctypes.data, self.addresses["x"], x.nbytes,
                          c.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream)
        c.cudaStreamSynchronize(stream)
        y = np.ascontiguousarray(np.tile(2 * x, 2))
        c.cudaMemcpyAsync(self.addresses["y"], y.ctypes.data, y.nbytes,
                          c.cudaMemcpyKind.cudaMemcpyHostToDevice, stream)
        c.cudaStreamSynchronize(stream)
        return True


def _gpu_cudart():
    reason = "needs cuda-python and a CUDA GPU"
    try:
        cudart = tensorrt_engine.load_cudart()
    except FastervarError:
        pytest.skip(reason)
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or count == 0:
        pytest.skip(reason)
    return cudart


@pytest.fixture(params=["host", "gpu"])
def fake_plan(request, monkeypatch, tmp_path):
    """A plan file and the stand-in TensorRT that runs it, on host or real GPU memory."""
    cudart = FakeCudart() if request.param == "host" else _gpu_cudart()
    fake = FakeTensorRT(cudart)
    monkeypatch.setattr(tensorrt_engine, "load_tensorrt", lambda: fake)
    monkeypatch.setattr(tensorrt_engine, "load_cudart", lambda: cudart)
    plan = tmp_path / "step0.plan"
    plan.write_bytes(b"doubling plan")
    return plan, cudart


def test_engine_runs_growing_its_buffers_and_frees_them_on_close(fake_plan):
    plan, cudart = fake_plan
    engine = TensorRTEngine(plan, [X], [Y])
    assert engine.input_names == ["x"] and engine.output_names == ["y"]
    rng = np.random.default_rng(0)
    for batch in (1, 3, 2):
        x = rng.standard_normal((batch, 8), dtype=np.float32)
        out = engine.run({"x": x})
        assert list(out) == ["y"] and out["y"].dtype == np.float32
        np.testing.assert_array_equal(out["y"], np.tile(2 * x, 2))
    if isinstance(cudart, FakeCudart):
        assert sorted(b.nbytes for b in cudart.blocks.values()) == [3 * 8 * 4, 3 * 16 * 4]
    engine.close()
    engine.close()
    if isinstance(cudart, FakeCudart):
        assert cudart.blocks == {} and cudart.streams == 0
    with pytest.raises(FastervarError, match="closed"):
        engine.run({"x": x})


def test_engine_rejects_bad_feeds_in_one_line(fake_plan):
    plan, _ = fake_plan
    engine = TensorRTEngine(plan, [X], [Y])
    with pytest.raises(FastervarError, match="missing inputs: x"):
        engine.run({})
    with pytest.raises(FastervarError, match="must be float32, got float64"):
        engine.run({"x": np.zeros((1, 8))})
    with pytest.raises(FastervarError, match="max-batch"):
        engine.run({"x": np.zeros((5, 8), np.float32)})
    engine.close()


def test_engine_reports_an_unloadable_plan_or_a_manifest_mismatch(fake_plan, tmp_path):
    plan, _ = fake_plan
    other = tmp_path / "step3.plan"
    other.write_bytes(b"from another TensorRT")
    with pytest.raises(FastervarError, match="step3.plan could not be deserialized"):
        TensorRTEngine(other, [X], [Y])
    with pytest.raises(FastervarError, match="does not match the manifest"):
        TensorRTEngine(plan, [X], [{**Y, "dtype": "float16"}])
    with pytest.raises(FastervarError, match="cannot read"):
        TensorRTEngine(tmp_path / "absent.plan", [X], [Y])


# ---- the real thing ----

needs_tensorrt = pytest.mark.skipif(
    tensorrt_available() is not None or runtime_available() is not None,
    reason=f"TensorRT round trip: {runtime_available() or tensorrt_available()}")


@pytest.fixture
def tiny_onnx(tmp_path):
    """A Linear+ReLU graph with a dynamic batch axis, weights in a separate file like a bundle's."""
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU()).eval()
    path = tmp_path / "graph.onnx"
    torch.onnx.export(model, (torch.zeros(2, 8),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False, opset_version=17)
    onnx.save(onnx.load(str(path)), str(path), save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    return model, path


@needs_tensorrt
def test_plan_matches_torch_at_several_batches(tiny_onnx, tmp_path):
    import torch

    model, path = tiny_onnx
    plan = tmp_path / "plans" / "graph.plan"
    build_plan(path, plan, [X], max_batch=4, fp16=False, workspace_gb=0.5)
    assert plan.stat().st_size > 0
    engine = TensorRTEngine(plan, [X], [Y])
    rng = np.random.default_rng(0)
    for batch in (1, 3):
        x = rng.standard_normal((batch, 8), dtype=np.float32)
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        got = engine.run({"x": x})["y"]
        assert got.shape == (batch, 16)
        np.testing.assert_allclose(got, want, atol=1e-4)
    with pytest.raises(FastervarError, match="max-batch"):
        engine.run({"x": np.zeros((5, 8), np.float32)})
    engine.close()


@needs_tensorrt
def test_build_plan_reports_parse_failures_and_wrong_inputs(tiny_onnx, tmp_path):
    _, path = tiny_onnx
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a graph")
    with pytest.raises(FastervarError, match="could not parse broken.onnx"):
        build_plan(broken, tmp_path / "broken.plan", [X], max_batch=2, fp16=False)
    with pytest.raises(FastervarError, match="manifest lists"):
        build_plan(path, tmp_path / "g.plan", [{**X, "name": "tokens"}], max_batch=2, fp16=False)
    assert not list(tmp_path.glob("*.plan"))
