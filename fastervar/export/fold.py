"""Bind a traced graph's parameters to the weight store, folding whatever depends on them alone.

Graphs are traced with the parameters as graph inputs, so no proto ever holds a copy of the
model. Here each parameter input becomes an initializer in the shared `weights.bin`, and every
node whose inputs are all constants (a weight's transpose, a cast, a shape computation) is
evaluated once with onnx's reference implementation, as the exporter's constant folding would.
Results are remembered across graphs by what they were computed from, so the ten step graphs
that transpose the same weight compute and hash it once. Large results go to the store as soon
as they are made and are read back only when another folded node needs them: the extra memory
of binding a graph is one node's inputs and output.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from .weights import INLINE_BYTES, WeightStore

_RANDOM = {"RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike", "Multinomial", "Bernoulli"}
# Ops that make a large tensor out of small inputs stay in the graph: folding them would grow the bundle.
_GROWING = {"ConstantOfShape", "Expand", "Tile", "Range", "EyeLike", "Resize", "Pad"}
# Quantize/dequantize pairs are how an int8 graph says which weights are int8: folding a weight's
# DequantizeLinear would store it as fp32 again and hide the int8 convolution from onnxruntime.
_QDQ = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}


def _foldable_op(node: onnx.NodeProto) -> bool:
    return (node.op_type not in _RANDOM | _GROWING | _QDQ and node.domain in ("", "ai.onnx")
            and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute))


class ConstantBinder:
    """Turns parameter inputs into stored initializers and folds constant subgraphs, per bundle.

    A value is named by a key: `v.*` a small value held here, `w.*` a tensor in the store, `p.*` a
    parameter (the model's own memory, stored only if a graph reads it), `t.*` a large intermediate
    of a folded chain, held until its last folded consumer has run.
    """

    def __init__(self, store: WeightStore, opset: int):
        self.store, self.opset = store, opset
        self._small: dict[str, np.ndarray] = {}
        self._params: dict[str, np.ndarray] = {}
        self._param_keys: dict[tuple, str] = {}
        self._stored_params: dict[str, str] = {}
        self._pending: dict[str, list] = {}              # key -> [value, folded consumers still to run]
        self._folded: dict[bytes, list[str]] = {}        # what a node computed from -> its output keys
        self._transients = 0

    def _key_of_param(self, array: np.ndarray) -> str:
        """Parameters live as long as the model, so their memory address names them across graphs."""
        if array.nbytes < INLINE_BYTES:
            return self._small_key(array)
        where = (array.__array_interface__["data"][0], array.shape, array.dtype.str, array.strides)
        if where not in self._param_keys:
            key = f"p.{len(self._param_keys)}"
            self._param_keys[where], self._params[key] = key, array
        return self._param_keys[where]

    def _small_key(self, array: np.ndarray) -> str:
        digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode() + array.tobytes()).hexdigest()
        key = f"v.{digest[:24]}"
        self._small.setdefault(key, np.array(array))
        return key

    def _value(self, key: str) -> np.ndarray:
        if key in self._small:
            return self._small[key]
        if key in self._params:
            return self._params[key]
        if key in self._pending:
            return self._pending[key][0]
        return self.store.read(key)

    def _stored(self, key: str) -> str:
        """The store's name for a large value that a graph reads, writing it on first use."""
        if key in self._params:
            if key not in self._stored_params:
                self._stored_params[key] = self.store.add(self._params[key])
            return self._stored_params[key]
        if key in self._pending:
            return self.store.add(self._pending[key][0])
        return key

    def bind(self, model: onnx.ModelProto, params: Mapping[str, np.ndarray]) -> list[str]:
        """Rewrite `model` in place, its inputs named in `params` becoming constants; returns the
        stored weights it now reads, in order."""
        graph = model.graph
        known: dict[str, str] = {}
        for inp in graph.input:
            if inp.name in params:
                known[inp.name] = self._key_of_param(params[inp.name])
        for init in graph.initializer:
            array = numpy_helper.to_array(init)
            known[init.name] = self._small_key(array) if array.nbytes < INLINE_BYTES else self.store.add(array)
        const = set(known)
        folds = []
        for node in graph.node:
            if _foldable_op(node) and all(i in const for i in node.input if i):
                folds.append(node)
                const.update(node.output)
        fold_ids = {id(n) for n in folds}
        kept = [n for n in graph.node if id(n) not in fold_ids]
        read_by_graph = {i for n in kept for i in _all_inputs(n)} | {o.name for o in graph.output}
        uses = Counter(i for n in folds for i in n.input if i)
        for node in folds:
            outs = self._fold(node, [known.get(i, "") for i in node.input], read_by_graph, uses)
            known.update(zip(node.output, outs))
            for i in node.input:
                if i and known[i] in self._pending:
                    self._pending[known[i]][1] -= 1
                    if self._pending[known[i]][1] <= 0:
                        del self._pending[known[i]]
        return self._rewrite(graph, kept, known)

    def _fold(self, node: onnx.NodeProto, keys: list[str], read_by_graph: set[str], uses: Counter) -> list[str]:
        """Output keys of a node whose inputs are all constants."""
        memo = node.op_type.encode() + node.domain.encode() + b"".join(a.SerializeToString() for a in node.attribute)
        memo += "|".join(keys).encode()
        lasting = not any(k.startswith("t.") for k in keys)      # a transient input names no lasting value
        if lasting and memo in self._folded:
            return self._folded[memo]
        feeds = {name: self._value(k) for name, k in zip(node.input, keys) if name}
        outputs = ReferenceEvaluator(node, opsets={"": self.opset}).run(None, feeds)
        result = []
        for name, out in zip(node.output, outputs):
            array = np.asarray(out)
            if array.nbytes < INLINE_BYTES:
                result.append(self._small_key(array))
            elif name in read_by_graph:
                result.append(self.store.add(array))
            else:
                self._transients += 1
                key = f"t.{self._transients}"
                self._pending[key] = [array, uses[name]]
                result.append(key)
        del feeds, outputs
        if lasting and not any(k.startswith("t.") for k in result):
            self._folded[memo] = result
        return result

    def _rewrite(self, graph: onnx.GraphProto, kept: list[onnx.NodeProto], known: dict[str, str]) -> list[str]:
        read = [i for node in kept for i in _all_inputs(node)] + [o.name for o in graph.output]
        initializers, renames, used = [], {}, []
        for name in dict.fromkeys(read):
            if name not in known:
                continue
            key = known[name]
            if key in self._small:
                initializers.append(numpy_helper.from_array(self._small[key], name))
                continue
            stored = self._stored(key)
            renames[name] = stored
            if stored not in used:
                used.append(stored)
                initializers.append(self.store.initializer(stored))
        outputs = {o.name for o in graph.output}
        for name in outputs & renames.keys():         # an output that is a stored constant
            kept.append(onnx.helper.make_node("Identity", [renames.pop(name)], [name]))
        del graph.node[:]
        graph.node.extend(kept)
        _rename_inputs(graph, renames)
        real_inputs = [i for i in graph.input if i.name not in known]
        del graph.input[:]
        graph.input.extend(real_inputs)
        del graph.initializer[:]
        graph.initializer.extend(initializers)
        return used


def _all_inputs(node: onnx.NodeProto) -> list[str]:
    """A node's inputs, and the outer names its subgraphs read."""
    names = [i for i in node.input if i]
    for attr in node.attribute:
        for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            inner = {o for n in sub.node for o in n.output} | {i.name for i in sub.input} | {i.name for i in sub.initializer}
            names += [i for n in sub.node for i in _all_inputs(n) if i not in inner]
    return names


def _rename_inputs(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _rename_inputs(sub, renames)
