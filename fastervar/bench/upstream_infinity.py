"""Upstream Infinity's own sampler, from a source tree the user points at, run beside ours on the
same weights.

Nothing of upstream is vendored: its `infinity` package is imported from the directory the user
names and built with the constructor arguments `tools/run_infinity.py` uses for the 2B model, at
our model's sizes, then given our model's weights (the key layouts are the same). Upstream needs
CUDA-only or training-only packages at import (flash-attn, timm, torchvision, imageio); they are
stood in for here by small modules (flash-attn's two calls through SDPA, the rest unused at
inference), and one line is patched at run time: cross-attention's cast of its fp32 inputs to
bf16, which flash-attn needs and a CPU cannot run. The tree itself is never edited. It backs
`scripts/record_infinity_reference.py` (references pinned in tests/data) and
`benchmarks/infinity_speed.py --upstream-src`.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import sys
import textwrap
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FastervarError
from ..models.infinity.family import InfinityModel
from ..models.sampling import SamplingSettings
from ..timing import Batch, Run

# run_infinity.load_infinity's constructor arguments with the 2B's flags from scripts/infer.sh
# (bf16=0: blocks in bf16 cannot run on a CPU); the sizes come from the model at hand
INFINITY_FLAGS: dict[str, Any] = {
    "text_maxlen": 512, "shared_aln": True, "raw_scale_schedule": None, "checkpointing": "full-block",
    "customized_flash_attn": False, "fused_norm": True, "pad_to_multiplier": 128, "use_flex_attn": False,
    "add_lvl_embeding_only_first_block": 1, "use_bit_label": 1, "rope2d_each_sa_layer": 1,
    "rope2d_normalized_by_hw": 2, "apply_spatial_patchify": 0, "inference_mode": True, "train_h_div_w_list": [1.0],
    "drop_path_rate": 0.1, "mlp_ratio": 4}
# gen_one_img's autoregressive_infer_cfg arguments as run_infinity's main passes them; guidance,
# temperature, top-k/top-p, batch and seed come per call
SAMPLING_FLAGS: dict[str, Any] = {
    "negative_label_B_or_BLT": None, "force_gt_Bhw": None, "returns_vemb": 1, "ratio_Bl1": None, "gumbel": 0,
    "norm_cfg": False, "cfg_exp_k": 0.0, "cfg_insertion_layer": [0], "softmax_merge_topk": -1, "ret_img": True,
    "trunk_scale": 1000, "gt_leak": 0, "gt_ls_Bl": None, "inference_mode": True, "sampling_per_bits": 1}


def _flash_attn_func(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0,
                     softmax_scale: float | None = None, **_: Any) -> torch.Tensor:
    """flash_attn's (B, L, H, c) attention through SDPA."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=softmax_scale)
    return out.transpose(1, 2)


def _flash_attn_varlen_kvpacked_func(q: torch.Tensor, kv: torch.Tensor, cu_seqlens_q: torch.Tensor,
                                     cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int,
                                     dropout_p: float = 0.0, softmax_scale: float | None = None,
                                     **_: Any) -> torch.Tensor:
    """Packed variable-length attention (q: (Nq, H, c), kv: (Nk, 2, H, c)), one SDPA per sequence."""
    if q.dtype != torch.float32 or kv.dtype != torch.float32:
        raise RuntimeError("cross-attention still casts to bf16: drop_bf16_cast did not apply")
    cq, ck, out = cu_seqlens_q.tolist(), cu_seqlens_k.tolist(), []
    for i in range(len(cq) - 1):
        qi = q[cq[i]:cq[i + 1]].transpose(0, 1)[None]
        ki, vi = (t.transpose(0, 1)[None] for t in kv[ck[i]:ck[i + 1]].unbind(1))
        out.append(F.scaled_dot_product_attention(qi, ki, vi, scale=softmax_scale)[0].transpose(0, 1))
    return torch.cat(out)


class _DropPath(nn.Module):
    """timm's DropPath at inference: the identity."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def install_stubs() -> None:
    """Stand-ins for upstream imports that are CUDA-only (flash_attn) or unused at inference."""
    def module(name: str, **attrs: Any) -> types.ModuleType:
        sys.modules[name] = mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        return mod

    module("flash_attn", flash_attn_func=_flash_attn_func,
           flash_attn_varlen_kvpacked_func=_flash_attn_varlen_kvpacked_func)
    module("timm")
    module("timm.models", register_model=lambda fn: fn)
    module("timm.models.layers", DropPath=_DropPath, drop_path=lambda x, *args, **kwargs: x)
    module("timm.loss", SoftTargetCrossEntropy=type("SoftTargetCrossEntropy", (nn.Module,), {}))
    module("torchvision", transforms=module("torchvision.transforms"))
    module("imageio")


def drop_bf16_cast(basic: types.ModuleType) -> None:
    """Recompile CrossAttention.forward without its two `.to(dtype=torch.bfloat16)` casts (once per
    process: a second import finds it patched)."""
    if getattr(basic.CrossAttention.forward, "_without_bf16_cast", False):
        return
    cast = ".to(dtype=torch.bfloat16)"
    source = textwrap.dedent(inspect.getsource(basic.CrossAttention.forward))
    if source.count(cast) != 2:
        raise FastervarError("upstream's CrossAttention.forward changed: the bf16-cast patch no longer applies")
    code = compile(source.replace(cast, ""), inspect.getsourcefile(basic.CrossAttention), "exec")
    namespace: dict[str, Any] = {}
    exec(code, basic.__dict__, namespace)  # noqa: S102 - upstream's own method, minus the casts
    namespace["forward"]._without_bf16_cast = True
    basic.CrossAttention.forward = namespace["forward"]


def import_upstream(src: str | Path) -> types.SimpleNamespace:
    """Upstream's modules from the tree at `src`, with the stand-ins installed and the cast dropped."""
    src = Path(src)
    if not (src / "infinity" / "models" / "infinity.py").is_file():
        raise FastervarError(f"{src} is not a FoundationVision/Infinity tree (it has no infinity/models/infinity.py)")
    install_stubs()
    sys.path.insert(0, str(src.resolve()))
    try:
        from infinity.models import basic
        from infinity.models.bsq_vae import vae as vae_mod
        from infinity.models.infinity import Infinity
        from infinity.utils.dynamic_resolution import dynamic_resolution_h_w
    except ImportError as exc:
        raise FastervarError(f"upstream Infinity at {src} failed to import ({exc}); it needs einops and pytz") \
            from None
    drop_bf16_cast(basic)
    return types.SimpleNamespace(Infinity=Infinity, vae_mod=vae_mod, dynamic_resolution_h_w=dynamic_resolution_h_w)


