"""How close a bundle's reduced-precision step graphs stay to fp32: each executed step traced as
export traces it, run in fp32 and in fp16 or int8 on the same inputs, its raw logits and tokens
compared.

The inputs of every step are the fp32 model's own state at that step (KV caches, cached outputs),
so an error is the step's own, not carried over from earlier steps. int8 is the exact rewrite a
bundle's graphs get (`quantize_linears`), with the weights still graph inputs (binding them into
a bundle only folds the weight side's constant arithmetic); fp16 is the half-weight autocast trace
export makes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..accel.accelerated import AcceleratedModel
from ..bundle_contract import LOGITS, TOKENS
from ..models.sampling import SamplingSettings
from .bundle import _trace, half_copy
from .graphs import StepGraph, StepIO, example_steps, plan_io
from .quantize import quantize_linears


@dataclass(frozen=True)
class StepCloseness:
    step: int
    logits_rel_error: float          # ||other - fp32|| / ||fp32|| over the step's raw logits
    logits_max_error: float          # the largest |other - fp32|, in units of the fp32 logits' std
    token_agreement: float           # share of tokens sampled alike, with the same noise


def _run(graph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The graph on onnxruntime's CPU provider, each feed cast to the type the graph declares."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(graph.SerializeToString(), so, providers=["CPUExecutionProvider"])
    types = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
    inputs = {i.name: feeds[i.name].astype(types.get(i.type, feeds[i.name].dtype), copy=False)
              for i in session.get_inputs()}          # the exporter drops weights a step never reads
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


def _probe(acc: AcceleratedModel, io: StepIO, settings: SamplingSettings, feeds: dict) -> tuple:
    """Step `io.step` traced with its tokens and raw logits as the outputs, and its weights."""
    probe = StepIO(io.step, io.inputs, [TOKENS, LOGITS])
    args = tuple(feeds[n] for n in io.inputs)
    return _trace(StepGraph(acc, probe, settings), args, [{"name": n, "shape": list(feeds[n].shape)} for n in io.inputs],
                  [{"name": n, "shape": []} for n in probe.outputs])


def closeness(acc: AcceleratedModel, settings: SamplingSettings, precision: str, batch: int = 4) -> list[StepCloseness]:
    """Per executed step: fp32 against `precision` (fp16 or int8) logits and tokens."""
    half = None
    if precision == "fp16":
        half = AcceleratedModel(half_copy([acc.model])[0], acc.profile).cast_(torch.float16)
    ios = plan_io(acc)
    out = []
    for io, feeds in zip(ios, example_steps(acc, ios, settings, batch, text_length=8)):
        graph, params = _probe(acc, io, settings, feeds)
        state = {n: feeds[n].numpy() for n in io.inputs}
        ref = _run(graph, state | params)
        if precision == "int8":
            quantize_linears(graph, acc.model.INT8_LINEARS)
            got = _run(graph, state | params)
        else:
            with torch.autocast("cpu", dtype=torch.float16):
                half_graph, half_params = _probe(half, io, settings, feeds)
            got = _run(half_graph, state | half_params)
        a, b = ref[LOGITS].astype(np.float64), got[LOGITS].astype(np.float64)
        out.append(StepCloseness(io.step, float(np.linalg.norm(b - a) / np.linalg.norm(a)),
                                 float(np.abs(b - a).max() / a.std()),
                                 float((ref[TOKENS] == got[TOKENS]).mean())))
    return out
