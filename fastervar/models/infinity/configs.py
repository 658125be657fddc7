"""Infinity's shapes, torch-free: the transformer's and the BSQ VAE's configurations, the
released pairs by name, and the `ModelSpec` profiles and the cost model read."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import FastervarError
from ...profile import ModelSpec
from .schedules import nearest_template, schedule

# A prompt's length as the cost model prices cross-attention (T5 tokens; real prompts vary).
NOMINAL_PROMPT_TOKENS = 64


@dataclass(frozen=True)
class BSQConfig:
    """The shape of a BSQ VAE. The image-to-latent stride is 2**(len(ch_mult) - 1).

    `patch_size` is how many latent pixels per side one transformer token covers: 2 for the 8B
    model, whose tokens carry a 2x2 pixel-unshuffle of the latent (4 * codebook_dim bits). It is
    not upstream's `patch_size` argument, which is the stride.
    """

    codebook_dim: int                       # z channels = bits per latent pixel
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4, 4)
    num_res_blocks: int = 2
    patch_size: int = 1

    @property
    def stride(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def token_bits(self) -> int:
        return self.codebook_dim * self.patch_size ** 2


BSQ_CONFIGS = {
    "d32": BSQConfig(codebook_dim=32),                                               # Infinity-2B
    "d14-f8-patchify": BSQConfig(codebook_dim=14, ch_mult=(1, 2, 4, 4), patch_size=2),  # Infinity-8B
}


@dataclass(frozen=True)
class InfinityConfig:
    """A transformer's shape. `bits` is what one token carries (4x the VAE's bits when the VAE
    output is 2x2-patchified, as for Infinity-8B)."""

    depth: int
    width: int
    heads: int
    chunks: int
    text_channels: int
    bits: int

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def ffn_hidden(self) -> int:
        return round(self.width * 4 / 256) * 256

    @property
    def pool_heads(self) -> int:
        """Heads of the text pool: upstream splits the text width into 128-wide heads (64 above 4096)."""
        return self.text_channels // (64 if self.width > 4096 else 128)


def validate_config(cfg: InfinityConfig) -> None:
    if cfg.width % cfg.heads or cfg.head_dim % 4:
        raise FastervarError(f"Infinity width {cfg.width} must split into {cfg.heads} heads of a multiple of 4")
    if cfg.depth % cfg.chunks:
        raise FastervarError(f"Infinity depth {cfg.depth} does not split into {cfg.chunks} block chunks")
    if cfg.pool_heads < 1 or cfg.width % cfg.pool_heads:
        raise FastervarError(f"text width {cfg.text_channels} gives no valid text-pool heads for width {cfg.width}")


# name -> (transformer, VAE); the tiny one is the parity configuration (upstream's constructor at
# 4 blocks x 128 wide, 2 heads, 2 chunks, 256-wide text, an 8-bit VAE).
INFINITY_CONFIGS: dict[str, tuple[InfinityConfig, BSQConfig]] = {
    "infinity-2b": (InfinityConfig(depth=32, width=2048, heads=16, chunks=8, text_channels=2048, bits=32),
                    BSQ_CONFIGS["d32"]),
    "infinity-8b": (InfinityConfig(depth=40, width=3584, heads=28, chunks=8, text_channels=2048, bits=56),
                    BSQ_CONFIGS["d14-f8-patchify"]),
    "infinity-tiny": (InfinityConfig(depth=4, width=128, heads=2, chunks=2, text_channels=256, bits=8),
                      BSQConfig(codebook_dim=8, ch=32, num_res_blocks=1)),
}


def spec_of(name: str, t_cfg: InfinityConfig, v_cfg: BSQConfig, pn: str, h_div_w: float = 1.0,
            decoder_flops=None) -> ModelSpec:
    """An Infinity model as profiles see it, on the schedule of one aspect of a pixel budget."""
    c, hidden = t_cfg.width, t_cfg.ffn_hidden
    grids = tuple(tuple(g) for g in schedule(h_div_w, pn))
    return ModelSpec(family="infinity", config=name, schedule={"pn": pn, "steps": len(grids)}, grids=grids,
                     depth=t_cfg.depth, width=c,
                     linears={"sa.mat_qkv": (c, 3 * c), "sa.proj": (c, c), "ca.mat_q": (c, c), "ca.proj": (c, c),
                              "ffn.fc1": (c, hidden), "ffn.fc2": (hidden, c)},
                     logit_width=2 * t_cfg.bits, code_width=t_cfg.bits, shared_adaln=True,
                     text=(NOMINAL_PROMPT_TOKENS, c), peer_widths=tuple(w for _, w in schedule(1.0, pn)),
                     aspect=nearest_template(h_div_w), decoder_flops=decoder_flops)


def named_spec(name: str, pn: str, h_div_w: float = 1.0) -> ModelSpec:
    """The spec of a released configuration by name."""
    if name not in INFINITY_CONFIGS:
        raise FastervarError(f"unknown Infinity model {name!r}; choose one of {', '.join(INFINITY_CONFIGS)}")
    return spec_of(name, *INFINITY_CONFIGS[name], pn, h_div_w)
