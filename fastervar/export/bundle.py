"""`fastervar export`: trace each executed step and the decoder, pack them into a bundle.

Graphs come from the TorchScript-based ONNX exporter (opset 17) with a dynamic batch axis; every
large initializer then moves to one shared `weights.bin` (see weights.py). Everything is written to
a temp directory that replaces the target only when the whole bundle, manifest last, is complete.
"""

from __future__ import annotations

import copy
import json
import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from tqdm.auto import tqdm

from .. import __version__
from ..accel.accelerated import AcceleratedModel
from ..errors import FastervarError
from ..models.family import VARModel
from ..models.sampling import SamplingSettings
from ..profile import Profile, model_identity
from ..runtime.atomic import atomic_dir
from ..runtime.manifest import FORMAT, MANIFEST, WEIGHTS, file_sha256
from .graphs import ChainGraph, DecoderGraph, StepGraph, StepIO, example_feeds, plan_io
from .weights import WeightStore

OPSET = 17
PRECISIONS = ("fp32", "fp16")
_EXAMPLE_BATCHES = (3, 5)     # two batch sizes tell which axes scale with the batch


def _symbolic(name: str, a: torch.Tensor, b: torch.Tensor) -> list:
    dims: list = []
    for i, (x, y) in enumerate(zip(a.shape, b.shape)):
        if x == y:
            dims.append(int(x))
        elif (x, y) == _EXAMPLE_BATCHES:
            dims.append("batch")
        elif (x, y) == tuple(2 * n for n in _EXAMPLE_BATCHES):
            dims.append("rows")
        else:
            raise FastervarError(f"internal: axis {i} of {name} scales oddly with the batch ({x} vs {y})")
    return dims


def _spec(name: str, a: torch.Tensor, b: torch.Tensor) -> dict:
    return {"name": name, "dtype": str(a.dtype).removeprefix("torch."), "shape": _symbolic(name, a, b)}


def _trace(module: torch.nn.Module, args: tuple, inputs: list[dict], outputs: list[dict]) -> onnx.ModelProto:
    """Export through a scratch file: past 2 GB the exporter must put weights beside a real path."""
    dyn = {s["name"]: {i: d for i, d in enumerate(s["shape"]) if isinstance(d, str)} for s in inputs + outputs}
    with tempfile.TemporaryDirectory(prefix="fastervar-trace-") as scratch, warnings.catch_warnings(), \
            torch.no_grad():
        warnings.simplefilter("ignore")
        path = Path(scratch) / "graph.onnx"
        torch.onnx.export(module, args, str(path), input_names=[s["name"] for s in inputs],
                          output_names=[s["name"] for s in outputs], dynamic_axes=dyn, opset_version=OPSET,
                          do_constant_folding=True, dynamo=False)
        return onnx.load(str(path), load_external_data=True)


def _compact(graph: onnx.GraphProto) -> None:
    """Short names for intermediate values, no node names, doc strings or shape annotations: the
    exporter's scoped names are a third of a small model's bundle and the runtime needs none of them."""
    keep = {v.name for v in graph.input} | {v.name for v in graph.output} | {i.name for i in graph.initializer}
    short: dict[str, str] = {}
    for node in graph.node:
        for name in node.output:
            if name and name not in keep:
                short.setdefault(name, f"t{len(short)}")
    for node in graph.node:
        node.name, node.doc_string = "", ""
        node.input[:] = [short.get(n, n) for n in node.input]
        node.output[:] = [short.get(n, n) for n in node.output]
    del graph.value_info[:]


def _write_graph(model: onnx.ModelProto, path: Path, store: WeightStore) -> list[str]:
    used = store.externalize(model)
    _compact(model.graph)
    model.producer_name, model.producer_version = "fastervar", __version__
    onnx.save(model, str(path))
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise FastervarError(f"internal: the ONNX checker rejected {path.name}: {str(exc).splitlines()[0]}") from None
    return used


def export_bundle(model: VARModel, profile: Profile, out: str | Path, settings: SamplingSettings,
                  precision: str = "fp32", max_batch: int = 16, weights_sha256: str | None = None,
                  tensorrt: bool = False, progress: bool = True) -> Path:
    """Write a bundle for `model` under `profile` to `out`, atomically; returns its path."""
    if precision not in PRECISIONS:
        raise FastervarError(f"unknown precision {precision!r}; choose fp32 or fp16")
    if settings.sampler != "portable":
        raise FastervarError("bundles sample with the portable sampler; --sampler official cannot be exported")
    if max_batch < 1:
        raise FastervarError(f"--max-batch must be at least 1, got {max_batch}")
    # Graphs are traced on the CPU in float32; the caller's model goes back where it was afterwards.
    where = model.var.head.weight
    device, dtype, invariant = where.device, where.dtype, model.batch_invariant
    model.to("cpu", torch.float32).eval()
    model.batch_invariant = False         # per-image Python loops would bake the batch size into the graphs
    try:
        acc = AcceleratedModel(copy.deepcopy(model) if precision == "fp16" else model, profile)
        if precision == "fp16":
            # Half weights traced under autocast: matmuls run in fp16 while autocast keeps softmax and
            # norms in float32, and the logits (hence the whole sampling tail) are float32.
            acc.cast_(torch.float16)
        with torch.autocast("cpu", dtype=torch.float16, enabled=precision == "fp16"):
            _write_bundle(acc, out, settings, precision, max_batch, weights_sha256, tensorrt, progress)
    finally:
        model.to(device, dtype)
        model.batch_invariant = invariant
    return Path(out)


