"""An analytic cost model: FLOPs and bytes moved per scale step, for any profile and batch size.

Calibration ranks candidate profiles with it before measuring them, and reports predicted next to
measured speedups. Counts are matmul/conv FLOPs (2 per multiply-add); norms, softmax and
elementwise work are left out, as is usual.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..models.var.configs import ModelConfig
from ..profile import FACTORIZABLE, Profile, StepPlan


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


def _layer_dims(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    c = cfg.var.embed_dim
    hidden = round(c * cfg.var.mlp_ratio)
    size = {1: c, 3: 3 * c, 4: hidden}
    return {name: (size[i], size[o]) for name, (i, o) in FACTORIZABLE.items()}


def _block_linear_flops(cfg: ModelConfig, plan: StepPlan) -> tuple[float, float]:
    """(FLOPs per token, weight parameters) of one block's linears under the plan's ranks."""
    flops = params = 0.0
    for name, (fin, fout) in _layer_dims(cfg).items():
        r = plan.ranks.get(name)
        p = fin * fout if r is None else r * (fin + fout)
        flops += 2 * p
        params += p
    return flops, params


def step_costs(cfg: ModelConfig, profile: Profile, batch: int, bytes_per_param: int = 4) -> list[StepCost]:
    """Cost of every step of `profile` at `batch` images."""
    c, depth, vocab = cfg.var.embed_dim, cfg.var.depth, cfg.vae.vocab_size
    pn = cfg.var.patch_nums
    out: list[StepCost] = []
    cached = [0] * depth                   # per block: a block range can leave caches of different lengths
    for k, plan in enumerate(profile.steps):
        n = pn[k] ** 2
        if plan.mode == "skip":
            out.append(StepCost(k, "skip", 0, 0, round(sum(cached) / depth), 0, 0, 0, 0, 0))
            continue
        rows = 2 * batch if plan.cfg else batch
        lo, hi = plan.layers or (0, depth)
        run = [plan.keep if plan.mode == "reduce" and lo <= i < hi else n for i in range(depth)]
        cached = [c0 + r for c0, r in zip(cached, run)]
        lin_tok, lin_params = _block_linear_flops(cfg, plan)
        ada = 2 * c * 6 * c * rows if not cfg.var.shared_aln else 0
        flops_linear = sum(rows * r * lin_tok + ada for r in run) + rows * n * 2 * cfg.vae.z_channels * c
        flops_attn = sum(rows * 2 * 2 * r * kv * c for r, kv in zip(run, cached))
        flops_head = rows * n * 2 * c * vocab + rows * 2 * c * 2 * c
        weights = (depth * (lin_params + (0 if cfg.var.shared_aln else 6 * c * c)) + c * vocab) * bytes_per_param
        kv_bytes = sum(2 * rows * kv * c * bytes_per_param for kv in cached)
        out.append(StepCost(k, plan.mode, rows, round(sum(run) / depth), round(sum(cached) / depth),
                            flops_linear, flops_attn, flops_head, weights, kv_bytes))
    return out


def decoder_flops(cfg: ModelConfig, batch: int = 1) -> float:
    """Conv and attention FLOPs of the VQVAE decoder, counted on an empty (meta) copy (the one
    count here that needs torch: the step counts stay importable without it)."""
    import torch
    from torch import nn

    from ..models.var.vqvae import AttnBlock, Decoder

    with torch.device("meta"):
        dec = Decoder(cfg.vae)
    total = 0.0

    def conv_hook(mod, _inp, outp) -> None:
        nonlocal total
        kh, kw = mod.kernel_size
        total += 2 * outp.numel() * (mod.in_channels // mod.groups) * kh * kw

    def attn_hook(mod: AttnBlock, inp, _outp) -> None:
        nonlocal total
        b, ch, h, w = inp[0].shape
        total += 2 * 2 * b * ch * (h * w) ** 2

    hooks = [m.register_forward_hook(conv_hook) for m in dec.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(attn_hook) for m in dec.modules() if isinstance(m, AttnBlock)]
    side = cfg.var.patch_nums[-1]
    with torch.no_grad():
        dec(torch.empty(batch, cfg.vae.z_channels, side, side, device="meta"))
    for h in hooks:
        h.remove()
    return total


def steps_flops(cfg: ModelConfig, profile: Profile, batch: int) -> float:
    """FLOPs of every scale step of `profile` together."""
    return sum(s.flops for s in step_costs(cfg, profile, batch))


def predicted_speedup(cfg: ModelConfig, baseline: Profile, profile: Profile, batch: int) -> dict[str, float]:
    """FLOP ratios baseline/profile: transformer only, and with the decoder included."""
    base, acc = steps_flops(cfg, baseline, batch), steps_flops(cfg, profile, batch)
    dec = decoder_flops(cfg, batch)
    return {"transformer": base / acc, "total": (base + dec) / (acc + dec)}
