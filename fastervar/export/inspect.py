"""What a bundle's graphs ask of a backend, read off the ONNX files: the checks behind the
TensorRT-compatibility claims (noise without a vocabulary axis, TopK within TensorRT's limit)."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import numpy_helper

from ..bundle_contract import NOISE, read_manifest


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    out = {i.name: i for i in graph.initializer if i.data_location != onnx.TensorProto.EXTERNAL}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    out[node.output[0]] = attr.t
    return out


def topk_sizes(path: Path) -> list[int | None]:
    """k of every TopK node in a graph. Where k is computed (a full sort exports as TopK with k =
    the axis length), the axis length from shape inference stands for it: k can be no larger.
    None only where neither is known before run time."""
    model = onnx.load(str(path), load_external_data=False)
    consts = _constants(model.graph)
    inferred = onnx.shape_inference.infer_shapes(model).graph
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in [*inferred.value_info, *inferred.input, *inferred.output]}
    sizes: list[int | None] = []
    for node in model.graph.node:
        if node.op_type != "TopK":
            continue
        k = consts.get(node.input[1])
        if k is not None:
            sizes.append(int(numpy_helper.to_array(k).reshape(-1)[0]))
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        shape = shapes.get(node.input[0])
        sizes.append(shape[axis] if shape else None)
    return sizes


def bundle_facts(root: str | Path) -> dict:
    """Per graph of a bundle: the shapes of its noise inputs and the k of its TopK nodes."""
    manifest = read_manifest(root, verify=False)
    specs = manifest.engines + ([manifest.chain] if manifest.chain else [])
    facts = {}
    for e in specs:
        facts[e.graph] = {"noise": {i["name"]: i["shape"] for i in e.inputs if i["name"].startswith(NOISE)},
                          "topk": topk_sizes(manifest.path(e.graph))}
    return facts
