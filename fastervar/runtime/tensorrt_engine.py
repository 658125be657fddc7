"""Run a TensorRT plan from numpy, with cuda-python for device memory and no torch.

tensorrt and cuda-python are optional: they are imported only when a plan is used,
so importing this module never fails and the ONNX Runtime path works without them.
"""

from __future__ import annotations

import contextlib
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import FastervarError


def load_tensorrt() -> ModuleType:
    """The tensorrt module, or a FastervarError saying in one line why it cannot be had."""
    try:
        import tensorrt
    except ModuleNotFoundError as e:
        if e.name == "tensorrt":
            raise FastervarError("tensorrt is not installed "
                                 "(pip install tensorrt; needs an NVIDIA GPU)") from None
        raise FastervarError(f"tensorrt failed to import: {_one_line(e)}") from None
    except (ImportError, OSError) as e:  # its shared libraries or the CUDA libraries missing
        raise FastervarError(f"tensorrt failed to import: {_one_line(e)}") from None
    return tensorrt


def load_cudart() -> ModuleType:
    """cuda-python's runtime API module (new layout first, then the pre-12.6 one)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise FastervarError("cuda-python is not installed (pip install cuda-python); "
                                 "running TensorRT plans needs it for GPU memory") from None
    return cudart


def runtime_available() -> str | None:
    """None when TensorRT plans can be run here, else the one-line reason they cannot."""
    try:
        load_tensorrt()
        load_cudart()
    except FastervarError as e:
        return str(e)
    return None


def trt_logger() -> Any:
    """The process's one TensorRT logger, shared by builders and runtimes as TensorRT expects."""
    return _logger_for(load_tensorrt())


def take_trt_error() -> str:
    """The last error TensorRT logged (cleared on reading), to put into a one-line message."""
    logger = trt_logger()
    message, logger.last_error = logger.last_error, ""
    return message


