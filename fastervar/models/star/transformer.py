"""The STAR transformer: VAR's scale-wise decoder with text cross-attention, axial RoPE and no AdaLN.

Parameter names follow the released files (`["trainer"]["var_wo_ddp"]`) so they load strictly.
Every block is pre-LayerNorm without affine terms: self-attention on L2-normalized, rotated q/k
with a clamped per-head temperature (the KV cache holds the normalized keys), cross-attention to
the prompt under its padding mask, then a tanh-GELU FFN. The pooled text feature enters only
through the start token (and the sampler head's). The ops and their order are upstream's, so
that sampling reproduces its tokens exactly on the CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..protocol import KV
from .configs import StarConfig

# upstream clamps the temperature at log(100) computed in float32
MAX_SCALE_MUL = float(torch.tensor(100.0).log())
NORM_EPS = 1e-6


def axial_rope(head_dim: int, pn: int, theta: float, norm: float) -> torch.Tensor:
    """(pn*pn, head_dim/2) complex rotations of one scale: the first head_dim/4 pairs turn with the
    column, the rest with the row; positions are stretched to [0, norm] at every scale."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 4)[: head_dim // 4].float() / head_dim))
    t = torch.arange(pn * pn, dtype=torch.float32)
    tx, ty = t % pn, torch.div(t, pn, rounding_mode="floor")
    if pn > 1:
        tx, ty = tx / tx.max() * norm, ty / ty.max() * norm
    angles = (torch.outer(tx, freqs), torch.outer(ty, freqs))
    return torch.cat([torch.polar(torch.ones_like(a), a) for a in angles], dim=-1)


def rotate(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, L, c) by a (L, c/2) table, adjacent channels forming the complex pairs."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * table).flatten(3).type_as(x)


class _Normed(nn.Module):
    """What both attentions share: the q and v biases, the zero key bias and the temperature."""

    def __init__(self, cfg: StarConfig):
        super().__init__()
        c = cfg.width
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, cfg.heads, 1, 1), 4.0).log())
        self.q_bias = nn.Parameter(torch.zeros(c))
        self.v_bias = nn.Parameter(torch.zeros(c))
        self.register_buffer("zero_k_bias", torch.zeros(c))
        self.proj = nn.Linear(c, c)

    def temper(self, q: torch.Tensor) -> torch.Tensor:
        return F.normalize(q, dim=-1).mul(self.scale_mul_1H11.clamp_max(MAX_SCALE_MUL).exp())

    def out(self, o: torch.Tensor) -> torch.Tensor:
        b, _, n, _ = o.shape
        return self.proj(o.transpose(1, 2).reshape(b, n, -1))


class SelfAttention(_Normed):
    def __init__(self, cfg: StarConfig):
        super().__init__(cfg)
        self.mat_qkv = nn.Linear(cfg.width, 3 * cfg.width, bias=False)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, cache: KV | None = None) -> tuple[torch.Tensor, KV]:
        b, n, _ = x.shape
        qkv = F.linear(x, self.mat_qkv.weight, torch.cat((self.q_bias, self.zero_k_bias, self.v_bias)))
        q, k, v = qkv.view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.temper(rotate(q, rope)), F.normalize(rotate(k, rope), dim=-1)
        if cache is not None:
            k, v = torch.cat((cache[0], k), dim=2), torch.cat((cache[1], v), dim=2)
        return self.out(F.scaled_dot_product_attention(q, k, v, scale=1.0)), (k, v)


