"""Infinity's BSQ VAE: a flux-style conv autoencoder whose latent is summed from binary codes.

Module and parameter names follow upstream's state dict, where every conv and GroupNorm sits one
level down in a wrapper (`conv_in.conv.weight`, `norm1.norm.weight`) and the bit-weight buffer
appears twice (`quantizer.lfq.mask` and its alias `quantize.lfq.mask`), so the released files
load with a strict key and shape check. There is no quant/post-quant conv and no Phi: a scale's
codes are sign bits on the unit sphere, trilinearly upsampled and added into the latent.

The latent helpers reproduce upstream's sampler bit for bit. That needs three things that look
like details: swish as `x * sigmoid(x)` (F.silu rounds differently), resampling as a 5-D
trilinear interpolate with depth 1 (4-D bilinear rounds differently), and the channels-last
memory layout upstream's codes carry into the decoder (NCHW convs reduce in another order).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import FastervarError
from ..checkpoint import StateDict, assign_state_dict, check_strict, read_state_dict
from .configs import BSQConfig


def _groups(channels: int) -> int:
    for g in (32, 24):          # upstream's rule: 32 groups, else 24
        if channels % g == 0:
            return g
    raise FastervarError(f"BSQ VAE: {channels} channels divide into neither 32 nor 24 GroupNorm groups")


class _Conv(nn.Module):
    """A Conv2d one level down, as upstream wraps it (`x.conv.weight`)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, pad: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _Norm(nn.Module):
    """GroupNorm one level down, as upstream wraps it (`x.norm.weight`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels, eps=1e-6, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)     # not F.silu: that rounds differently from upstream


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = _Norm(cin)
        self.conv1 = _Conv(cin, cout, 3, 1, 1)
        self.norm2 = _Norm(cout)
        self.conv2 = _Conv(cout, cout, 3, 1, 1)
        if cin != cout:
            self.nin_shortcut = _Conv(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(_swish(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = _Conv(channels, channels, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))     # torch convs pad symmetrically only


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = _Conv(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class _Level(nn.Module):
    """One resolution: resblocks, then an optional down- or upsampler attached by the caller."""

    def __init__(self, cin: int, cout: int, n: int):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout) for i in range(n))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for blk in self.block:
            h = blk(h)
        return h


class _Mid(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.block_1(x))


class Encoder(nn.Module):
    def __init__(self, cfg: BSQConfig):
        super().__init__()
        ch, n = cfg.ch, len(cfg.ch_mult)
        self.conv_in = _Conv(3, ch, 3, 1, 1)
        self.down = nn.ModuleList()
        cin = ch
        for i, mult in enumerate(cfg.ch_mult):
            level = _Level(cin, ch * mult, cfg.num_res_blocks)
            cin = ch * mult
            if i != n - 1:
                level.downsample = Downsample(cin)
            self.down.append(level)
        self.mid = _Mid(cin)
        self.norm_out = _Norm(cin)
        self.conv_out = _Conv(cin, cfg.codebook_dim, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        return self.conv_out(_swish(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, cfg: BSQConfig):
        super().__init__()
        ch, n = cfg.ch, len(cfg.ch_mult)
        cin = ch * cfg.ch_mult[-1]
        self.conv_in = _Conv(cfg.codebook_dim, cin, 3, 1, 1)
        self.mid = _Mid(cin)
        levels: list[_Level] = []
        for i in reversed(range(n)):
            level = _Level(cin, ch * cfg.ch_mult[i], cfg.num_res_blocks + 1)
            cin = ch * cfg.ch_mult[i]
            if i != 0:
                level.upsample = Upsample(cin)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = _Norm(cin)
        self.conv_out = _Conv(cin, 3, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class _BitWeights(nn.Module):
    """Upstream's `lfq.mask`, 2**(d-1) .. 1: unused by bitwise sampling, kept so files load strictly."""

    def __init__(self, d: int):
        super().__init__()
        self.register_buffer("mask", 2 ** torch.arange(d - 1, -1, -1))


