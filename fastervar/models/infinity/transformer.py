"""The Infinity transformer (FoundationVision/Infinity), written to the released checkpoints' layout.

Infinity is VAR with text: a T5 prompt is pooled into the start token and the AdaLN condition and
attended to by a cross-attention in every block; self-attention is cosine attention with a 2-D
rope; the head predicts two logits per bit of a bitwise (BSQ) code instead of one codebook index.
Parameter names and shapes equal upstream's (`block_chunks.{c}.module.{j}.…`), so the released
`.pth` files load strictly. Numerics follow upstream's inference path exactly (its fused-norm
branch, which is the one that passes the scale index to rope), so sampled bits match it.

Text arrives padded: (B, T, Ct5) with a (B, T) validity mask; upstream packs the valid rows and
uses flash-attention's varlen kernels, this uses SDPA with a key-padding mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import FastervarError
from ..factors import Factors, linear
from ..protocol import KV
from .configs import InfinityConfig, validate_config

LEVELS = 15                  # rows of the level embedding: one per scale of the longest schedule
TEXT_MAXLEN = 512            # rows of the learned null prompt
ROPE_POSITIONS = 128         # the rope grid spans 2048 px at 16 px per token
NORM_EPS = 1e-6


def ada_layer_norm(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """LayerNorm without affine, then the AdaLN modulation, in upstream's operation order."""
    x = F.layer_norm(x.float(), (int(x.shape[-1]),), None, None, NORM_EPS)   # static for export
    return x.mul(scale.add(1)).add_(shift)


def rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add_(NORM_EPS))) * weight


