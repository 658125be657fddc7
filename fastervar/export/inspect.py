"""What a bundle's graphs ask of a backend, read off the ONNX files: the checks behind the
TensorRT-compatibility claims (noise without a vocabulary axis, TopK within TensorRT's limit)."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import numpy_helper

from ..runtime.manifest import read_manifest


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    out = {i.name: i for i in graph.initializer if i.data_location != onnx.TensorProto.EXTERNAL}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    out[node.output[0]] = attr.t
    return out


def topk_sizes(path: Path) -> list[int | None]:
    """k of every TopK node in a graph (None where k is computed at run time)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    consts = _constants(graph)
    sizes: list[int | None] = []
    for node in graph.node:
        if node.op_type == "TopK":
            k = consts.get(node.input[1])
            sizes.append(None if k is None else int(numpy_helper.to_array(k).reshape(-1)[0]))
    return sizes


def bundle_facts(root: str | Path) -> dict:
    """Per graph of a bundle: the shapes of its noise inputs and the k of its TopK nodes."""
    manifest = read_manifest(root, verify=False)
    specs = manifest.engines + ([manifest.chain] if manifest.chain else [])
    facts = {}
    for e in specs:
        facts[e.graph] = {"noise": {i["name"]: i["shape"] for i in e.inputs if i["name"].startswith("noise")},
                          "topk": topk_sizes(manifest.root / e.graph)}
    return facts