def _write_bundle(acc: AcceleratedModel, out: str | Path, settings: SamplingSettings, precision: str,
                  max_batch: int, weights_sha256: str | None, tensorrt: bool, progress: bool) -> None:
    ios = plan_io(acc)
    recs = [example_feeds(acc, ios, settings, b) for b in _EXAMPLE_BATCHES]
    with atomic_dir(out) as tmp:
        store = WeightStore(tmp / WEIGHTS)
        engines = []
        try:
            bar = tqdm(total=len(ios) + 2, desc="export graphs", disable=not progress)
            for n, io in enumerate(ios):
                ra, rb = recs[0][0][n], recs[1][0][n]
                ins = [_spec(name, ra[name], rb[name]) for name in io.inputs]
                outs = [_spec(name, ra[name], rb[name]) for name in io.outputs]
                graph = _trace(StepGraph(acc, io, settings), tuple(ra[n_] for n_ in io.inputs), ins, outs)
                engines.append(_engine(f"step{io.step}", io.step, graph, ins, outs, tmp, store))
                bar.update()
            da, db = recs[0][1], recs[1][1]
            ins, outs = [_spec("f_hat", da["f_hat"], db["f_hat"])], [_spec("images", da["images"], db["images"])]
            graph = _trace(DecoderGraph(acc), (da["f_hat"],), ins, outs)
            engines.append(_engine("decoder", None, graph, ins, outs, tmp, store))
            bar.update()
            chain = _chain_engine(acc, ios, settings, recs, tmp, store)
            bar.update()
            bar.close()
        finally:
            store.close()
        if tensorrt:
            _build_plans(tmp, engines, max_batch, precision == "fp16", progress)
        manifest = _manifest(acc.model, acc.profile, settings, precision, max_batch, weights_sha256, ios, engines,
                             store, tmp)
        manifest["chain"] = chain
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))


def _chain_engine(acc: AcceleratedModel, ios: list[StepIO], settings: SamplingSettings, recs: list, root: Path,
                  store: WeightStore) -> dict:
    """The whole generation as one graph, from the recorded noise and images at both example batches."""
    ins, outs = [], []
    for io, a, b in zip(ios, recs[0][0], recs[1][0]):
        ins.append(_spec(f"noise.{io.step}", a["noise"], b["noise"]))
        outs.append(_spec(f"tokens.{io.step}", a["tokens"], b["tokens"]))
    labels = _spec("labels", recs[0][0][0]["labels"], recs[1][0][0]["labels"])
    images = _spec("images", recs[0][1]["images"], recs[1][1]["images"])
    args = (recs[0][0][0]["labels"], *(r["noise"] for r in recs[0][0]))
    graph = _trace(ChainGraph(acc, ios, settings), args, [labels, *ins], [images, *outs])
    return _engine("chain", None, graph, [labels, *ins], [images, *outs], root, store)


def _engine(name: str, step: int | None, graph: onnx.ModelProto, ins: list[dict], outs: list[dict], root: Path,
            store: WeightStore) -> dict:
    path = root / f"{name}.onnx"
    used = _write_graph(graph, path, store)
    return {"name": name, "step": step, "graph": path.name, "sha256": file_sha256(path), "inputs": ins,
            "outputs": outs, "initializers": used, "plan": None, "plan_sha256": None}


def _build_plans(root: Path, engines: list[dict], max_batch: int, fp16: bool, progress: bool) -> None:
    """TensorRT plans beside the graphs, when tensorrt is importable; otherwise say so and go on."""
    from .tensorrt import build_plan, tensorrt_available
    reason = tensorrt_available()
    if reason is not None:
        tqdm.write(f"warning: --tensorrt skipped: {reason}; the ONNX bundle is still written")
        return
    for e in tqdm(engines, desc="tensorrt plans", disable=not progress):
        plan = root / f"{e['name']}.plan"
        build_plan(root / e["graph"], plan, e["inputs"], max_batch, fp16)
        e["plan"], e["plan_sha256"] = plan.name, file_sha256(plan)


def _manifest(model: VARModel, profile: Profile, settings: SamplingSettings, precision: str, max_batch: int,
              weights_sha256: str | None, ios: list[StepIO], engines: list[dict], store: WeightStore,
              root: Path) -> dict:
    cfg = model.cfg
    executed = {io.step for io in ios}
    return {
        "format": FORMAT,
        "created_by": f"fastervar {__version__}, torch {torch.__version__}, onnx {onnx.__version__}",
        "model": {**model_identity(cfg, weights_sha256), "architecture": cfg.to_dict(), "num_classes": cfg.var.num_classes,
                  "vocab_size": cfg.vae.vocab_size, "patch_nums": list(cfg.var.patch_nums)},
        "profile": {"name": profile.name, "calibrated": profile.calibrated, "json": profile.to_dict()},
        "sampler": {"name": "portable", "cfg": settings.cfg, "top_k": settings.top_k, "top_p": settings.top_p,
                    "more_smooth": settings.more_smooth},
        "precision": precision,
        "opset": OPSET,
        "max_batch": max_batch,
        "steps": [{"step": k, "tokens": n * n, "mode": p.mode, "executed": k in executed}
                  for k, (n, p) in enumerate(zip(cfg.var.patch_nums, profile.steps))],
        "weights": {"file": WEIGHTS, "sha256": file_sha256(root / WEIGHTS), "bytes": (root / WEIGHTS).stat().st_size,
                    "tensors": store.tensors},
        "engines": engines,
    }
