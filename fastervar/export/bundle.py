"""`fastervar export`: trace each executed step and the decoder, pack them into a bundle.

Graphs come from the TorchScript-based ONNX exporter (opset 17) with a dynamic batch axis and the
parameters left out of the proto; fold.py binds them to one shared `weights.bin` (weights.py), so
export streams: one graph and one step's example state in memory at a time, each weight written
once. Everything is written to a temp directory that replaces the target only when the whole
bundle, manifest last, is complete.
"""

from __future__ import annotations

import copy
import io
import json
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from tqdm.auto import tqdm

from .. import __version__
from ..accel.accelerated import AcceleratedModel, under_move
from ..bundle_contract import (
    F_HAT,
    FORMAT,
    IMAGES,
    MANIFEST,
    NOISE,
    PRECISIONS,
    PREVIEW,
    TEXT,
    TEXT_LENGTHS,
    TOKEN_IDS,
    TOKENS,
    WEIGHTS,
    BundleError,
    read_manifest,
    step_noise,
    step_tokens,
)
from ..errors import FastervarError
from ..models.protocol import FamilyModel
from ..models.sampling import SamplingSettings
from ..profile import Profile, aspect_name, model_identity
from ..utils.atomic import atomic_dir
from ..utils.hashing import file_sha256
from .chain import join_chain
from .fold import ConstantBinder
from .graphs import (
    DecoderGraph,
    PreviewGraph,
    StepGraph,
    StepIO,
    TextEncoderGraph,
    example_prompts,
    example_steps,
    plan_io,
    request_names,
)
from .quantize import calibration_latents, quantize_decoder, quantize_linears
from .weights import WeightStore

OPSET = 17
DECODER_PRECISIONS = ("fp32", "int8")
# Graphs are traced at the first batch size; a run at the second tells which axes scale with the
# batch (rows = 2 x batch). The second is 1: it records shapes only, so it should cost the least memory.
# Prompts are as long as the matching entry of _EXAMPLE_TEXT, which tells the text axis apart.
_EXAMPLE_BATCHES = (2, 1)
_EXAMPLE_TEXT = (7, 5)


Shape = tuple[tuple[int, ...], torch.dtype]


def _symbolic(name: str, a: tuple[int, ...], b: tuple[int, ...]) -> list:
    dims: list = []
    for i, (x, y) in enumerate(zip(a, b)):
        if x == y:
            dims.append(int(x))
        elif (x, y) == _EXAMPLE_BATCHES:
            dims.append("batch")
        elif (x, y) == tuple(2 * n for n in _EXAMPLE_BATCHES):
            dims.append("rows")
        elif (x, y) == _EXAMPLE_TEXT:
            dims.append("text")
        else:
            raise FastervarError(f"internal: axis {i} of {name} scales oddly with the batch ({x} vs {y})")
    return dims


def _spec(name: str, a: torch.Tensor, b: Shape) -> dict:
    return {"name": name, "dtype": str(a.dtype).removeprefix("torch."), "shape": _symbolic(name, tuple(a.shape), b[0])}


class _WeightsAsInputs(torch.nn.Module):
    """Runs a module with its parameters and buffers taken from the trailing inputs, so the exporter
    sees them as graph inputs rather than state. Exported state is copied into protos by the
    exporter's shape inference (0.6 GB per VAR-d16 step graph); inputs carry only their shapes."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self._target = [module]                       # a list, so it is not registered as state
        named = dict(module.named_parameters()) | dict(module.named_buffers())
        self.names = list(named)
        self.tensors = tuple(t.detach() for t in named.values())

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        module, n = self._target[0], len(tensors) - len(self.names)
        saved = []
        for name, t in zip(self.names, tensors[n:]):
            path, _, attr = name.rpartition(".")
            owner = module.get_submodule(path)
            table = owner._parameters if attr in owner._parameters else owner._buffers
            saved.append((table, attr, table[attr]))
            table[attr] = t
        try:
            return module(*tensors[:n])
        finally:
            for table, attr, old in saved:
                table[attr] = old


def _trace(module: torch.nn.Module, args: tuple, inputs: list[dict],
           outputs: list[dict]) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The graph with the weights as extra inputs (the proto holds none of them), and the weights
    by input name, as arrays sharing the model's memory."""
    dyn = {s["name"]: {i: d for i, d in enumerate(s["shape"]) if isinstance(d, str)} for s in inputs + outputs}
    wrapper = _WeightsAsInputs(module)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (*args, *wrapper.tensors), buf,
                          input_names=[s["name"] for s in inputs] + wrapper.names,
                          output_names=[s["name"] for s in outputs], dynamic_axes=dyn, opset_version=OPSET,
                          export_params=False, do_constant_folding=False, dynamo=False)
    return onnx.load_from_string(buf.getvalue()), {k: t.numpy() for k, t in zip(wrapper.names, wrapper.tensors)}


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


