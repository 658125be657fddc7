"""The bundle manifest: what export promises and what the runtime checks before trusting a bundle.

A bundle is a directory with `manifest.json`, one ONNX graph per executed scale step, a decoder
graph, one shared weights file and, optionally, TensorRT plans. The manifest lists the engines in
call order with their tensors, and a SHA-256 for every file, so a swapped, truncated or edited file
is refused with a message that names it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import FastervarError

# 2: noise is one uniform per token, (B, n); bundles of format 1 took (B, n, V) and must be re-exported
FORMAT = "fastervar-bundle/2"
MANIFEST = "manifest.json"
WEIGHTS = "weights.bin"


class BundleError(FastervarError):
    """A bundle that is missing, corrupt, or not one this runtime can run."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class EngineSpec:
    """One graph in call order: a scale step (`step` set) or the decoder."""

    name: str
    step: int | None
    graph: str
    sha256: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    initializers: list[str]
    plan: str | None = None
    plan_sha256: str | None = None
    precision: str = "fp32"                 # fp32, fp16, or int8 (int8 weights in its linears or convolutions)


@dataclass(frozen=True)
class Manifest:
    root: Path
    data: dict[str, Any]
    engines: list[EngineSpec]

    @property
    def num_classes(self) -> int:
        return int(self.data["model"]["num_classes"])

    @property
    def vocab_size(self) -> int:
        return int(self.data["model"]["vocab_size"])

    @property
    def patch_nums(self) -> list[int]:
        return list(self.data["model"]["patch_nums"])

    @property
    def max_batch(self) -> int:
        return int(self.data["max_batch"])

    @property
    def weights(self) -> dict[str, Any]:
        return self.data["weights"]

    @property
    def steps(self) -> list[EngineSpec]:
        return [e for e in self.engines if e.step is not None]

    @property
    def decoder(self) -> EngineSpec:
        return next(e for e in self.engines if e.step is None)

    @property
    def chain(self) -> EngineSpec | None:
        """All steps and the decoder as one graph (absent from bundles that did not export it)."""
        raw = self.data.get("chain")
        return EngineSpec(**raw) if raw else None


def read_manifest(root: str | Path, verify: bool = True) -> Manifest:
    """Parse and check a bundle's manifest; with `verify`, hash every file it names."""
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"bundle {root} does not exist or is not a directory")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{root} is not a bundle: it has no {MANIFEST}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else None
        raise BundleError(f"{path}: bundle format {got!r} is not supported; this runtime reads {FORMAT!r} "
                          f"(re-export the bundle with this version of fastervar)")
    try:
        engines = [EngineSpec(**e) for e in data["engines"]]
        if data.get("chain"):
            EngineSpec(**data["chain"])
        for key in ("model", "weights", "max_batch", "sampler", "precision"):
            data[key]
        for key in ("num_classes", "vocab_size", "patch_nums"):
            data["model"][key]
    except (KeyError, TypeError) as exc:
        raise BundleError(f"{path} is malformed: missing or bad field {exc}") from None
    manifest = Manifest(root, data, engines)
    files = [(data["weights"]["file"], data["weights"]["sha256"])]
    files += [(e.graph, e.sha256) for e in engines + ([manifest.chain] if manifest.chain else [])]
    files += [(e.plan, e.plan_sha256) for e in engines if e.plan]
    for name, digest in files:
        f = root / name
        if not f.is_file():
            raise BundleError(f"bundle {root} is missing {name}")
        if verify and file_sha256(f) != digest:
            raise BundleError(f"{f} does not match the hash in {MANIFEST}: the file is corrupt or was changed")
    return manifest
