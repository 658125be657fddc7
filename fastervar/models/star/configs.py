"""STAR's shapes, torch-free: the transformer's configuration and the released models by name.

A STAR file says its depth, width, heads, text width, scale count and whether it carries the
sampler head; it does not say its image schedule or whether its logits are normalized, so those
come from the name (the 10-scale files are 256 px unless `--model star-512` says otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ...errors import FastervarError
from ..var.configs import OFFICIAL_VAE, VQVAEConfig

SCHEDULE_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
SCHEDULE_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)
SCHEDULE_1024 = (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64)
# SD-2.1's text encoder (OpenCLIP-H): the width cross-attention and the start token read
TEXT_CHANNELS = 1024
TEXT_TOKENS = 77


@dataclass(frozen=True)
class StarConfig:
    """A STAR transformer. `sampler_head` adds the 3-block head that runs "stable sampling" from
    scale `sampler_from` on (the demo's path); without it the model samples as `sample.py` does.
    `logit_norm` puts a plain LayerNorm before the main head (every published model except 512)."""

    depth: int
    width: int
    heads: int
    patch_nums: tuple[int, ...]
    text_channels: int = TEXT_CHANNELS
    sampler_head: bool = False
    logit_norm: bool = True
    mlp_ratio: float = 4.0
    num_classes: int = 1000          # an unused class table the files carry
    rope_theta: float = 10000.0
    rope_norm: float = 64.0
    sampler_from: int = 9
    sampler_blocks: int = 3

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def hidden(self) -> int:
        return round(self.width * self.mlp_ratio)


@dataclass(frozen=True)
class StarPair:
    """A transformer with its VQVAE (VAR's), under one name."""

    name: str
    star: StarConfig
    vae: VQVAEConfig


def published(depth: int, patch_nums: tuple[int, ...], sampler_head: bool = False,
              logit_norm: bool = True) -> StarConfig:
    """The published build rule: width 64 per block, one head per 64 channels."""
    return StarConfig(depth=depth, width=64 * depth, heads=depth, patch_nums=patch_nums,
                      sampler_head=sampler_head, logit_norm=logit_norm)


# A test model with every structural feature (depth 3: upstream sizes the sampler head off the
# main blocks): 14 scales (stable sampling from scale 9, the
# 15-sub-step scales past 12), cross-attention, RoPE, the sampler head; 224 px, a tiny VQVAE.
TINY_SCHEDULE = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14)
TINY_VAE = VQVAEConfig(vocab_size=64, z_channels=8, ch=32)       # upstream fixes the rest of the layout
TINY_STAR = StarConfig(depth=3, width=64, heads=2, patch_nums=TINY_SCHEDULE, text_channels=32, sampler_head=True)

STAR_MODELS: dict[str, StarPair] = {
    p.name: p for p in (
        StarPair("star-256-d16", published(16, SCHEDULE_256), OFFICIAL_VAE),
        StarPair("star-256-d30", published(30, SCHEDULE_256), OFFICIAL_VAE),
        StarPair("star-512", published(30, SCHEDULE_512, logit_norm=False), OFFICIAL_VAE),
        StarPair("star-1024", published(30, SCHEDULE_1024), OFFICIAL_VAE),
        StarPair("star-1024-sampler", published(30, SCHEDULE_1024, sampler_head=True), OFFICIAL_VAE),
        StarPair("star-tiny", TINY_STAR, TINY_VAE),
        StarPair("star-tiny-plain", replace(TINY_STAR, sampler_head=False), TINY_VAE),
    )
}


def get_pair(name: str) -> StarPair:
    if name not in STAR_MODELS:
        raise FastervarError(f"unknown STAR model {name!r}; choose one of {', '.join(STAR_MODELS)}")
    return STAR_MODELS[name]


def pair_for(star: StarConfig, vae: VQVAEConfig) -> StarPair:
    """The released model a configuration read off files is, else a custom pair named by its shape."""
    return next((p for p in STAR_MODELS.values() if (p.star, p.vae) == (star, vae)),
                StarPair(f"star-custom-d{star.depth}w{star.width}", star, vae))


def schedule_for(scales: int) -> tuple[int, ...]:
    """The schedule of a file with `scales` scales: 1024 px for 14, 256 px for 10."""
    for patch_nums in (SCHEDULE_1024, SCHEDULE_256):
        if len(patch_nums) == scales:
            return patch_nums
    raise FastervarError(f"no published STAR schedule has {scales} scales (10 or 14); name the model with --model")