def export_bundle(model: FamilyModel, profile: Profile, out: str | Path, settings: SamplingSettings,
                  precision: str = "fp32", max_batch: int = 16, weights_sha256: str | None = None,
                  tensorrt: bool = False, progress: bool = True, decoder_precision: str | None = None,
                  calib_images: int | None = None, aspects: Sequence[FamilyModel] = (),
                  text_encoder: str | Path | None = None, calib_prompts=None) -> Path:
    """Write a bundle for `model` under `profile` to `out`, atomically; returns its path.

    A text model's bundle holds one set of graphs per aspect: `model`'s, then each of `aspects`
    (the same weights on other aspect templates). `precision` int8 quantizes the transformer's
    linears and, unless `decoder_precision` says fp32, the decoder's convolutions (calibrated on
    the model's generations, see `calibration_latents`: a text model's from `calib_prompts`, a
    TextBatch). `text_encoder`, a T5 folder, adds its encoder as a graph and its tokenizer, so the
    bundle takes prompts as text."""
    if precision not in PRECISIONS:
        raise FastervarError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")
    if decoder_precision is not None and (decoder_precision not in DECODER_PRECISIONS or precision == "fp16"):
        raise FastervarError(f"--decoder-precision {decoder_precision} goes with --precision fp32 or int8, "
                             f"and is fp32 or int8")
    decoder = decoder_precision or ("int8" if precision == "int8" else precision)
    text = model.conditioning()["kind"] == "text"
    if aspects and not text:
        raise FastervarError("only a text-to-image model's bundle holds several aspects")
    if text_encoder is not None and not text:
        raise FastervarError("--text-encoder is for text-to-image models; this one takes class labels")
    encoder = None if text_encoder is None else _load_text_encoder(Path(text_encoder), model)
    if tensorrt and "int8" in (precision, decoder):
        raise FastervarError("TensorRT plans are built from fp32/fp16 graphs; an int8 bundle runs on onnxruntime "
                             "(drop --tensorrt, or export fp16 for TensorRT)")
    if decoder == "int8" and calib_images == 0:
        raise FastervarError("an int8 decoder needs calibration latents: give --calib-images 1 or more, "
                             "or --decoder-precision fp32")
    if settings.sampler != "portable":
        raise FastervarError("bundles sample with the portable sampler; --sampler official cannot be exported")
    if max_batch < 1:
        raise FastervarError(f"--max-batch must be at least 1, got {max_batch}")
    check_memory(model, precision)
    # Graphs are traced on the CPU in float32; the caller's model goes back where it was afterwards.
    device, dtype = model.device, model.dtype
    invariant = getattr(model, "batch_invariant", None)
    model.to("cpu", torch.float32).eval()
    if invariant is not None:
        model.batch_invariant = False     # per-image Python loops would bake the batch size into the graphs
    try:
        models = [model, *aspects]
        if precision == "fp16":
            models = half_copy(models)
        views = [AcceleratedModel(m, profile) for m in models]
        if precision == "fp16":
            # Half weights traced under autocast: matmuls run in fp16 while autocast keeps softmax and
            # norms in float32, and the logits (hence the whole sampling tail) are float32.
            for view in views:
                view.cast_(torch.float16)
        calibration = None
        if decoder == "int8":
            calibration = calibration_latents(views[0], settings, calib_images, prompts=calib_prompts)
        with torch.autocast("cpu", dtype=torch.float16, enabled=precision == "fp16"):
            _write_bundle(views, out, settings, (precision, decoder), max_batch, weights_sha256, tensorrt, progress,
                          calibration, encoder)
    finally:
        model.to(device, dtype)
        if invariant is not None:
            model.batch_invariant = invariant
    return Path(out)


