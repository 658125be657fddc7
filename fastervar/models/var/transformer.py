"""The class-conditional VAR transformer.

Parameter and buffer names follow the released `var_d*.pth` files so they load strictly. The KV
cache is explicit: a block takes the cached (k, v) of the coarser scales and returns the extended
pair, which is what lets one scale step be traced into a graph with static cache inputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..factors import Factors, linear
from ..protocol import KV
from .configs import VARConfig


class SelfAttention(nn.Module):
    """Multi-head attention with L2-normalised q/k and a learned per-head temperature."""

    def __init__(self, cfg: VARConfig):
        super().__init__()
        c, h = cfg.embed_dim, cfg.num_heads
        self.num_heads, self.head_dim = h, c // h
        self.l2_norm = cfg.attn_l2_norm
        if self.l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, h, 1, 1), 4.0).log())
            self.max_scale_mul = math.log(100)
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = nn.Linear(c, 3 * c, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(c))
        self.v_bias = nn.Parameter(torch.zeros(c))
        self.register_buffer("zero_k_bias", torch.zeros(c))
        self.proj = nn.Linear(c, c)
        self.factors: Factors = {}        # set per step by the accelerator: "mat_qkv"/"proj" -> (A, B)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-head q, k, v of shape (B, H, L, hd), with the L2 normalisation applied."""
        b, n, _ = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = linear(x, self.mat_qkv, self.factors.get("mat_qkv"), bias)
        qkv = qkv.view(b, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if self.l2_norm:
            scale_mul = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
            q = F.normalize(q, dim=-1).mul(scale_mul)
            k = F.normalize(k, dim=-1)
        return q, k, v

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None,
                cache: KV | None = None) -> tuple[torch.Tensor, KV]:
        b, n, c = x.shape
        q, k, v = self.qkv(x)
        if cache is not None:
            k = torch.cat((cache[0], k), dim=2)
            v = torch.cat((cache[1], v), dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=self.scale)
        out = out.transpose(1, 2).reshape(b, n, c)
        return linear(out, self.proj, self.factors.get("proj")), (k, v)


class FFN(nn.Module):
    def __init__(self, cfg: VARConfig):
        super().__init__()
        hidden = round(cfg.embed_dim * cfg.mlp_ratio)
        self.fc1 = nn.Linear(cfg.embed_dim, hidden)
        self.fc2 = nn.Linear(hidden, cfg.embed_dim)
        self.factors: Factors = {}        # set per step by the accelerator: "fc1"/"fc2" -> (A, B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(linear(x, self.fc1, self.factors.get("fc1")), approximate="tanh")
        return linear(h, self.fc2, self.factors.get("fc2"))


