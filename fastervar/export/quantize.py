"""int8 graphs: the transformer's linears with int8 weights and per-token int8 activations, the
decoder's convolutions in static QDQ int8.

Linears. Each MatMul by a transformer linear weight is rewritten, before the graph is bound to the
bundle's weights, into: the weight quantized per output channel (symmetric int8), the activations
quantized per token (symmetric, one scale per row of the residual stream), `MatMulInteger` and a
rescale. The weight side is constant, so binding folds it and only the int8 weight and its scales
reach the bundle. onnxruntime's `quantize_dynamic` is not used because it quantizes activations with
one scale per tensor, taken over the whole batch: an image's tokens would then depend on the other
images in its batch. Per-token scales keep every image independent of its batch. Activations are
fed to the fast uint8 x int8 kernel as int8 + 128 with zero point 128, which is exact.

Decoder. Dynamic int8 convolutions are slower than fp32 on CPU, so the convolutions get static QDQ
int8 from onnxruntime's `quantize_static` (per-channel weights, uint8 activations), with activation
ranges calibrated by min/max on latents from the model's own generations. The graph is bound to a
staging weights file and pre-processed (`quant_pre_process`: ONNX shape inference and
onnxruntime's basic optimizations; its symbolic shape inference cannot follow our batch-dependent
axes and is skipped). The ranges are measured by hooks on the torch decoder the graph was traced
from and handed to `quantize_static` as its calibration cache, keyed by the traced tensor names.
onnxruntime's own calibrator would instead run the graph with every convolution's input and output
made a graph output: at VAR-d16 size that session cost over five times the decoder's weights,
which put the int8 export above twice the model's. The caller binds the result to the bundle's
store.

Norms, attention, the logits and the whole sampling tail stay fp32.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from ..errors import FastervarError
from .fold import ConstantBinder
from .weights import WeightStore

# Which parameters' MatMuls (and Gemms) are quantized is the family's `INT8_LINEARS` pattern over the
# traced parameter names: the blocks' linears, their AdaLN projection and the step-input projection.
# The head and its AdaLN are left out on purpose: the logits, which sampling reads, stay fp32.
# A weight is K x N (inputs x outputs): its scales reduce over the K rows, one per output channel.
WEIGHT_SCALE_AXIS = 0
_PASS_THROUGH = {"Transpose", "Cast", "Identity"}
_EPS = 1e-30


def _plain_gemm(node: onnx.NodeProto) -> bool:
    """A Gemm that is just x @ W(.T) + b, as the exporter writes a 2-D linear layer."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return attrs.get("transA", 0) == 0 and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0


def _weight_input(node: onnx.NodeProto, made_by: Mapping[str, onnx.NodeProto]) -> str | None:
    """The graph input a node's second operand is, possibly transposed or cast on the way; None
    when it is computed."""
    name, producer = node.input[1], made_by.get(node.input[1])
    while producer is not None and producer.op_type in _PASS_THROUGH:
        name, producer = producer.input[0], made_by.get(producer.input[0])
    return name if producer is None else None


def linear_matmuls(model: onnx.ModelProto, pattern: str) -> list[int]:
    """Positions of the MatMul and plain Gemm nodes of a traced graph (weights still inputs) that
    multiply by a transformer linear weight (a parameter name `pattern` matches), possibly
    transposed or cast on the way."""
    linear = re.compile(pattern)
    made_by = {o: n for n in model.graph.node for o in n.output}
    out = []
    for i, node in enumerate(model.graph.node):
        if node.op_type not in ("MatMul", "Gemm") or (node.op_type == "Gemm" and not _plain_gemm(node)):
            continue
        name = _weight_input(node, made_by)
        if name is not None and linear.search(name):
            out.append(i)
    return out


def _constants(graph: onnx.GraphProto) -> dict[str, str]:
    """Scalar constants the rewritten MatMuls share, added once per graph."""
    values = {"eps": np.array(_EPS, np.float32), "127": np.array(127, np.float32),
              "128": np.array(128, np.float32), "zp": np.array(128, np.uint8)}
    names = {k: f"int8/{k}" for k in values}
    graph.initializer.extend(numpy_helper.from_array(v, names[k]) for k, v in values.items())
    return names