class BSQVAE(nn.Module):
    def __init__(self, cfg: BSQConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantizer = nn.Module()
        self.quantizer.lfq = _BitWeights(cfg.codebook_dim)
        self.quantize = self.quantizer      # the same module under a second name, as upstream

    def encode(self, img: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) image in [-1, 1] -> (B, d, H/stride, W/stride) latent before quantization."""
        return self.encoder(img)

    def decode(self, summed: torch.Tensor) -> torch.Tensor:
        """(B, d, H, W) summed codes -> (B, 3, H*stride, W*stride) image in [-1, 1].

        Channels-last, as upstream's codes arrive; a no-op for latents built by `accumulate`.
        """
        return self.decoder(summed.contiguous(memory_format=torch.channels_last)).clamp(-1, 1)


# ---- latent helpers: what the sampler calls between scale steps ----------------------------------

def bits_to_codes(bits: torch.Tensor) -> torch.Tensor:
    """(..., d) bits in {0, 1}, any dtype -> (..., d) float32 codes (2b - 1)/sqrt(d), L2-renormalised."""
    scale = 1.0 / math.sqrt(bits.shape[-1])
    return F.normalize(bits * scale * 2 - scale, dim=-1)


def scale_codes(bits: torch.Tensor, hw: tuple[int, int], patch_size: int = 1) -> torch.Tensor:
    """One scale's sampled bits (B, h*w, d*p*p), token-major as the head emits them, -> codes
    (B, d, p*h, p*w): pixel-shuffled back to latent pixels when p > 1, channels-last in memory."""
    h, w = hw
    x = bits.reshape(bits.shape[0], h, w, -1)
    if patch_size > 1:
        x = F.pixel_shuffle(x.permute(0, 3, 1, 2), patch_size).permute(0, 2, 3, 1)
    return bits_to_codes(x).permute(0, 3, 1, 2)


def trilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, *size) as upstream resamples: 5-D trilinear with depth 1, from a
    channels-last input (the kernel rounds differently on NCHW, e.g. a caller's zeros + codes)."""
    x = x.contiguous(memory_format=torch.channels_last)
    return F.interpolate(x.unsqueeze(2), size=(1, *size), mode="trilinear")[:, :, 0]     # not squeeze: see TextPool


def accumulate(summed: torch.Tensor | None, codes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Add one scale's (B, d, h, w) codes into the (B, d, *size) summed latent (None before the
    first scale), trilinearly upsampled; the final scale, already full size, is added as is."""
    up = codes if tuple(codes.shape[-2:]) == tuple(size) else trilinear(codes, size)
    return up if summed is None else summed + up


def next_scale_input(summed: torch.Tensor, hw: tuple[int, int], patch_size: int = 1) -> torch.Tensor:
    """The next scale's transformer input: (B, d, H, W) summed latent -> (B, h*w, d*p*p) tokens.

    Upstream resamples with the same trilinear rule in both directions (not area), to (p*h, p*w),
    then pixel-unshuffles p x p latent pixels into one token.
    """
    p = patch_size
    x = trilinear(summed, (hw[0] * p, hw[1] * p))
    if p > 1:
        x = F.pixel_unshuffle(x, p)
    return x.reshape(*x.shape[:2], -1).permute(0, 2, 1)


# ---- checkpoints ---------------------------------------------------------------------------------

def _weight(sd: StateDict, module: str) -> torch.Tensor:
    """A conv's weight under its wrapped or plain name."""
    for key in (f"{module}.conv.weight", f"{module}.weight"):
        if key in sd:
            return sd[key]
    raise KeyError(f"{module}.conv.weight")


def _count(sd: StateDict, prefix: str) -> int:
    """How many numbered children `prefix{i}.` the keys name."""
    found = [int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))]
    if not found:
        raise KeyError(f"{prefix}0.*")
    return 1 + max(found)


def infer_bsq_config(sd: StateDict, patch_size: int | None = None, path: str | os.PathLike = "state dict"
                     ) -> BSQConfig:
    """Read widths, levels, res blocks and z off a state dict (wrapped or plain names).

    The token patch is not in the VAE's weights; by default it follows upstream's pairing (a
    stride-8 VAE is the 2x2-patchified 8B one, stride 16 is unpatchified). Pass it for others.
    """
    try:
        ch = _weight(sd, "encoder.conv_in").shape[0]
        levels = _count(sd, "encoder.down.")
        mult = tuple(_weight(sd, f"encoder.down.{i}.block.0.conv1").shape[0] // ch for i in range(levels))
        blocks = _count(sd, "encoder.down.0.block.")
        z = _weight(sd, "encoder.conv_out").shape[0]
    except (KeyError, IndexError) as exc:
        raise FastervarError(f"{path}: cannot infer the BSQ VAE configuration, missing key {exc}") from None
    if patch_size is None:
        patch_size = {8: 2, 16: 1}.get(2 ** (levels - 1), 0)
        if not patch_size:
            raise FastervarError(f"{path}: a stride-{2 ** (levels - 1)} BSQ VAE has no upstream token patch; "
                                 "pass patch_size")
    return BSQConfig(codebook_dim=z, ch=ch, ch_mult=mult, num_res_blocks=blocks, patch_size=patch_size)


def wrap_names(sd: StateDict, own: StateDict, path: str | os.PathLike = "state dict") -> StateDict:
    """Rename plain conv/norm keys (`conv_in.weight`) to the model's wrapped ones
    (`conv_in.conv.weight`), as upstream's loader does; other keys pass through unchanged."""
    out: StateDict = {}
    for key, t in sd.items():
        if key not in own:
            stem, _, leaf = key.rpartition(".")
            key = next((w for w in (f"{stem}.conv.{leaf}", f"{stem}.norm.{leaf}") if w in own), key)
        if key in out:
            raise FastervarError(f"{path}: BSQ VAE checkpoint holds {key!r} under both its plain and wrapped name")
        out[key] = t
    return out


def load_bsq(path: str | os.PathLike, cfg: BSQConfig | None = None, patch_size: int | None = None) -> BSQVAE:
    """Build a BSQ VAE for the file (configuration inferred unless given) and load it strictly."""
    p = Path(path)
    sd = read_state_dict(p, unwrap="vae")
    model = BSQVAE(cfg or infer_bsq_config(sd, patch_size, p))
    own = model.state_dict()
    sd = wrap_names(sd, own, p)
    check_strict(own, sd, p, "BSQ VAE")
    del own
    assign_state_dict(model, sd)
    return model.eval()
