"""Named model configurations: the official VAR releases and small ones for tests.

Plain dataclasses with no torch import, so profiles, bundles and the runtime can name and check a
model's shapes without the toolchain installed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ...errors import FastervarError
from ...profile import ModelSpec

SCHEDULE_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
SCHEDULE_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)


@dataclass(frozen=True)
class VQVAEConfig:
    """Shapes of the multi-scale residual VQVAE (LDM-style encoder/decoder)."""

    vocab_size: int = 4096
    z_channels: int = 32
    ch: int = 160
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    in_channels: int = 3
    using_sa: bool = True
    using_mid_sa: bool = True
    phi_count: int = 4
    phi_ratio: float = 0.5
    num_groups: int = 32

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclass(frozen=True)
class VARConfig:
    """Shapes of the class-conditional VAR transformer."""

    depth: int = 16
    embed_dim: int = 1024
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    shared_aln: bool = False
    attn_l2_norm: bool = True
    norm_eps: float = 1e-6
    patch_nums: tuple[int, ...] = SCHEDULE_256

    @property
    def seq_len(self) -> int:
        return sum(p * p for p in self.patch_nums)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


@dataclass(frozen=True)
class ModelConfig:
    """A VAR transformer paired with the VQVAE whose tokens it predicts."""

    name: str
    var: VARConfig
    vae: VQVAEConfig
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def resolution(self) -> int:
        return self.var.patch_nums[-1] * self.vae.downsample

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "var": asdict(self.var), "vae": asdict(self.vae),
                "description": self.description}

    def spec(self) -> ModelSpec:
        """The model as profiles and the cost model see it: no weights, and no torch until the
        decoder's FLOPs are asked for (counted on an empty copy)."""
        c, hidden = self.var.embed_dim, round(self.var.embed_dim * self.var.mlp_ratio)
        return ModelSpec(family="var", config=self.name, schedule={"patch_nums": list(self.var.patch_nums)},
                         grids=tuple((p, p) for p in self.var.patch_nums), depth=self.var.depth, width=c,
                         linears={"attn.mat_qkv": (c, 3 * c), "attn.proj": (c, c), "ffn.fc1": (c, hidden),
                                  "ffn.fc2": (hidden, c)},
                         logit_width=self.vae.vocab_size, code_width=self.vae.z_channels,
                         shared_adaln=self.var.shared_aln, decoder_flops=self._decoder_flops)

    def _decoder_flops(self) -> float:
        from .vqvae import decoder_flops
        return decoder_flops(self.vae, self.var.patch_nums[-1])

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        try:
            var = dict(data["var"])
            vae = dict(data["vae"])
            var["patch_nums"] = tuple(var["patch_nums"])
            vae["ch_mult"] = tuple(vae["ch_mult"])
            cfg = cls(name=str(data["name"]), var=VARConfig(**var), vae=VQVAEConfig(**vae),
                      description=str(data.get("description", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise FastervarError(f"invalid model configuration: {exc}") from None
        validate(cfg)
        return cfg


def official_var(depth: int) -> VARConfig:
    """The build rule of the released checkpoints: width 64*depth, one head per 64 channels."""
    hi_res = depth == 36
    return VARConfig(depth=depth, embed_dim=64 * depth, num_heads=depth, shared_aln=hi_res,
                     patch_nums=SCHEDULE_512 if hi_res else SCHEDULE_256)


OFFICIAL_VAE = VQVAEConfig()

# A tiny VQVAE that keeps every structural feature (attention, Phi table, 3 channels) at 32 px.
TINY_VAE = VQVAEConfig(vocab_size=64, z_channels=8, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1,
                       num_groups=8)
TINY_SCHEDULE = (1, 2, 3, 4, 5, 6, 8)


def _named() -> dict[str, ModelConfig]:
    out: dict[str, ModelConfig] = {}
    for depth in (16, 20, 24, 30, 36):
        var = official_var(depth)
        res = var.patch_nums[-1] * OFFICIAL_VAE.downsample
        out[f"d{depth}"] = ModelConfig(f"d{depth}", var, OFFICIAL_VAE,
                                       f"official VAR-d{depth}, {res} px")
    out["tiny"] = ModelConfig(
        "tiny", VARConfig(depth=2, embed_dim=64, num_heads=2, num_classes=10,
                          patch_nums=TINY_SCHEDULE), TINY_VAE,
        "test-sized model: 2 blocks, 64 wide, 32 px, 7 steps")
    out["tiny-saln"] = ModelConfig(
        "tiny-saln", VARConfig(depth=3, embed_dim=64, num_heads=2, num_classes=10,
                               shared_aln=True, patch_nums=TINY_SCHEDULE), TINY_VAE,
        "test-sized model with shared AdaLN (the d36 layout)")
    out["tiny-d16-schedule"] = ModelConfig(
        "tiny-d16-schedule", VARConfig(depth=2, embed_dim=64, num_heads=2, num_classes=10),
        VQVAEConfig(vocab_size=64, z_channels=8, ch=16, ch_mult=(1, 2, 2, 2, 2),
                    num_res_blocks=1, num_groups=8),
        "test-sized model on the official 10-step 256 px schedule")
    out["fashion-tiny"] = ModelConfig(
        "fashion-tiny", VARConfig(depth=6, embed_dim=96, num_heads=3, num_classes=10, patch_nums=TINY_SCHEDULE),
        VQVAEConfig(vocab_size=512, z_channels=16, ch=16, ch_mult=(1, 2, 4), num_res_blocks=1, num_groups=8),
        "the small shipped model the tests use: class-conditional VAR on Fashion-MNIST, 32 px, 7 steps")
    out["fashion-16"] = ModelConfig(
        "fashion-16", VARConfig(depth=6, embed_dim=128, num_heads=2, num_classes=10),
        VQVAEConfig(vocab_size=512, z_channels=16, ch=32, ch_mult=(1, 2), num_res_blocks=1, num_groups=8),
        "the embedded default: class-conditional VAR on Fashion-MNIST, 32 px, on VAR-256's 10-step "
        "schedule (16x16 latent)")
    return out


NAMED_CONFIGS: dict[str, ModelConfig] = _named()


FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")


def get_config(name: str) -> ModelConfig:
    """Look up a named configuration, with an error that lists the known names."""
    try:
        return NAMED_CONFIGS[name]
    except KeyError:
        known = ", ".join(sorted(NAMED_CONFIGS))
        raise FastervarError(f"unknown model {name!r}; known models: {known}") from None


def validate(cfg: ModelConfig) -> None:
    """Reject shape combinations the modules cannot be built with."""
    v, q = cfg.var, cfg.vae
    if v.embed_dim % v.num_heads:
        raise FastervarError(f"var.embed_dim {v.embed_dim} is not divisible by num_heads {v.num_heads}")
    if list(v.patch_nums) != sorted(set(v.patch_nums)) or v.patch_nums[0] != 1:
        raise FastervarError(f"var.patch_nums must increase strictly from 1, got {list(v.patch_nums)}")
    if q.phi_count < 2:
        raise FastervarError("vae.phi_count must be at least 2")
    if q.ch * min(q.ch_mult) % q.num_groups:
        raise FastervarError("vae channel counts must be divisible by vae.num_groups")