@cache
def _logger_for(trt: ModuleType) -> Any:
    severity = trt.ILogger.Severity

    class _Logger(trt.ILogger):
        """Keeps errors for our own messages and passes warnings on to stderr."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.last_error = ""

        def log(self, level: Any, msg: str) -> None:
            if level == severity.ERROR or level == severity.INTERNAL_ERROR:
                self.last_error = " ".join(msg.split())
            elif level == severity.WARNING:
                print(f"TensorRT: {msg}", file=sys.stderr)

    return _Logger()


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _check(cudart: ModuleType, result: tuple, what: str) -> Any:
    """Unpack a cuda-python (error, value...) tuple, raising on any error code."""
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        name = getattr(err, "name", str(err))
        raise FastervarError(f"CUDA {what} failed: {name}")
    return values[0] if values else None


class TensorRTEngine:
    """One deserialized plan with its own execution context, CUDA stream and device buffers.

    Buffers are kept between calls and only reallocated when a larger batch needs more room,
    so chaining the steps of a generation does not allocate on every call.
    """

    def __init__(self, plan_path: Path, inputs: list[dict], outputs: list[dict]) -> None:
        self._cudart: ModuleType | None = None
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity)
        self._stream: Any = None
        self._context: Any = None
        self.input_names = [spec["name"] for spec in inputs]
        self.output_names = [spec["name"] for spec in outputs]
        trt = load_tensorrt()
        cudart = load_cudart()
        plan_path = Path(plan_path)
        try:
            plan = plan_path.read_bytes()
        except OSError as e:
            raise FastervarError(f"cannot read TensorRT plan {plan_path}: {e.strerror}") from None
        take_trt_error()
        self._runtime = trt.Runtime(trt_logger())
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise FastervarError(f"TensorRT plan {plan_path.name} could not be deserialized: "
                                 "built for another TensorRT version or GPU?")
        self._dtypes = self._io_dtypes(trt, plan_path.name, inputs, outputs)
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise FastervarError(f"TensorRT could not create a context for {plan_path.name}: "
                                 f"{take_trt_error() or 'out of GPU memory?'}")
        self._cudart = cudart
        self._stream = _check(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")

    def _io_dtypes(self, trt: ModuleType, plan_name: str, inputs: list[dict],
                   outputs: list[dict]) -> dict[str, np.dtype]:
        """The plan's tensor types, after checking that its inputs and outputs are the manifest's."""
        engine = self._engine
        found: dict[str, dict[str, np.dtype]] = {"input": {}, "output": {}}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            mode = "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
            try:
                found[mode][name] = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            except TypeError:
                raise FastervarError(f"TensorRT plan {plan_name}: tensor {name} has type "
                                     f"{engine.get_tensor_dtype(name)}, which numpy cannot hold"
                                     ) from None
        for mode, specs in (("input", inputs), ("output", outputs)):
            expected = {spec["name"]: np.dtype(spec["dtype"]) for spec in specs}
            if found[mode] != expected:
                raise FastervarError(f"TensorRT plan {plan_name} does not match the manifest: "
                                     f"its {mode}s are {_describe(found[mode])}, "
                                     f"the manifest says {_describe(expected)}")
        return found["input"] | found["output"]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the plan once on host arrays and return its outputs as host arrays."""
        if self._context is None:
            raise FastervarError("this TensorRT engine has been closed")
        cudart = self._cudart
        context = self._context
        missing = [name for name in self.input_names if name not in feeds]
        if missing:
            raise FastervarError(f"TensorRT engine is missing inputs: {', '.join(missing)}")
        hosts: dict[str, np.ndarray] = {}
        for name in self.input_names:
            array = np.ascontiguousarray(feeds[name])
            if array.dtype != self._dtypes[name]:
                raise FastervarError(f"input {name} must be {self._dtypes[name]}, got {array.dtype}")
            take_trt_error()
            if not context.set_input_shape(name, array.shape):
                raise FastervarError(f"input {name} of shape {list(array.shape)} does not fit the plan "
                                     f"(built for a smaller --max-batch?): {take_trt_error()}")
            hosts[name] = array
        results: dict[str, np.ndarray] = {}
        for name in self.output_names:
            shape = tuple(context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise FastervarError(f"output {name} has an unresolved shape {list(shape)}")
            results[name] = np.empty(shape, self._dtypes[name])
        for name, array in (hosts | results).items():
            context.set_tensor_address(name, self._device_buffer(name, array.nbytes))
        to_device = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        for name, array in hosts.items():
            self._copy(self._buffers[name][0], array.ctypes.data, array.nbytes, to_device)
        if not context.execute_async_v3(int(self._stream)):
            raise FastervarError(f"TensorRT execution failed: {take_trt_error() or 'no detail logged'}")
        to_host = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, array in results.items():
            self._copy(array.ctypes.data, self._buffers[name][0], array.nbytes, to_host)
        _check(cudart, cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return results

    def _device_buffer(self, name: str, nbytes: int) -> int:
        """A device pointer for `name` holding at least `nbytes`, growing its buffer when needed."""
        ptr, capacity = self._buffers.get(name, (0, 0))
        if capacity >= nbytes and capacity:
            return ptr
        if capacity:
            del self._buffers[name]
            _check(self._cudart, self._cudart.cudaFree(ptr), "cudaFree")
        size = max(nbytes, 1)  # TensorRT wants a real address even for an empty tensor
        ptr = int(_check(self._cudart, self._cudart.cudaMalloc(size), f"cudaMalloc of {size} bytes"))
        self._buffers[name] = (ptr, size)
        return ptr

    def _copy(self, dst: int, src: int, nbytes: int, kind: Any) -> None:
        if nbytes:
            _check(self._cudart, self._cudart.cudaMemcpyAsync(dst, src, nbytes, kind, self._stream),
                   "cudaMemcpyAsync")

    def close(self) -> None:
        """Free the device buffers and the stream now rather than whenever Python collects us."""
        self._context = None  # TensorRT objects go in dependency order: context, engine, runtime
        self._engine = None
        self._runtime = None
        cudart = self._cudart
        if cudart is None:
            return
        while self._buffers:
            _, (ptr, _) = self._buffers.popitem()
            _check(cudart, cudart.cudaFree(ptr), "cudaFree")
        if self._stream is not None:
            stream, self._stream = self._stream, None
            _check(cudart, cudart.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _describe(tensors: dict[str, np.dtype]) -> str:
    return ", ".join(f"{name} ({dtype})" for name, dtype in sorted(tensors.items())) or "none"