def half_copy(models: list[FamilyModel]) -> list[FamilyModel]:
    """One deep copy of `models` (so aspects keep sharing its weights) whose floating weights are
    made half as they are copied: the copy never holds a second float32 set of the weights."""
    memo: dict[int, torch.Tensor] = {}
    for m in models:
        for t in (*m.parameters(), *m.buffers()):
            if t.is_floating_point() and id(t) not in memo:
                half = t.detach().to(torch.float16)
                memo[id(t)] = torch.nn.Parameter(half, t.requires_grad) if isinstance(t, torch.nn.Parameter) else half
    return copy.deepcopy(models, memo)


def _load_text_encoder(folder: Path, model: FamilyModel):
    """The T5 encoder of `folder` and its tokenizer file, checked against the model's text width."""
    from ..models.text.t5 import load_encoder
    if not (folder / "tokenizer.json").is_file():
        raise FastervarError(f"--text-encoder {folder}: no tokenizer.json (save the tokenizer with the model)")
    encoder = load_encoder(folder)
    want = model.conditioning()["channels"]
    if encoder.cfg.d_model != want:
        raise FastervarError(f"--text-encoder {folder}: its embeddings are {encoder.cfg.d_model} wide; the model "
                             f"takes {want}")
    return encoder, folder / "tokenizer.json"


def check_target(out_dir: str | Path) -> None:
    """Export replaces an old bundle but never a directory that holds anything else."""
    d = Path(out_dir)
    if d.exists() and (not d.is_dir() or (any(d.iterdir()) and not (d / MANIFEST).exists())):
        raise FastervarError(f"--out {out_dir} exists and is not a bundle; choose a new or empty directory")