class CrossAttention(_Normed):
    def __init__(self, cfg: StarConfig):
        super().__init__(cfg)
        self.mat_kv = nn.Linear(cfg.text_channels, 2 * cfg.width, bias=False)
        self.mat_q = nn.Linear(cfg.width, cfg.width, bias=False)

    def text_kv(self, text: torch.Tensor) -> KV:
        """The prompt's normalized keys and values (rows, H, T, c): the same at every scale."""
        b, t, _ = text.shape
        kv = F.linear(text, self.mat_kv.weight, torch.cat((self.zero_k_bias, self.v_bias)))
        k, v = kv.view(b, t, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return F.normalize(k, dim=-1), v

    def forward(self, x: torch.Tensor, kv: KV, mask: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = F.linear(x, self.mat_q.weight, self.q_bias).view(b, n, self.heads, self.head_dim).permute(0, 2, 1, 3)
        return self.out(F.scaled_dot_product_attention(self.temper(q), kv[0], kv[1], attn_mask=mask, scale=1.0))


class FFN(nn.Module):
    def __init__(self, cfg: StarConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.width, cfg.hidden)
        self.fc2 = nn.Linear(cfg.hidden, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


@dataclass
class CrossInputs:
    """What cross-attention reads in one generation: each block's text keys/values, the additive
    padding mask (rows, 1, 1, T), and which rows' outputs every row receives: upstream adds batch
    row 0's to all rows (`row0`); `own` gives each image's rows its own prompt's (upstream at batch 1)."""

    kv: list[KV]
    mask: torch.Tensor
    rows: str = "row0"


class Block(nn.Module):
    def __init__(self, cfg: StarConfig, cross: bool):
        super().__init__()
        self.attn = SelfAttention(cfg)
        if cross:
            self.cross_attn = CrossAttention(cfg)
        self.ffn = FFN(cfg)
        self.ln_wo_grad = nn.LayerNorm(cfg.width, eps=NORM_EPS, elementwise_affine=False)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, cache: KV | None = None,
                text: CrossInputs | None = None, index: int = 0) -> tuple[torch.Tensor, KV]:
        a, kv = self.attn(self.ln_wo_grad(x), rope, cache)
        x = x + a
        if text is not None:
            x = self.cross(x, text, index)
        return x + self.ffn(self.ln_wo_grad(x)), kv

    def cross(self, x: torch.Tensor, text: CrossInputs, index: int) -> torch.Tensor:
        kv = text.kv[index]
        if text.rows == "row0":
            return self.cross_attn(self.ln_wo_grad(x), kv, text.mask)[0] + x
        b = kv[0].shape[0] // 2
        own = self.cross_attn(self.ln_wo_grad(x[:b]), (kv[0][:b], kv[1][:b]), text.mask[:b])
        return own.repeat(x.shape[0] // b, 1, 1) + x


class Star(nn.Module):
    """The main transformer, plus the sampler head when the model has one."""

    def __init__(self, cfg: StarConfig, vae_channels: int, vocab: int):
        super().__init__()
        self.cfg = cfg
        c, steps = cfg.width, len(cfg.patch_nums)
        self.word_embed = nn.Linear(vae_channels, c)
        self.class_emb = nn.Embedding(cfg.num_classes + 1, c)
        self.pos_start = nn.Parameter(torch.zeros(1, 1, c))
        self.lvl_embed = nn.Embedding(steps, c)
        self.blocks = nn.ModuleList(Block(cfg, cross=True) for _ in range(cfg.depth))
        self.head_logits = nn.Linear(c, vocab)
        self.encoder_proj = nn.Linear(cfg.text_channels, c)
        self.head_norm = nn.LayerNorm(c, eps=NORM_EPS, elementwise_affine=False)
        if cfg.sampler_head:
            self.word_embed_head = nn.Linear(vae_channels, c)
            self.feat_extract_blocks = nn.ModuleList(Block(cfg, cross=False) for _ in range(cfg.sampler_blocks))
            self.pos_start_last = nn.Parameter(torch.zeros(1, 1, c))
            self.head_logits2 = nn.Linear(c, vocab)
            self.encoder_proj2 = nn.Linear(cfg.text_channels, c)
            self.head_proj = nn.Linear(2 * c, c)
            self.lvl_embed_2 = nn.Embedding(steps, c)
        tables = [axial_rope(cfg.head_dim, pn, cfg.rope_theta, cfg.rope_norm) for pn in cfg.patch_nums]
        self.rope_tables = tables                 # constants: not weights, not in the state dict

    def rope(self, step: int, device: torch.device) -> torch.Tensor:
        table = self.rope_tables[step]
        if table.device != device:
            self.rope_tables[step] = table = table.to(device)
        return table

    def first_tokens(self, pooled: torch.Tensor) -> torch.Tensor:
        """Scale 0's token per row: the projected pooled prompt, the start position, level 0."""
        return self.encoder_proj(pooled).unsqueeze(1) + self.pos_start + self.lvl_embed.weight[0]

    def scale_tokens(self, step: int, features: torch.Tensor) -> torch.Tensor:
        return self.word_embed(features) + self.lvl_embed.weight[step]

    def blocks_forward(self, step: int, x: torch.Tensor, text: CrossInputs, caches: list[KV] | None) \
            -> tuple[torch.Tensor, list[KV]]:
        rope = self.rope(step, x.device)
        new: list[KV] = []
        for i, blk in enumerate(self.blocks):
            x, kv = blk(x, rope, None if caches is None else caches[i], text, i)
            new.append(kv)
        return x, new

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head_logits(self.head_norm(hidden) if self.cfg.logit_norm else hidden)

    def head_logits_of(self, step: int, codes: torch.Tensor, hidden: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """The sampler head's logits (rows, l, V) for one sub-step: the codes unmasked so far
        (B, l, Cvae, zero where masked) beside the main transformer's output, behind the pooled
        prompt's token, through its own blocks (self-attention only, no cache)."""
        start = self.encoder_proj2(pooled.unsqueeze(1)) + self.pos_start_last
        rows = hidden.shape[0] // codes.shape[0]
        feature = torch.cat([start, self.word_embed_head(codes).repeat(rows, 1, 1) + self.lvl_embed_2.weight[step]], 1)
        z = self.head_proj(torch.cat([feature, torch.cat([start, hidden], 1)], dim=-1))
        rope = torch.cat([self.rope(0, z.device), self.rope(step, z.device)])
        for blk in self.feat_extract_blocks:
            z, _ = blk(z, rope)
        return self.head_logits2(self.head_norm(z))[:, 1:]

    @staticmethod
    def mask_bias(mask: torch.Tensor) -> torch.Tensor:
        """(rows, T) 0/1 padding mask to the additive (rows, 1, 1, T) attention bias."""
        return torch.where(mask == 1, 0.0, -math.inf)[:, None, None, :]
