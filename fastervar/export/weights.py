"""Store every weight of every graph once: one external-data file shared by all of a bundle's graphs.

Each large initializer is renamed after its content hash and moved to `weights.bin`, so a weight
used by ten step graphs (or repeated inside one) is written once, and the runtime can hand the
same memory to every session by name.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ALIGN = 4096               # page-aligned tensors can be memory-mapped and shared as they are
INLINE_BYTES = 1024        # shapes, scalars and index tables stay inside their graph


@dataclass
class WeightStore:
    """Appends unique tensors to one file and rewrites graphs to point at them."""

    path: Path
    tensors: dict[str, dict] = field(default_factory=dict)
    _size: int = 0

    def __post_init__(self) -> None:
        self._file = open(self.path, "wb")    # noqa: SIM115 -- appended to across graphs, closed by close()

    def close(self) -> None:
        self._file.close()

    def _add(self, array: np.ndarray) -> str:
        data = np.ascontiguousarray(array).tobytes()
        digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode() + data).hexdigest()
        name = f"w.{digest[:24]}"
        if name not in self.tensors:
            pad = -self._size % ALIGN
            self._file.write(b"\0" * pad)
            self._size += pad
            self.tensors[name] = {"dtype": array.dtype.name, "shape": list(array.shape),
                                  "offset": self._size, "length": len(data)}
            self._file.write(data)
            self._size += len(data)
        return name

    def externalize(self, model: onnx.ModelProto) -> list[str]:
        """Move the model's large initializers into the store; returns the names it now uses."""
        graph = model.graph
        renames: dict[str, str] = {}
        kept, used = [], []
        for init in graph.initializer:
            array = numpy_helper.to_array(init)
            if array.nbytes < INLINE_BYTES:
                kept.append(init)
                continue
            name = self._add(array)
            renames[init.name] = name
            if name in used:
                continue                     # an identical tensor already stands for it in this graph
            used.append(name)
            ext = onnx.TensorProto(name=name, data_type=init.data_type, dims=init.dims)
            entry = self.tensors[name]
            for key, value in (("location", self.path.name), ("offset", entry["offset"]), ("length", entry["length"])):
                ext.external_data.add(key=key, value=str(value))
            ext.data_location = onnx.TensorProto.EXTERNAL
            kept.append(ext)
        del graph.initializer[:]
        graph.initializer.extend(kept)
        _rename_inputs(graph, renames)
        return used


def _rename_inputs(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _rename_inputs(sub, renames)