def quantize_linears(model: onnx.ModelProto, pattern: str) -> int:
    """Rewrite, in place and before binding, every transformer linear MatMul or Gemm (weights named
    by `pattern`) into int8 (see the module docstring); returns how many were rewritten."""
    graph = model.graph
    targets = set(linear_matmuls(model, pattern))
    if not targets:
        return 0
    c = _constants(graph)
    nodes: list[onnx.NodeProto] = []
    for i, node in enumerate(graph.node):
        if i not in targets:
            nodes.append(node)
            continue
        x, w, y, p = node.input[0], node.input[1], node.output[0], f"int8/{i}/"
        gemm = node.op_type == "Gemm"
        bias = node.input[2] if gemm and len(node.input) > 2 and node.input[2] else None
        if gemm and any(a.name == "transB" and a.i for a in node.attribute):
            nodes.append(helper.make_node("Transpose", [w], [p + "w_t"], perm=[1, 0]))
            w = p + "w_t"
        out = p + "unbiased" if bias else y
        nodes += [
            # weight: per output channel (columns of the K x N matrix); constant, so folded at binding
            helper.make_node("Abs", [w], [p + "w_abs"]),
            helper.make_node("ReduceMax", [p + "w_abs"], [p + "w_max"], axes=[WEIGHT_SCALE_AXIS], keepdims=1),
            helper.make_node("Max", [p + "w_max", c["eps"]], [p + "w_max1"]),
            helper.make_node("Div", [p + "w_max1", c["127"]], [p + "w_scale"]),
            helper.make_node("Div", [w, p + "w_scale"], [p + "w_div"]),
            helper.make_node("Round", [p + "w_div"], [p + "w_round"]),
            helper.make_node("Cast", [p + "w_round"], [p + "w_q"], to=TensorProto.INT8),
            # activations: one scale per token, shifted into uint8 with zero point 128
            helper.make_node("Abs", [x], [p + "x_abs"]),
            helper.make_node("ReduceMax", [p + "x_abs"], [p + "x_max"], axes=[-1], keepdims=1),
            helper.make_node("Max", [p + "x_max", c["eps"]], [p + "x_max1"]),
            helper.make_node("Div", [p + "x_max1", c["127"]], [p + "x_scale"]),
            helper.make_node("Div", [x, p + "x_scale"], [p + "x_div"]),
            helper.make_node("Round", [p + "x_div"], [p + "x_round"]),
            helper.make_node("Add", [p + "x_round", c["128"]], [p + "x_shift"]),
            helper.make_node("Cast", [p + "x_shift"], [p + "x_q"], to=TensorProto.UINT8),
            helper.make_node("MatMulInteger", [p + "x_q", p + "w_q", c["zp"]], [p + "acc"]),
            helper.make_node("Cast", [p + "acc"], [p + "acc_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [p + "acc_f", p + "w_scale"], [p + "rescaled"]),
            helper.make_node("Mul", [p + "rescaled", p + "x_scale"], [out]),
        ]
        if bias:
            nodes.append(helper.make_node("Add", [out, bias], [y]))
    del graph.node[:]
    graph.node.extend(nodes)
    return len(targets)


@contextlib.contextmanager
def _staged(model: onnx.ModelProto, params: Mapping[str, np.ndarray], opset: int) -> Iterator[tuple[Path, Path]]:
    """The graph bound to a throwaway weights file and pre-processed: (folder, model path)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="fastervar-int8-") as tmp:
        root = Path(tmp)
        store = WeightStore(root / "staged.bin")
        try:
            ConstantBinder(store, opset).bind(model, params)
        finally:
            store.close()
        onnx.save(model, str(root / "staged.onnx"))
        del model
        with _quiet():
            quant_pre_process(str(root / "staged.onnx"), str(root / "pre.onnx"), skip_symbolic_shape=True,
                              save_as_external_data=True, all_tensors_to_one_file=True,
                              external_data_location="pre.bin")
        yield root, root / "pre.onnx"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime's quantization tools log every node they skip; a failure still raises."""
    import logging

    with contextlib.redirect_stdout(io.StringIO()):
        level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)
        try:
            yield
        finally:
            logging.getLogger().setLevel(level)


def conv_sites(model: onnx.ModelProto) -> list[tuple[str, str, str]]:
    """(input, output, module path) of every Conv of a traced graph (weights still inputs): the
    module is the one that owns the Conv's weight parameter."""
    made_by = {o: n for n in model.graph.node for o in n.output}
    sites = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        name = _weight_input(node, made_by) or ""
        sites.append((node.input[0], node.output[0], name.rpartition(".")[0]))
    return sites


def conv_ranges(module: torch.nn.Module, sites: list[tuple[str, str, str]], latents: np.ndarray
                ) -> dict[str, tuple[float, float]]:
    """Min and max of every convolution's input and output over `latents`, by graph tensor name,
    from the torch module the graph was traced from. Hooks reduce each tensor as it is made, so a
    decode holds one convolution's activations at a time, not all of them."""
    ranges: dict[str, tuple[float, float]] = {}

    def widen(name: str, t: torch.Tensor) -> None:
        lo, hi = float(t.min()), float(t.max())
        old = ranges.get(name, (lo, hi))
        ranges[name] = (min(old[0], lo), max(old[1], hi))

    def watch(x: str, y: str):
        def hook(_mod, args, out) -> None:
            widen(x, args[0])
            widen(y, out)
        return hook

    hooks = []
    try:
        for x, y, path in sites:
            try:
                owner = module.get_submodule(path) if path else None
            except AttributeError:
                owner = None
            if not isinstance(owner, torch.nn.modules.conv._ConvNd):
                raise FastervarError(f"internal: the decoder's convolution {y} has no torch convolution to "
                                     "calibrate from")
            hooks.append(owner.register_forward_hook(watch(x, y)))
        with torch.no_grad():
            for i in range(len(latents)):
                module(torch.from_numpy(latents[i:i + 1]))
    finally:
        for h in hooks:
            h.remove()
    return ranges


def quantize_decoder(model: onnx.ModelProto, params: Mapping[str, np.ndarray], module: torch.nn.Module,
                     latents: np.ndarray, opset: int) -> onnx.ModelProto:
    """The decoder graph `model`, traced from `module`, with its convolutions in static QDQ int8
    (per-channel weights, uint8 activations), ranges calibrated by min/max on `latents`; its
    weights held inline."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if len(latents) == 0:
        raise FastervarError("an int8 decoder needs calibration latents: give --calib-images 1 or more, "
                             "or --decoder-precision fp32")
    ranges = conv_ranges(module, conv_sites(model), latents)
    try:
        with _staged(model, params, opset) as (root, pre), _quiet():
            cache = _ranges_cache(pre, ranges, root / "ranges.json")
            quantize_static(str(pre), str(root / "q.onnx"), None, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=["Conv"], per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibration_cache_path=str(cache),
                            use_external_data_format=True)
            out = onnx.load(str(root / "q.onnx"))
    except FastervarError:
        raise
    except Exception as exc:  # noqa: BLE001 -- the quantizer raises untyped errors for graphs it refuses
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise FastervarError(f"int8 quantization of the decoder failed: {first}") from None
    return out


def _ranges_cache(pre: Path, ranges: Mapping[str, tuple[float, float]], path: Path) -> Path:
    """onnxruntime's calibration cache for the pre-processed graph `pre`: the ranges of the tensors
    its own calibrator would watch (each float input and output of a Conv), every one of which
    must have been measured in torch, since pre-processing keeps the traced names."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    graph = onnx.load(str(pre), load_external_data=False).graph
    floats = {v.name for v in [*graph.value_info, *graph.input, *graph.output]
              if v.type.tensor_type.elem_type in (TensorProto.FLOAT, TensorProto.FLOAT16)}
    floats -= {i.name for i in graph.initializer}
    watched = {t for n in graph.node if n.op_type == "Conv" for t in [*n.input, *n.output] if t in floats}
    missing = sorted(watched - ranges.keys())
    if missing:
        raise FastervarError(f"internal: no calibration range for the decoder's tensor {missing[0]}")
    data = {t: TensorData(lowest=np.array(ranges[t][0], np.float32), highest=np.array(ranges[t][1], np.float32))
            for t in sorted(watched)}
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), path)
    return path


