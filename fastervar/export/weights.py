"""Store every weight of every graph once: one external-data file shared by all of a bundle's graphs.

Each large tensor is named after its content hash and appended to `weights.bin` the first time it
is met, so a weight used by ten step graphs (or repeated inside one) is written once, and the
runtime can hand the same memory to every session by name. Tensors are hashed and written from
their own memory, with no copy, so storing a model costs no second model's worth of RAM.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

ALIGN = 4096               # page-aligned tensors can be memory-mapped and shared as they are
INLINE_BYTES = 1024        # shapes, scalars and index tables stay inside their graph


def _raw(array: np.ndarray) -> memoryview:
    return memoryview(np.ascontiguousarray(array)).cast("B")


@dataclass
class WeightStore:
    """Appends unique tensors to one file; graphs refer to them by name."""

    path: Path
    tensors: dict[str, dict] = field(default_factory=dict)
    _size: int = 0

    def __post_init__(self) -> None:
        self._file = open(self.path, "wb")    # noqa: SIM115 -- appended to across graphs, closed by close()

    def close(self) -> None:
        self._file.close()

    def add(self, array: np.ndarray) -> str:
        """The tensor's name in the store, writing it if it is new."""
        data = _raw(array)
        digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
        digest.update(data)
        name = f"w.{digest.hexdigest()[:24]}"
        if name not in self.tensors:
            pad = -self._size % ALIGN
            self._file.write(b"\0" * pad)
            self._size += pad
            self.tensors[name] = {"dtype": array.dtype.name, "shape": list(array.shape),
                                  "offset": self._size, "length": len(data)}
            self._file.write(data)
            self._size += len(data)
        return name

    def read(self, name: str) -> np.ndarray:
        """A stored tensor read back (a copy, released by the caller)."""
        entry = self.tensors[name]
        if not self._file.closed:
            self._file.flush()
        count = int(np.prod(entry["shape"], dtype=np.int64))
        array = np.fromfile(self.path, dtype=entry["dtype"], count=count, offset=entry["offset"])
        return array.reshape(entry["shape"])

    def initializer(self, name: str) -> onnx.TensorProto:
        """An initializer that points into the store instead of holding the data."""
        entry = self.tensors[name]
        ext = onnx.TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(np.dtype(entry["dtype"])),
                               dims=entry["shape"])
        for key, value in (("location", self.path.name), ("offset", entry["offset"]), ("length", entry["length"])):
            ext.external_data.add(key=key, value=str(value))
        ext.data_location = onnx.TensorProto.EXTERNAL
        return ext