class SharedAdaLin(nn.Linear):
    """Condition -> the six modulation vectors shared by every block (d36 layout)."""

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return super().forward(cond).view(-1, 1, 6, self.out_features // 6)


class AdaLNBlock(nn.Module):
    """Pre-norm transformer block whose norms are modulated by the class condition."""

    def __init__(self, cfg: VARConfig):
        super().__init__()
        self.C = cfg.embed_dim
        self.shared_aln = cfg.shared_aln
        self.attn = SelfAttention(cfg)
        self.ffn = FFN(cfg)
        self.ln_wo_grad = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps, elementwise_affine=False)
        if self.shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, cfg.embed_dim) / cfg.embed_dim ** 0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cfg.embed_dim, 6 * cfg.embed_dim))

    def modulation(self, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """gamma1, gamma2, scale1, scale2, shift1, shift2, each (B, 1, C).

        `cond` is the raw condition (B, D), or the shared (B, 1, 6, C) output in the d36 layout.
        """
        if self.shared_aln:
            return (self.ada_gss + cond).unbind(2)
        return self.ada_lin(cond).view(-1, 1, 6, self.C).unbind(2)

    def attn_input(self, x: torch.Tensor, mod: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.ln_wo_grad(x).mul(mod[2].add(1)).add(mod[4])

    def ffn_input(self, x: torch.Tensor, mod: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.ln_wo_grad(x).mul(mod[3].add(1)).add(mod[5])

    def forward(self, x: torch.Tensor, cond: torch.Tensor, attn_bias: torch.Tensor | None = None,
                cache: KV | None = None) -> tuple[torch.Tensor, KV]:
        mod = self.modulation(cond)
        a, kv = self.attn(self.attn_input(x, mod), attn_bias, cache)
        x = x + a.mul(mod[0])
        x = x + self.ffn(self.ffn_input(x, mod)).mul(mod[1])
        return x, kv


class AdaLNBeforeHead(nn.Module):
    def __init__(self, cfg: VARConfig):
        super().__init__()
        self.C = cfg.embed_dim
        self.ln_wo_grad = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cfg.embed_dim, 2 * cfg.embed_dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond).view(-1, 1, 2, self.C).unbind(2)
        return self.ln_wo_grad(x).mul(scale.add(1)).add(shift)


class VAR(nn.Module):
    """Next-scale prediction transformer over the residual VQ token pyramid."""

    def __init__(self, cfg: VARConfig, vae_channels: int, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        c, steps = cfg.embed_dim, len(cfg.patch_nums)
        self.num_classes = cfg.num_classes
        self.patch_nums = tuple(cfg.patch_nums)
        bounds = [0]
        for p in self.patch_nums:
            bounds.append(bounds[-1] + p * p)
        self.bounds = bounds
        std = math.sqrt(1 / c / 3)
        self.word_embed = nn.Linear(vae_channels, c)
        self.class_emb = nn.Embedding(cfg.num_classes + 1, c)
        self.pos_start = nn.Parameter(torch.empty(1, 1, c))
        self.pos_1LC = nn.Parameter(torch.empty(1, cfg.seq_len, c))
        self.lvl_embed = nn.Embedding(steps, c)
        for t in (self.class_emb.weight, self.pos_start, self.pos_1LC, self.lvl_embed.weight):
            nn.init.trunc_normal_(t.data, std=std)
        self.shared_ada_lin = (nn.Sequential(nn.SiLU(), SharedAdaLin(c, 6 * c)) if cfg.shared_aln
                               else nn.Identity())
        self.blocks = nn.ModuleList([AdaLNBlock(cfg) for _ in range(cfg.depth)])
        level = torch.cat([torch.full((p * p,), i) for i, p in enumerate(self.patch_nums)])
        self.register_buffer("lvl_1L", level.view(1, -1))
        mask = torch.where(level.view(-1, 1) >= level.view(1, -1), 0.0, -torch.inf)
        self.register_buffer("attn_bias_for_masking", mask.view(1, 1, cfg.seq_len, cfg.seq_len))
        self.head_nm = AdaLNBeforeHead(cfg)
        self.head = nn.Linear(c, vocab_size)

    # -- pieces of one scale step -------------------------------------------------------------
    def condition(self, labels: torch.Tensor) -> torch.Tensor:
        """Class embeddings (B, C); the index `num_classes` is the null (unconditional) class."""
        return self.class_emb(labels)

    def block_condition(self, cond: torch.Tensor) -> torch.Tensor:
        """What the blocks are modulated by: the raw condition, or its shared projection."""
        return self.shared_ada_lin(cond)

    def position(self, step: int) -> torch.Tensor:
        """Level plus absolute position embedding of a step's tokens, (1, p*p, C)."""
        lo, hi = self.bounds[step], self.bounds[step + 1]
        return self.lvl_embed(self.lvl_1L[:, lo:hi]) + self.pos_1LC[:, lo:hi]

    def first_tokens(self, cond: torch.Tensor) -> torch.Tensor:
        """Step 0's single token: the condition as start-of-sequence."""
        return cond.unsqueeze(1) + self.pos_start + self.position(0)

    def scale_tokens(self, step: int, features: torch.Tensor) -> torch.Tensor:
        """Embed a step's (B, p*p, Cvae) downsampled f_hat features as its input tokens."""
        return self.word_embed(features) + self.position(step)

    def logits(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_nm(h.float(), cond).float()).float()

    # -- teacher forcing ------------------------------------------------------------------------
    def forward(self, labels: torch.Tensor, x_tf: torch.Tensor) -> torch.Tensor:
        """Logits for every position of the pyramid at once, under the block-causal mask.

        `x_tf` (B, L - 1, Cvae) holds the downsampled accumulations that feed steps 1..S-1.
        """
        cond = self.condition(labels)
        x = torch.cat((cond.unsqueeze(1) + self.pos_start, self.word_embed(x_tf)), dim=1)
        x = x + (self.lvl_embed(self.lvl_1L) + self.pos_1LC)
        block_cond = self.block_condition(cond)
        for blk in self.blocks:
            x, _ = blk(x, block_cond, self.attn_bias_for_masking)
        return self.logits(x, cond)