def calibration_latents(acc, settings, calib_images: int | None, seed: int = 0,
                        prompts=None) -> tuple[np.ndarray, dict]:
    """Final latents of the model's own generations under the exported profile, and how they were
    drawn. A class model: the profile's calibration prompts when it has them and `calib_images` is
    not given, else `calib_images` prompts spread over the classes (16 by default). A text model:
    the rows of `prompts` (a TextBatch), cycled or cut to `calib_images`."""
    from ..models.sampler import generate

    # One image at a time: the latents are the same at any batch (portable noise), and these
    # generations are the int8 export's peak. Exporting VAR-d16 from files, they peaked at 4.4x
    # the weights at batch 16, 2.0x at batch 2 and 1.6x at batch 1; the export took 12% longer.
    batch = 1
    cal = acc.profile.calibration or {}
    n = 16 if calib_images is None else calib_images
    if acc.model.conditioning()["kind"] == "text":
        if prompts is None or len(prompts) == 0:
            raise FastervarError("an int8 decoder of a text-to-image model calibrates on its generations from "
                                 "prompts: give --calib-embeddings F.npz or --text-encoder DIR, or "
                                 "--decoder-precision fp32")
        n = len(prompts) if calib_images is None else calib_images
        rows = [i % len(prompts) for i in range(n)]
        parts = [generate(acc, prompts.rows(rows), settings, seed=seed, batch_size=batch).f_hat] if n else []
        how = {"source": "prompts", "prompts": n, "seeds": [seed]}
    elif calib_images is None and cal.get("classes") and cal.get("seeds"):
        parts = [generate(acc, list(cal["classes"]), settings, seed=s, batch_size=batch).f_hat for s in cal["seeds"]]
        how = {"source": "the profile's calibration prompts", "classes": list(cal["classes"]),
               "seeds": list(cal["seeds"])}
    else:
        classes = [(7 * i) % acc.model.conditioning()["num_classes"] for i in range(n)]
        parts = [generate(acc, classes, settings, seed=seed, batch_size=batch).f_hat] if n else []
        how = {"source": "--calib-images", "classes": classes, "seeds": [seed]}
    latents = np.concatenate([p.float().cpu().numpy() for p in parts]) if parts else np.zeros((0,), np.float32)
    how.update(images=len(latents), method="minmax", format="QDQ", weights="int8 per channel",
               activations="uint8")
    return latents, how