class RopeTable:
    """Rotations of a schedule's tokens. Scale (h, w) samples the rope grid at round(i * H / h),
    round(j * W / w), where (H, W) is the last grid of that aspect ratio's full (1M) schedule, so
    every scale spans the same frame whatever the pixel budget."""

    def __init__(self, head_dim: int, schedule: list[tuple[int, int]], frame: tuple[int, int]):
        quarter = head_dim // 2
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, quarter, 2, dtype=torch.int64).float() / quarter))
        pos = torch.arange(ROPE_POSITIONS, dtype=torch.int64).type_as(inv_freq)
        freqs_h, freqs_w = torch.outer(pos, inv_freq), torch.outer(pos, inv_freq)
        self.per_scale: list[torch.Tensor] = []      # (2, h*w, head_dim/2): cos, sin
        for h, w in schedule:
            rows = (torch.arange(h) * (frame[0] / h)).round().int()
            cols = (torch.arange(w) * (frame[1] / w)).round().int()
            angles = torch.cat([freqs_h[rows][:, None, :].expand(h, w, -1),
                                freqs_w[cols][None, :, :].expand(h, w, -1)], dim=-1).reshape(h * w, -1)
            self.per_scale.append(torch.stack([torch.cos(angles), torch.sin(angles)]))

    def at(self, step: int, device: torch.device) -> torch.Tensor:
        return self.per_scale[step].to(device)


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of (B, H, L, hd) by the (2, L, hd/2) cos/sin table, or by a
    (2, B, 1, L, hd/2) one gathered per row (the positions a reduced step computes)."""
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    cos, sin = rope[0], rope[1]
    out = torch.stack([cos * pairs[..., 0] - sin * pairs[..., 1],
                       sin * pairs[..., 0] + cos * pairs[..., 1]], dim=-1)
    return out.reshape(x.shape)


class SelfAttention(nn.Module):
    """Cosine attention: unit q and k, q scaled by a learned per-head temperature (at most 100)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, heads, 1, 1), math.log(4.0)))
        self.mat_qkv = nn.Linear(width, 3 * width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("zero_k_bias", torch.zeros(width))
        self.proj = nn.Linear(width, width)
        self.factors: Factors = {}        # set per step by the accelerator: "mat_qkv"/"proj" -> (A, B)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, cache: KV | None,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, KV]:
        """`mask` (L, L), True where attending is allowed, only for a whole-schedule pass."""
        b, n, c = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        q, k, v = linear(x, self.mat_qkv, self.factors.get("mat_qkv"), bias) \
            .view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        temperature = self.scale_mul_1H11.clamp_max(math.log(100.0)).exp()
        q = F.normalize(q, dim=-1, eps=1e-12).mul(temperature).contiguous()
        k = F.normalize(k, dim=-1, eps=1e-12).contiguous()
        v = v.contiguous()
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        if cache is not None:
            k, v = torch.cat((cache[0], k), dim=2), torch.cat((cache[1], v), dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
        return linear(out.transpose(1, 2).reshape(b, n, c), self.proj, self.factors.get("proj")), (k, v)


class CrossAttention(nn.Module):
    """Plain 1/sqrt(d) attention from image tokens (or, pooling, one learned query) to the text."""

    def __init__(self, width: int, text_width: int, heads: int, pool: bool = False):
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        if pool:
            self.mat_q = nn.Parameter(torch.zeros(1, heads, self.head_dim))
        else:
            self.mat_q = nn.Linear(width, width)
        self.mat_kv = nn.Linear(text_width, 2 * width, bias=False)
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("zero_k_bias", torch.zeros(width))
        self.proj = nn.Linear(width, width)
        self.factors: Factors = {}        # set per step by the accelerator: "mat_q"/"proj" -> (A, B)

    def forward(self, x: torch.Tensor | None, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, C), or None to pool; text (B, T, Ct) padded; mask (B, T) True on valid rows."""
        b, t, _ = text.shape
        kv = F.linear(text, self.mat_kv.weight, torch.cat((self.zero_k_bias, self.v_bias)))
        k, v = kv.view(b, t, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if x is None:
            q = self.mat_q.unsqueeze(2).expand(b, -1, -1, -1)
        else:
            q = linear(x, self.mat_q, self.factors.get("mat_q")).view(b, x.shape[1], self.heads, self.head_dim) \
                .transpose(1, 2)
        out = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous(),
                                             attn_mask=mask[:, None, None, :])
        return linear(out.transpose(1, 2).reshape(b, q.shape[2], -1), self.proj, self.factors.get("proj"))


class FFN(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.factors: Factors = {}        # set per step by the accelerator: "fc1"/"fc2" -> (A, B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(linear(x, self.fc1, self.factors.get("fc1")), approximate="tanh")
        return linear(h, self.fc2, self.factors.get("fc2"))


class CrossAttnBlock(nn.Module):
    """Self-attention, cross-attention to the text, FFN; AdaLN gains from the shared condition."""

    def __init__(self, cfg: InfinityConfig):
        super().__init__()
        c = cfg.width
        self.ada_gss = nn.Parameter(torch.zeros(1, 1, 6, c))
        self.sa = SelfAttention(c, cfg.heads)
        self.ca = CrossAttention(c, c, cfg.heads)
        self.ffn = FFN(c, cfg.ffn_hidden)
        self.ca_norm = nn.LayerNorm(c, eps=NORM_EPS)

    def forward(self, x: torch.Tensor, gss: torch.Tensor, text: torch.Tensor, mask: torch.Tensor,
                rope: torch.Tensor, cache: KV | None, causal: torch.Tensor | None = None) -> tuple[torch.Tensor, KV]:
        gamma1, gamma2, scale1, scale2, shift1, shift2 = (self.ada_gss + gss).unbind(2)
        attn, kv = self.sa(ada_layer_norm(x, scale1, shift1), rope, cache, causal)
        x = x + attn.mul_(gamma1)
        x = x + self.ca(self.ca_norm(x), text, mask).float()
        x = x + self.ffn(ada_layer_norm(x, scale2, shift2)).mul(gamma2)
        return x, kv


class Chunk(nn.Module):
    """Upstream stores its blocks in chunks (`block_chunks.{c}.module.{j}`); only the names matter."""

    def __init__(self, blocks: list[CrossAttnBlock]):
        super().__init__()
        self.module = nn.ModuleList(blocks)


class TextPool(nn.Module):
    def __init__(self, cfg: InfinityConfig):
        super().__init__()
        self.ca = CrossAttention(cfg.width, cfg.text_channels, cfg.pool_heads, pool=True)

    def forward(self, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.ca(None, text, mask)[:, 0]       # not squeeze: it exports as a conditional


class HeadNorm(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond).view(-1, 1, 2, x.shape[-1]).unbind(2)
        return ada_layer_norm(x, scale, shift)


class SharedAdaLin(nn.Linear):
    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return super().forward(cond).reshape(-1, 1, 6, self.weight.shape[0] // 6)


@dataclass
class TextCondition:
    """A batch's prompts, prepared once per image: the cross-attention keys' source, the pooled
    condition and the shared AdaLN gains. Guided batches hold the prompts, then their null prompts."""

    text: torch.Tensor        # (B', T, C) projected text for cross-attention
    mask: torch.Tensor        # (B', T) True on a prompt's tokens
    pooled: torch.Tensor      # (B', C) the start token and the head's condition
    gss: torch.Tensor         # (B', 1, 6, C) shared AdaLN gains
    guided: bool
    prompts: tuple[torch.Tensor, torch.Tensor] | None = None   # the (B, T, Ct5) embeddings and lengths

    @property
    def batch(self) -> int:
        return self.text.shape[0] // (2 if self.guided else 1)


class Infinity(nn.Module):
    """The transformer alone; `InfinityModel` pairs it with the BSQ VAE into scale steps."""

    def __init__(self, cfg: InfinityConfig):
        super().__init__()
        validate_config(cfg)
        self.cfg = cfg
        c, ct = cfg.width, cfg.text_channels
        self.cfg_uncond = nn.Parameter(torch.zeros(TEXT_MAXLEN, ct))
        self.pos_start = nn.Parameter(torch.zeros(1, 1, c))
        self.text_norm = _Gain(ct)
        self.text_proj_for_sos = TextPool(cfg)
        self.text_proj_for_ca = nn.Sequential(nn.Linear(ct, c), nn.GELU(approximate="tanh"), nn.Linear(c, c))
        self.lvl_embed = nn.Embedding(LEVELS, c)
        self.word_embed = nn.Linear(cfg.bits, c)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), SharedAdaLin(c, 6 * c))
        self.head_nm = HeadNorm(c)
        self.head = nn.Linear(c, 2 * cfg.bits)
        per = cfg.depth // cfg.chunks
        self.block_chunks = nn.ModuleList(
            Chunk([CrossAttnBlock(cfg) for _ in range(per)]) for _ in range(cfg.chunks))

    @property
    def blocks(self) -> list[CrossAttnBlock]:
        return [b for chunk in self.block_chunks for b in chunk.module]

    def condition(self, embeddings: torch.Tensor, lengths: torch.Tensor, guided: bool) -> TextCondition:
        """Prepare (B, T, Ct5) zero-padded prompt embeddings; guidance appends each prompt's null
        prompt, the learned `cfg_uncond` cut to that prompt's length."""
        b, t, ct = embeddings.shape
        if ct != self.cfg.text_channels:
            raise FastervarError(f"text embeddings are {ct} wide; this model takes {self.cfg.text_channels}")
        if t > TEXT_MAXLEN:
            raise FastervarError(f"prompts of {t} tokens exceed the model's {TEXT_MAXLEN}")
        prompts = (embeddings, lengths)
        mask = torch.arange(t, device=embeddings.device)[None, :] < lengths.to(embeddings.device)[:, None]
        if guided:
            null = self.cfg_uncond[:t].unsqueeze(0).expand(b, -1, -1) * mask[..., None]
            embeddings, mask = torch.cat((embeddings, null)), torch.cat((mask, mask))
        text = self.text_norm(embeddings)
        pooled = self.text_proj_for_sos(text, mask)
        gss = self.shared_ada_lin(pooled.float()).float()
        return TextCondition(self.text_proj_for_ca(text), mask, pooled, gss, guided, prompts)

    def first_tokens(self, cond: TextCondition) -> torch.Tensor:
        return cond.pooled.unsqueeze(1) + self.pos_start

    def blocks_forward(self, x: torch.Tensor, cond: TextCondition, rope: torch.Tensor,
                       caches: list[KV] | None) -> tuple[torch.Tensor, list[KV]]:
        """Every block on one scale's tokens (level embedding added), attending to the cached
        coarser scales."""
        new: list[KV] = []
        for i, blk in enumerate(self.blocks):
            x, kv = blk(x, cond.gss, cond.text, cond.mask, rope, None if caches is None else caches[i])
            new.append(kv)
        return x, new

    def teacher_forward(self, xs: list[torch.Tensor], cond: TextCondition, ropes: list[torch.Tensor]) -> torch.Tensor:
        """All scales' inputs (level embeddings added) in one pass, each scale seeing itself and the
        coarser ones: training's view of the model, and the check that the KV-cached steps compute
        the same thing."""
        steps = torch.repeat_interleave(torch.arange(len(xs)), torch.tensor([x.shape[1] for x in xs]))
        causal = (steps[:, None] >= steps[None, :]).to(xs[0].device)
        x = torch.cat(xs, dim=1)
        rope = torch.cat(ropes, dim=1)
        for blk in self.blocks:
            x, _ = blk(x, cond.gss, cond.text, cond.mask, rope, None, causal)
        return x

    def logits(self, hidden: torch.Tensor, cond: TextCondition) -> torch.Tensor:
        """(B', L, 2*bits): a pair of logits (bit 0, bit 1) per bit, bits of a token consecutive."""
        return self.head(self.head_nm(hidden.float(), cond.pooled.float()))


class _Gain(nn.Module):
    """RMSNorm with a learned gain (upstream's text norm)."""

    def __init__(self, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight).to(x.dtype)