def check_memory(model: FamilyModel, precision: str) -> None:
    """Fail before writing anything when the machine cannot hold what export adds to the model:
    one step's state at the example batch, the fp16 copy of the weights, and one weight in flight."""
    from ..memory import available_bytes

    free = available_bytes()
    if free is None:
        return
    spec = model.spec()
    rows = 2 * _EXAMPLE_BATCHES[0]
    tokens = sum(spec.tokens(k) for k in range(spec.num_steps))
    state = 2 * 2 * spec.depth * rows * tokens * spec.width * 4     # caches in and out
    tensors = [t for part in model.state_parts() for t in part.state_dict().values()]
    weights = sum(t.numel() * 4 for t in tensors)
    # fp16 keeps a half copy. int8 folds each graph's weight quantization one weight at a time, then
    # quantizes the decoder from staged copies of its weights: half the weights and a GiB bound that
    # for a decoder that is a fraction of the model (measured on VAR-d16 from files, the int8
    # export now peaks below the fp32 one).
    extra = {"fp16": weights // 2, "int8": weights // 2 + 2**30}.get(precision, 0)
    need = state + 2 * max(t.numel() * 4 for t in tensors) + extra + 2**28
    if need > free:
        raise FastervarError(f"export needs about {need / 2**30:.1f} GiB of memory beyond the loaded model "
                             f"({weights / 2**30:.2f} GiB of weights) and only {free / 2**30:.1f} GiB is "
                             f"available; free memory or use a machine with more")


def _write_bundle(views: list[AcceleratedModel], out: str | Path, settings: SamplingSettings,
                  precisions: tuple[str, str], max_batch: int, weights_sha256: str | None, tensorrt: bool,
                  progress: bool, calibration: tuple[np.ndarray, dict] | None, encoder=None) -> None:
    """Each graph is traced, quantized if asked, bound to the weights file and written before the
    next is traced; one set of graphs per view (aspect), all bound to the one weights file, and
    the text encoder's graph when `encoder` (a T5 encoder and its tokenizer file) is given.
    `precisions` is (the steps', the decoder's)."""
    text = views[0].model.conditioning()["kind"] == "text"
    with atomic_dir(out) as tmp:
        store = WeightStore(tmp / WEIGHTS)
        binder = ConstantBinder(store, OPSET)
        sets = []
        try:
            for acc in views:
                prefix = aspect_name(acc.spec().aspect).replace(":", "x") + "-" if text else ""
                sets.append(_write_set(acc, prefix, tmp, binder, settings, precisions, progress, calibration))
            text_encoder = None if encoder is None else _write_text_encoder(*encoder, tmp, binder, views[0])
        finally:
            store.close()
        if tensorrt:
            decided = [e for *_, extra in sets if extra for e in [extra["preview"]] +
                       [g for m in extra["moves"] for g in m["engines"]]]
            _build_plans(tmp, [e for _, engines, *_ in sets for e in engines] + decided, max_batch,
                         precisions[0] == "fp16", progress)
        acc = views[0]
        manifest = _manifest(acc, settings, precisions[0], max_batch, weights_sha256, sets[0][0], store, tmp)
        manifest["decoder_calibration"] = calibration[1] if calibration else None
        manifest["text_encoder"] = text_encoder
        if text:
            manifest["aspects"] = [{"name": aspect_name(v.spec().aspect), "h_div_w": v.spec().aspect,
                                    "grids": [list(g) for g in v.spec().grids], "engines": engines, "chain": chain,
                                    **({"decision": extra} if extra else {})}
                                   for v, (_, engines, chain, extra) in zip(views, sets)]
        else:
            manifest["engines"], manifest["chain"] = sets[0][1], sets[0][2]
            if sets[0][3]:
                manifest["decision"] = sets[0][3]
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        try:
            read_manifest(tmp, verify=False)       # what export wrote must be what the runtime accepts
        except BundleError as exc:
            raise FastervarError(f"internal: export wrote a bundle the contract refuses: {exc}") from None


def _write_set(acc: AcceleratedModel, prefix: str, tmp: Path, binder: ConstantBinder, settings: SamplingSettings,
               precisions: tuple[str, str], progress: bool,
               calibration: tuple[np.ndarray, dict] | None) -> tuple[list[StepIO], list[dict], dict | None, dict | None]:
    """One aspect's step graphs, decoder graph and joined graph, written under `prefix`; with a
    per-image decision, no joined graph but the preview graph and each move's step graphs."""
    precision, decoder = precisions
    decision = acc.decision
    base = acc if decision is None else AcceleratedModel(acc.model, under_move(acc.profile, ("none", 0)))
    ios = plan_io(base)
    moves = [] if decision is None else decision.move_set()
    bar = tqdm(total=len(ios) + 2 + len(moves), desc=f"export graphs {prefix.rstrip('-')}".rstrip(),
               disable=not progress)
    try:
        engines, (dec, other) = _step_engines(base, ios, f"{prefix}step", tmp, binder, settings, precision, bar)
        ins, outs = [_spec(F_HAT, dec[F_HAT], other[F_HAT])], [_spec(IMAGES, dec[IMAGES], other[IMAGES])]
        decoder_module = DecoderGraph(acc)
        graph, params = _trace(decoder_module, (dec[F_HAT],), ins, outs)
        if decoder == "int8":
            graph, params = quantize_decoder(graph, params, decoder_module, calibration[0], OPSET), {}
        engines.append(_engine(f"{prefix}decoder", None, graph, ins, outs, tmp, binder, params, decoder))
        bar.update()
        if decision is None:
            chain, extra = _chain_engine(ios, engines, tmp, request_names(acc), f"{prefix}chain"), None
        else:
            chain, extra = None, _decision_engines(acc, moves, dec, other, prefix, tmp, binder, settings, precision,
                                                   bar)
        del dec
        bar.update()
    finally:
        bar.close()                   # ends its line, so an error message starts on its own
    return ios, engines, chain, extra


def _step_engines(acc: AcceleratedModel, ios: list[StepIO], name: str, tmp: Path, binder: ConstantBinder,
                  settings: SamplingSettings, precision: str, bar, first: int = 0) -> tuple[list[dict], tuple]:
    """The step graphs of `ios` from step `first` on (the earlier steps run only to reach their
    state), and the decoder's example input and output at both batch sizes."""
    shapes = [{k: (tuple(v.shape), v.dtype) for k, v in feeds.items()}
              for feeds in example_steps(acc, ios, settings, _EXAMPLE_BATCHES[1], _EXAMPLE_TEXT[1])]
    examples = example_steps(acc, ios, settings, _EXAMPLE_BATCHES[0], _EXAMPLE_TEXT[0])
    engines = []
    for io_, feeds, other in zip(ios, examples, shapes):
        if io_.step < first:
            continue
        ins = [_spec(n, feeds[n], other[n]) for n in io_.inputs]
        outs = [_spec(n, feeds[n], other[n]) for n in io_.outputs]
        graph, params = _trace(StepGraph(acc, io_, settings), tuple(feeds[n] for n in io_.inputs), ins, outs)
        del feeds
        if precision == "int8" and not quantize_linears(graph, acc.model.INT8_LINEARS):
            raise FastervarError(f"int8 quantization of step {io_.step} failed: its graph has no "
                                 f"transformer linear layer to quantize")
        engines.append(_engine(f"{name}{io_.step}", io_.step, graph, ins, outs, tmp, binder, params, precision))
        bar.update()
    return engines, (next(examples), shapes[-1])


def _decision_engines(acc: AcceleratedModel, moves: list[tuple[str, int]], dec: dict, other: dict, prefix: str,
                      tmp: Path, binder: ConstantBinder, settings: SamplingSettings, precision: str, bar) -> dict:
    """The preview graph (fp32: it decides, so int8 rounding must not move a decision) and, for
    each move the rule can pick, the step graphs its images run from the move's first step."""
    d = acc.decision
    with torch.no_grad():
        small = PreviewGraph(acc, d.preview_step)(torch.zeros(other[F_HAT][0], dtype=other[F_HAT][1]))
        preview = PreviewGraph(acc, d.preview_step)(dec[F_HAT])
    ins = [_spec(F_HAT, dec[F_HAT], other[F_HAT])]
    outs = [_spec(PREVIEW, preview, (tuple(small.shape), small.dtype))]
    graph, params = _trace(PreviewGraph(acc, d.preview_step), (dec[F_HAT],), ins, outs)
    entry = {"preview": _engine(f"{prefix}preview", None, graph, ins, outs, tmp, binder, params, "fp32"), "moves": []}
    for kind, first in moves:
        graphs: list[dict] = []
        if kind != "skip":
            view = AcceleratedModel(acc.model, under_move(acc.profile, (kind, first)))
            graphs, _ = _step_engines(view, plan_io(view), f"{prefix}{kind}{first}-step", tmp, binder, settings,
                                      precision, bar, first)
        else:
            bar.update()
        entry["moves"].append({"kind": kind, "first": first, "engines": graphs})
    return entry


def _write_text_encoder(encoder: torch.nn.Module, tokenizer: Path, root: Path, binder: ConstantBinder,
                        acc: AcceleratedModel) -> dict:
    """The T5 encoder as a graph (token ids and lengths in, the step graphs' embeddings out), in
    fp32 at every precision (traced outside the fp16 export's autocast), and a copy of its
    tokenizer."""
    encoder.to("cpu", torch.float32).eval()
    graph_module = TextEncoderGraph(encoder)
    vocab = encoder.cfg.vocab_size
    ids, lengths = example_prompts(vocab, _EXAMPLE_BATCHES[0], _EXAMPLE_TEXT[0])
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        small = graph_module(*example_prompts(vocab, _EXAMPLE_BATCHES[1], _EXAMPLE_TEXT[1]))
        text = graph_module(ids, lengths)
        ins = [_spec(TOKEN_IDS, ids, ((_EXAMPLE_BATCHES[1], _EXAMPLE_TEXT[1]), ids.dtype)),
               _spec(TEXT_LENGTHS, lengths, ((_EXAMPLE_BATCHES[1],), lengths.dtype))]
        outs = [_spec(TEXT, text, (tuple(small.shape), small.dtype))]
        graph, params = _trace(graph_module, (ids, lengths), ins, outs)
    entry = _engine("text_encoder", None, graph, ins, outs, root, binder, params, "fp32")
    shutil.copyfile(tokenizer, root / "tokenizer.json")
    return {**entry, "tokenizer": "tokenizer.json", "tokenizer_sha256": file_sha256(root / "tokenizer.json"),
            "max_length": acc.model.conditioning()["max_length"]}


def _chain_engine(ios: list[StepIO], engines: list[dict], root: Path, request: tuple[str, ...], name: str) -> dict:
    """The step graphs and the decoder joined into one graph (chain.py), with their specs."""
    steps, decoder = engines[:-1], engines[-1]
    model = join_chain(root, ios, [e["graph"] for e in steps], decoder["graph"], request)
    ins = [_named(steps[0]["inputs"], r) for r in request]
    outs = [_named(decoder["outputs"], IMAGES)]
    for io_, e in zip(ios, steps):
        ins.append({**_named(e["inputs"], NOISE), "name": step_noise(io_.step)})
        outs.append({**_named(e["outputs"], TOKENS), "name": step_tokens(io_.step)})
    used = list(dict.fromkeys(w for e in engines for w in e["initializers"]))
    mixed = {e["precision"] for e in engines}
    return _save(name, None, model, ins, outs, root, used, mixed.pop() if len(mixed) == 1 else "mixed")


def _named(specs: list[dict], name: str) -> dict:
    return next(s for s in specs if s["name"] == name)


def _engine(name: str, step: int | None, graph: onnx.ModelProto, ins: list[dict], outs: list[dict], root: Path,
            binder: ConstantBinder, params: dict[str, np.ndarray], precision: str) -> dict:
    used = binder.bind(graph, params)
    _compact(graph.graph)
    graph.producer_name, graph.producer_version = "fastervar", __version__
    return _save(name, step, graph, ins, outs, root, used, precision)


def _save(name: str, step: int | None, graph: onnx.ModelProto, ins: list[dict], outs: list[dict], root: Path,
          used: list[str], precision: str) -> dict:
    path = root / f"{name}.onnx"
    onnx.save(graph, str(path))
    del graph
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise FastervarError(f"internal: the ONNX checker rejected {path.name}: {str(exc).splitlines()[0]}") from None
    return {"name": name, "step": step, "graph": path.name, "sha256": file_sha256(path), "inputs": ins,
            "outputs": outs, "initializers": used, "plan": None, "plan_sha256": None, "precision": precision}


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


def _manifest(acc: AcceleratedModel, settings: SamplingSettings, precision: str, max_batch: int,
              weights_sha256: str | None, ios: list[StepIO], store: WeightStore, root: Path) -> dict:
    """Everything but the engines, which the caller adds (top level, or per aspect)."""
    model, profile = acc.model, acc.profile
    executed = {io.step for io in ios}
    return {
        "format": FORMAT,
        "created_by": f"fastervar {__version__}, torch {torch.__version__}, onnx {onnx.__version__}",
        "model": {**model_identity(model, weights_sha256), **model.describe(), "conditioning": model.conditioning()},
        "profile": {"name": profile.name, "calibrated": profile.calibrated, "json": profile.to_dict()},
        "sampler": {"name": "portable", "cfg": settings.cfg, "top_k": settings.top_k, "top_p": settings.top_p,
                    "more_smooth": settings.more_smooth, "tau": settings.tau},
        "precision": precision,
        "opset": OPSET,
        "max_batch": max_batch,
        "steps": [{"step": k, "tokens": acc.tokens_at(k), "mode": p.mode, "executed": k in executed}
                  for k, p in enumerate(profile.steps)],
        "weights": {"file": WEIGHTS, "sha256": file_sha256(root / WEIGHTS), "bytes": (root / WEIGHTS).stat().st_size,
                    "tensors": store.tensors},
    }
