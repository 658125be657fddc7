"""The whole generation as one graph, joined from the step graphs and the decoder graph already written.

Every executed step and the decoder in one graph: the condition (labels, or prompt embeddings and
lengths) and each step's noise in, images and tokens out. One session then holds (and prepacks) each weight once, and a batch is one call.
Joining the written graphs, instead of tracing the whole generation again, costs no more memory
than one graph: a trace of the full generation keeps every step's activations alive at once.
A step's state input reads the value the step that made it wrote, by the same names the runtime
uses; the weights are already named by content, so the steps' shared weights are one initializer.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from ..bundle_contract import (
    F_HAT,
    IMAGES,
    NOISE,
    TOKENS,
    state_name,
    step_noise,
    step_tokens,
)
from ..errors import FastervarError
from .graphs import StepIO


def _join(chain: onnx.GraphProto, graph: onnx.GraphProto, prefix: str, feeds: dict[str, str],
          outputs: dict[str, str], seen: set[str]) -> None:
    """Append `graph`'s nodes to `chain`: inputs read `feeds[name]`, outputs named in `outputs` keep
    those names, every other value gets `prefix`; stored weights are shared, inline constants not."""
    names = dict(feeds)
    for init in graph.initializer:
        if init.data_location == TensorProto.EXTERNAL:
            names[init.name] = init.name
            if init.name not in seen:
                seen.add(init.name)
                chain.initializer.append(init)
        else:
            names[init.name] = prefix + init.name
            local = TensorProto()
            local.CopyFrom(init)
            local.name = names[init.name]
            chain.initializer.append(local)
    for node in graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise FastervarError(f"internal: cannot join graph {graph.name!r}: node {node.op_type} has a subgraph")
        for o in node.output:
            if o:
                names[o] = outputs.get(o, prefix + o)
        joined = onnx.NodeProto()
        joined.CopyFrom(node)
        joined.input[:] = [names[i] if i else i for i in node.input]
        joined.output[:] = [names[o] if o else o for o in node.output]
        chain.node.append(joined)


def _value_info(graph: onnx.GraphProto, name: str, new_name: str) -> onnx.ValueInfoProto:
    for v in list(graph.input) + list(graph.output):
        if v.name == name:
            info = onnx.ValueInfoProto()
            info.CopyFrom(v)
            info.name = new_name
            return info
    raise FastervarError(f"internal: graph {graph.name!r} has no input or output {name!r}")


def join_chain(root: Path, ios: list[StepIO], steps: list[str], decoder: str,
               request: tuple[str, ...]) -> onnx.ModelProto:
    """One model from the step graphs (files under root, in `ios` order) and the decoder graph;
    `request` names the condition's tensors, the first with the batch axis first."""
    first = onnx.load(str(root / steps[0]), load_external_data=False)
    chain = helper.make_graph([], "chain", [], [])
    chain.input.extend(_value_info(first.graph, name, name) for name in request)
    f_hat = _value_info(first.graph, F_HAT, F_HAT)
    dims = [d.dim_value for d in f_hat.type.tensor_type.shape.dim[1:]]
    chain.node.extend([
        helper.make_node("Shape", [request[0]], ["init/batch"], start=0, end=1),
        helper.make_node("Constant", [], ["init/dims"], value=helper.make_tensor("dims", TensorProto.INT64, [3], dims)),
        helper.make_node("Concat", ["init/batch", "init/dims"], ["init/shape"], axis=0),
        helper.make_node("ConstantOfShape", ["init/shape"], ["init/f_hat"],
                         value=helper.make_tensor("zero", f_hat.type.tensor_type.elem_type, [1], [0])),
    ])
    state = {**{name: name for name in request}, F_HAT: "init/f_hat"}
    seen: set[str] = set()
    opsets: dict[str, int] = {}                  # quantized graphs may import more domains
    ir_version = first.ir_version
    for io, path in zip(ios, steps):
        part = first if path == steps[0] else onnx.load(str(root / path), load_external_data=False)
        graph = part.graph
        for op in part.opset_import:
            opsets[op.domain] = max(opsets.get(op.domain, 0), op.version)
        ir_version = max(ir_version, part.ir_version)
        noise = step_noise(io.step)
        chain.input.append(_value_info(graph, NOISE, noise))
        chain.output.append(_value_info(graph, TOKENS, step_tokens(io.step)))
        feeds = {name: (noise if name == NOISE else state[name]) for name in io.inputs}
        _join(chain, graph, f"s{io.step}/", feeds, {TOKENS: step_tokens(io.step)}, seen)
        for name in io.outputs:
            if state_name(name):
                state[state_name(name)] = f"s{io.step}/{name}"
    dec = onnx.load(str(root / decoder), load_external_data=False)
    for op in dec.opset_import:
        opsets[op.domain] = max(opsets.get(op.domain, 0), op.version)
    _join(chain, dec.graph, "dec/", {F_HAT: state[F_HAT]}, {IMAGES: IMAGES}, seen)
    chain.output.insert(0, _value_info(dec.graph, IMAGES, IMAGES))
    model = helper.make_model(chain, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                              ir_version=max(ir_version, dec.ir_version))
    model.producer_name, model.producer_version = first.producer_name, first.producer_version
    return model