def build_vae(up: types.SimpleNamespace, codebook_dim: int, ch: int, ch_mult: list[int], num_res_blocks: int) -> Any:
    """run_infinity.load_visual_tokenizer's `vae_model` call (no checkpoint), with the base width and
    residual blocks set (vae_model fixes them at the released 128 and 2)."""
    real = up.vae_mod.AutoEncoder
    up.vae_mod.AutoEncoder = lambda a: real(argparse.Namespace(**{**vars(a), "base_ch": ch,
                                                                  "num_res_blocks": num_res_blocks}))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return up.vae_mod.vae_model(None, schedule_mode="dynamic", codebook_dim=codebook_dim,
                                        codebook_size=2 ** codebook_dim, patch_size=16, encoder_ch_mult=ch_mult,
                                        decoder_ch_mult=ch_mult, test_mode=True)
    finally:
        up.vae_mod.AutoEncoder = real


def build_infinity(up: types.SimpleNamespace, vae: Any, **sizes: Any) -> nn.Module:
    with contextlib.redirect_stdout(io.StringIO()):            # upstream's constructors are chatty
        return up.Infinity(vae_local=vae, **INFINITY_FLAGS, **sizes).eval().requires_grad_(False)


def load_upstream(src: str | Path, model: InfinityModel) -> tuple[nn.Module, Any, list[tuple[int, int, int]]]:
    """Upstream's Infinity and BSQ VAE for `model`'s configuration, holding `model`'s weights, and
    the scale schedule of `model`'s aspect and budget as upstream lists it."""
    t, v = model.infinity.cfg, model.vae.cfg
    if v.patch_size != 1:
        raise FastervarError("the upstream runner builds unpatchified VAEs (2B); the 8B's 2x2 patchify is not wired")
    up = import_upstream(src)
    vae = build_vae(up, v.codebook_dim, v.ch, list(v.ch_mult), v.num_res_blocks)
    net = build_infinity(up, vae, text_channels=t.text_channels, pn=model.pn, depth=t.depth, embed_dim=t.width,
                         num_heads=t.heads, block_chunks=t.chunks)
    for name, mine, theirs in (("transformer", model.infinity, net), ("VAE", model.vae, vae)):
        missing, unexpected = theirs.load_state_dict(mine.state_dict(), strict=False)
        params = {n for n, _ in theirs.named_parameters()}
        if unexpected or params & set(missing):
            raise FastervarError(f"upstream's {name} does not take our weights: missing "
                                 f"{sorted(params & set(missing))[:3]}, unexpected {unexpected[:3]}")
    vae.eval()
    schedule = [(1, h, w) for _, h, w in up.dynamic_resolution_h_w[model.h_div_w][model.pn]["scales"]]
    if [(h, w) for _, h, w in schedule] != [tuple(g) for g in model.schedule]:
        raise FastervarError("upstream's scale schedule differs from ours for this aspect and budget")
    return net, vae, schedule


class UpstreamInfinityRunner:
    """Upstream's `autoregressive_infer_cfg` as a timing-harness runner: one call per batch of
    prompts (rows of `prompts`), seeded seed + j for batch j as our official sampler is."""

    def __init__(self, net: nn.Module, vae: Any, schedule: list[tuple[int, int, int]], settings: SamplingSettings,
                 prompts: Any, codebook_dim: int):
        self.net, self.vae, self.schedule, self.settings, self.prompts = net, vae, schedule, settings, prompts
        self.codebook_dim = codebook_dim

    @torch.no_grad()
    def __call__(self, batch: Batch) -> Run:
        s, n = self.settings, len(self.schedule)
        text = self.prompts.rows(list(batch.labels))
        lens = text.lengths.tolist()
        kv = torch.cat([row[:k] for row, k in zip(text.embeddings, lens)])
        cu = F.pad(torch.tensor(lens, dtype=torch.int32).cumsum(0, dtype=torch.int32), (1, 0))
        t0 = time.perf_counter()
        _, _, img = self.net.autoregressive_infer_cfg(
            vae=self.vae, scale_schedule=self.schedule, label_B_or_BLT=(kv, lens, cu, max(lens)), B=len(lens),
            g_seed=batch.generator_seed, cfg_sc=3, cfg_list=[s.cfg] * n, tau_list=[s.tau] * n, top_k=s.top_k,
            top_p=s.top_p, vae_type=self.codebook_dim, **SAMPLING_FLAGS)
        rgb = np.ascontiguousarray(img.cpu().numpy()[..., ::-1])          # upstream returns BGR
        return Run(rgb, [], [0.0] * n, 0.0, graph_seconds=time.perf_counter() - t0)
