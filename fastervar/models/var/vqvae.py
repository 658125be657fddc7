"""The multi-scale residual VQVAE of the VAR family.

Module and parameter names follow the released `vae_ch160v4096z32.pth`, so that file loads with a
strict key and shape check. The quantizer exposes the per-step pieces (codebook lookup, Phi,
f_hat update) that the scale-step unit chains; the full image->tokens pass is used for training
and for reconstructions.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..flops import count_flops
from ..resample import resample
from .configs import VQVAEConfig


def phi_table(steps: int, phi_count: int) -> list[int]:
    """Which Phi conv each scale step uses: the nearest of `phi_count` evenly placed ticks.

    Computed with numpy in float64 exactly as the released models were trained, which settles the
    near-tie at step 2 of the 10-step schedule on conv 1.
    """
    k = phi_count
    ticks = np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k) if k == 4 else np.linspace(1 / 2 / k, 1 - 1 / 2 / k, k)
    return [int(np.argmin(np.abs(ticks - si / (steps - 1)))) for si in range(steps)]


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1 = _norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2 = _norm(cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with one fused 1x1 qkv conv."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        attn = torch.softmax(torch.bmm(q.transpose(1, 2), k) * (c ** -0.5), dim=2)   # (b, hw_q, hw_k)
        out = torch.bmm(v, attn.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: resblocks, optional attention after each, optional resampler."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module]):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)

    def run(self, h: torch.Tensor) -> torch.Tensor:
        for i, blk in enumerate(self.block):
            h = blk(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class _Mid(nn.Module):
    def __init__(self, channels: int, groups: int, attn: bool):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups)
        self.attn_1 = AttnBlock(channels, groups) if attn else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        ch, g, n = cfg.ch, cfg.num_groups, len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, 1, 1)
        self.down = nn.ModuleList()
        cin = ch
        for i, mult in enumerate(cfg.ch_mult):
            cout = ch * mult
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(cin, cout, g))
                cin = cout
                if i == n - 1 and cfg.using_sa:
                    attns.append(AttnBlock(cout, g))
            level = _Level(blocks, attns)
            if i != n - 1:
                level.downsample = Downsample(cout)
            self.down.append(level)
        self.mid = _Mid(cin, g, cfg.using_mid_sa)
        self.norm_out = _norm(cin, g)
        self.conv_out = nn.Conv2d(cin, cfg.z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level.run(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        ch, g, n = cfg.ch, cfg.num_groups, len(cfg.ch_mult)
        cin = ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, 1, 1)
        self.mid = _Mid(cin, g, cfg.using_mid_sa)
        levels: list[_Level] = []
        for i in reversed(range(n)):
            cout = ch * cfg.ch_mult[i]
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(cin, cout, g))
                cin = cout
                if i == n - 1 and cfg.using_sa:
                    attns.append(AttnBlock(cout, g))
            level = _Level(blocks, attns)
            if i != 0:
                level.upsample = Upsample(cout)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(cin, g)
        self.conv_out = nn.Conv2d(cin, cfg.in_channels, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level.run(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Phi(nn.Conv2d):
    """Residual 3x3 conv applied to each upsampled scale: (1-r)*h + r*conv(h)."""

    def __init__(self, channels: int, ratio: float):
        super().__init__(channels, channels, 3, 1, 1)
        self.ratio = ratio

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * (1 - self.ratio) + super().forward(h) * self.ratio


class _PhiSet(nn.Module):
    def __init__(self, convs: list[Phi]):
        super().__init__()
        self.qresi_ls = nn.ModuleList(convs)


class MultiScaleQuantizer(nn.Module):
    """Codebook plus the partially shared Phi convs, with the step -> conv table fixed at build."""

    def __init__(self, cfg: VQVAEConfig, patch_nums: tuple[int, ...]):
        super().__init__()
        self.patch_nums = tuple(patch_nums)
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.z_channels)
        self.quant_resi = _PhiSet([Phi(cfg.z_channels, cfg.phi_ratio) for _ in range(cfg.phi_count)])
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(patch_nums), cfg.vocab_size))
        self.phi_index = phi_table(len(patch_nums), cfg.phi_count)

    def phi(self, step: int) -> Phi:
        return self.quant_resi.qresi_ls[self.phi_index[step]]

    def upsampled_residual(self, step: int, h: torch.Tensor) -> torch.Tensor:
        """Bring a step's (B, Cvae, p, p) code map to full latent size and apply its Phi conv."""
        full = self.patch_nums[-1]
        return self.phi(step)(resample(h, full, "bicubic"))

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Codebook indices of the (N, Cvae) vectors by L2 distance."""
        w = self.embedding.weight
        d = z.square().sum(1, keepdim=True) + w.square().sum(1) - 2 * z @ w.T
        return d.argmin(1)

    def encode_scales(self, f: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Residual quantization of a latent map: per-step indices (B, p*p) and the final f_hat."""
        b, c, _, _ = f.shape
        rest, f_hat = f.clone(), torch.zeros_like(f)
        idx_list: list[torch.Tensor] = []
        for si, pn in enumerate(self.patch_nums):
            z = resample(rest, pn, "area").permute(0, 2, 3, 1).reshape(-1, c)
            idx = self.nearest(z)
            h = self.embedding(idx).reshape(b, pn, pn, c).permute(0, 3, 1, 2)
            h = self.upsampled_residual(si, h)
            f_hat = f_hat + h
            rest = rest - h
            idx_list.append(idx.reshape(b, pn * pn))
        return idx_list, f_hat

    def indices_to_fhat(self, idx_list: list[torch.Tensor]) -> list[torch.Tensor]:
        """Accumulated f_hat after each step, for teacher forcing and for convergence plots."""
        b = idx_list[0].shape[0]
        full = self.patch_nums[-1]
        f_hat = self.embedding.weight.new_zeros(b, self.embedding.embedding_dim, full, full)
        out = []
        for si, (idx, pn) in enumerate(zip(idx_list, self.patch_nums)):
            h = self.embedding(idx).reshape(b, pn, pn, -1).permute(0, 3, 1, 2)
            f_hat = f_hat + self.upsampled_residual(si, h)
            out.append(f_hat)
        return out


class VQVAE(nn.Module):
    def __init__(self, cfg: VQVAEConfig, patch_nums: tuple[int, ...]):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = MultiScaleQuantizer(cfg, patch_nums)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 3, 1, 1)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 3, 1, 1)

    def encode(self, img: torch.Tensor) -> torch.Tensor:
        """Image in [-1, 1] to the continuous latent map."""
        return self.quant_conv(self.encoder(img))

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Accumulated latent to an image in [-1, 1]."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp(-1, 1)

    def img_to_indices(self, img: torch.Tensor) -> list[torch.Tensor]:
        return self.quantize.encode_scales(self.encode(img))[0]

    def reconstruct(self, img: torch.Tensor) -> torch.Tensor:
        return self.decode(self.quantize.encode_scales(self.encode(img))[1])


def decoder_flops(cfg: VQVAEConfig, side: int) -> float:
    """Conv and attention FLOPs of one image through the decoder from a (side x side) latent,
    counted on an empty (meta) copy."""
    return count_flops(lambda: Decoder(cfg), (1, cfg.z_channels, side, side), {AttnBlock: _attention_flops})


def _attention_flops(inputs: tuple) -> float:
    b, ch, h, w = inputs[0].shape
    return 2 * 2 * b * ch * (h * w) ** 2
