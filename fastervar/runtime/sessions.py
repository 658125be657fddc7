"""Engines for a bundle's graphs: onnxruntime sessions sharing one copy of the weights, or plans.

The weights file is memory-mapped once; every session is handed the same buffers by name
(`SessionOptions.add_initializer`), so memory does not grow with the number of step graphs.
ORT's weight prepacking is off by default for the same reason: it gives every session its own
repacked copy of every matrix (the Python API cannot share them). `prepack=True` trades that
memory for speed: small-batch matmuls run about 3x faster on prepacked weights.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..bundle_contract import EngineSpec, Manifest
from ..errors import FastervarError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


class Engine(Protocol):
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise FastervarError("the runtime needs onnxruntime (pip install onnxruntime, or onnxruntime-gpu "
                             "for CUDA)") from None
    return onnxruntime


def available_providers() -> list[str]:
    """Our provider names that this host can run: onnxruntime's, plus native TensorRT plans."""
    names = []
    try:
        have = set(_ort().get_available_providers())
        names = [short for short, long in PROVIDERS.items() if long in have]
    except FastervarError:
        pass
    from .tensorrt_engine import runtime_available
    if runtime_available() is None and "tensorrt" not in names:
        names.append("tensorrt")
    return names


class SharedWeights:
    """The bundle's weights file mapped read-only, as one OrtValue per tensor."""

    def __init__(self, manifest: Manifest):
        ort = _ort()
        spec = manifest.weights
        self._map = np.memmap(manifest.path(spec["file"]), dtype=np.uint8, mode="r")
        self.values = {}
        for name, t in spec["tensors"].items():
            raw = self._map[t["offset"]:t["offset"] + t["length"]]
            array = raw.view(np.dtype(t["dtype"])).reshape(t["shape"])
            self.values[name] = ort.OrtValue.ortvalue_from_numpy(array)

    @property
    def nbytes(self) -> int:
        return int(self._map.size)


class OrtEngine:
    """One graph as an onnxruntime session on the chosen execution provider."""

    def __init__(self, manifest: Manifest, spec: EngineSpec, weights: SharedWeights | None, provider: str,
                 threads: int = 0, prepack: bool = False):
        ort = _ort()
        so = ort.SessionOptions()
        if not prepack:
            so.add_session_config_entry("session.disable_prepacking", "1")
        so.log_severity_level = 3             # errors only: fp16 graphs draw harmless constant-folding warnings
        # Steps run one after another in different sessions: idle pools spinning for work would
        # steal the cores from the session that is running.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            so.intra_op_num_threads = threads
        for name in spec.initializers if weights is not None else ():
            so.add_initializer(name, weights.values[name])
        providers = [PROVIDERS[provider]] + (["CPUExecutionProvider"] if provider != "cpu" else [])
        try:
            self.session = ort.InferenceSession(str(manifest.path(spec.graph)), so, providers=providers)
        except Exception as exc:  # noqa: BLE001 -- onnxruntime raises untyped errors for bad graphs
            raise FastervarError(f"{spec.graph} could not be loaded by onnxruntime: {_first_line(exc)}") from None
        self.name = spec.name
        self.output_names = [o["name"] for o in spec.outputs]
        self.weights = weights                # the session reads these buffers: they must outlive it

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            results = self.session.run(self.output_names, feeds)
        except Exception as exc:  # noqa: BLE001 -- a graph that disagrees with its manifest fails untyped
            raise FastervarError(f"engine {self.name} failed: {_first_line(exc)} (the bundle's graph and manifest "
                                 f"disagree?)") from None
        return dict(zip(self.output_names, results))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def installed_onnxruntime_packages() -> list[str]:
    """The onnxruntime distributions pip installed here; they all provide the one `onnxruntime`
    module, so with two of them the last one written wins."""
    from importlib.metadata import distributions
    names = {(d.metadata["Name"] or "").lower() for d in distributions()}
    return sorted(n for n in names if n == "onnxruntime" or n.startswith("onnxruntime-"))


def _check_available(provider: str) -> None:
    have = available_providers()
    if provider in have:
        return
    packages = installed_onnxruntime_packages()
    if provider in ("cuda", "tensorrt") and "onnxruntime" in packages and len(packages) > 1:
        others = " ".join(p for p in packages if p != "onnxruntime")
        raise FastervarError(f"provider {provider!r} is not available: onnxruntime and {others} are both installed, "
                             f"and the CPU-only onnxruntime hides the GPU providers; fix: pip uninstall -y "
                             f"onnxruntime {others} && pip install {others}")
    raise FastervarError(f"provider {provider!r} is not available here; available: {', '.join(have) or 'none'}")


def check_provider(provider: str) -> None:
    """A known provider that this host can run, or one line saying what to install."""
    if provider not in PROVIDERS:
        raise FastervarError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    _check_available(provider)


def create_chain_engine(manifest: Manifest, provider: str, threads: int = 0) -> Engine:
    """The whole-generation graph in one session. onnxruntime loads its weights itself and repacks
    each matmul weight once, dropping the original, so one copy stays resident and matmuls run at
    their fastest."""
    if provider not in ("cpu", "cuda"):
        raise FastervarError(f"the single-graph engine runs on onnxruntime's cpu or cuda provider, not {provider!r}")
    _check_available(provider)
    return OrtEngine(manifest, manifest.chain, None, provider, threads, prepack=True)


def create_engines(manifest: Manifest, provider: str, threads: int = 0, prepack: bool = False,
                   weights: SharedWeights | None = None, specs: list[EngineSpec] | None = None) -> list[Engine]:
    """An engine per graph of `specs` (default: the manifest's steps and decoder, in order), on
    `provider` (cpu, cuda or tensorrt), reading `weights` (mapped here if not given: pass one to
    share it between aspects)."""
    check_provider(provider)
    specs = manifest.engines if specs is None else specs
    if provider == "tensorrt" and all(e.plan for e in specs):
        from .tensorrt_engine import TensorRTEngine, runtime_available
        if runtime_available() is None:
            return [TensorRTEngine(manifest.path(e.plan), e.inputs, e.outputs) for e in specs]
    if provider == "tensorrt" and PROVIDERS["tensorrt"] not in _ort().get_available_providers():
        raise FastervarError("provider 'tensorrt': this bundle has no TensorRT plans (export with --tensorrt) "
                             "and onnxruntime here has no TensorRT execution provider")
    weights = weights or SharedWeights(manifest)
    return [OrtEngine(manifest, e, weights, provider, threads, prepack) for e in specs]
