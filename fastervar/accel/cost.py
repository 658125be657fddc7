"""An analytic cost model: FLOPs and bytes moved per scale step, for any family, profile and batch.

Calibration ranks candidate profiles with it before measuring them, and reports predicted next to
measured speedups. Counts are matmul/conv FLOPs (2 per multiply-add); norms, softmax and
elementwise work are left out, as is usual. It reads a model through its `ModelSpec` (a model, a
configuration or the spec itself), so it needs no weights and no torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import FastervarError
from ..profile import ModelSpec, Profile, StepPlan, as_spec


@dataclass
class StepCost:
    step: int
    mode: str
    batch: int                 # rows the transformer runs (2B with guidance)
    tokens: int                # tokens per row the blocks compute (mean over blocks)
    kv_len: int                # cached + current tokens each query attends to (mean over blocks)
    flops_linear: float
    flops_attention: float
    flops_head: float
    bytes_weights: float
    bytes_kv: float

    @property
    def flops(self) -> float:
        return self.flops_linear + self.flops_attention + self.flops_head

    def to_dict(self) -> dict:
        return dict(asdict(self), flops=self.flops)


def _block_linear_flops(spec: ModelSpec, plan: StepPlan) -> tuple[float, float]:
    """(FLOPs per token, weight parameters) of one block's linears under the plan's ranks."""
    flops = params = 0.0
    for name, (fin, fout) in spec.linears.items():
        r = plan.ranks.get(name)
        p = fin * fout if r is None else r * (fin + fout)
        flops += 2 * p
        params += p
    return flops, params


def step_costs(model: Any, profile: Profile, batch: int, bytes_per_param: int = 4) -> list[StepCost]:
    """Cost of every step of `profile` at `batch` images."""
    spec = as_spec(model)
    c, depth, logits = spec.width, spec.depth, spec.logit_width
    text_len, text_width = spec.text
    out: list[StepCost] = []
    cached = [0] * depth                   # per block: a block range can leave caches of different lengths
    for k, plan in enumerate(profile.steps):
        n = spec.tokens(k)
        if plan.mode == "skip":
            out.append(StepCost(k, "skip", 0, 0, round(sum(cached) / depth), 0, 0, 0, 0, 0))
            continue
        rows = 2 * batch if plan.cfg else batch
        lo, hi = plan.layers or (0, depth)
        run = [plan.kept(n) if plan.mode == "reduce" and lo <= i < hi else n for i in range(depth)]
        cached = [c0 + r for c0, r in zip(cached, run)]
        lin_tok, lin_params = _block_linear_flops(spec, plan)
        ada = 0 if spec.shared_adaln else 2 * c * 6 * c * rows
        text_kv = rows * text_len * 2 * text_width * 2 * c               # cross-attention keys and values
        flops_linear = sum(rows * r * lin_tok + ada + text_kv for r in run) + rows * n * 2 * spec.code_width * c
        flops_attn = sum(rows * 2 * 2 * r * (kv + text_len) * c for r, kv in zip(run, cached))
        flops_head = rows * n * 2 * c * logits + rows * 2 * c * 2 * c
        weights = (depth * (lin_params + (6 * c * c if not spec.shared_adaln else 0)) + c * logits) * bytes_per_param
        kv_bytes = sum(2 * rows * kv * c * bytes_per_param for kv in cached)
        out.append(StepCost(k, plan.mode, rows, round(sum(run) / depth), round(sum(cached) / depth),
                            flops_linear, flops_attn, flops_head, weights, kv_bytes))
    return out


def decoder_flops(model: Any, batch: int = 1) -> float:
    """The decoder's FLOPs for `batch` images, as the family counts them."""
    spec = as_spec(model)
    if spec.decoder_flops is None:
        raise FastervarError(f"internal: the spec of {spec.config} does not count its decoder")
    return spec.decoder_flops() * batch


def steps_flops(model: Any, profile: Profile, batch: int) -> float:
    """FLOPs of every scale step of `profile` together."""
    return sum(s.flops for s in step_costs(model, profile, batch))


def predicted_speedup(model: Any, baseline: Profile, profile: Profile, batch: int) -> dict[str, float]:
    """FLOP ratios baseline/profile: transformer only, and with the decoder included."""
    base, acc = steps_flops(model, baseline, batch), steps_flops(model, profile, batch)
    dec = decoder_flops(model, batch)
    return {"transformer": base / acc, "total": (base + dec) / (acc + dec)}
