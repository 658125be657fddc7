"""The STAR family's implementation of the scale-step protocol.

`StarModel` pairs the STAR transformer with VAR's VQVAE. A step embeds the latent area-resampled
to its grid (or, at scale 0, the pooled prompt), runs the blocks with their K/V caches and the
prompt's cross-attention, guides on VAR's ramp and samples; the sampler model fills its late
scales by stable sampling (`stable.py`). The step loop in `sampler.py` drives it as it drives
the other families.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..protocol import StepOutput, StepState
from ..sampling import SamplingSettings
from ..var.sampling import apply_guidance, guidance_weight, sample_step
from ..var.vqvae import VQVAE
from .configs import StarPair
from .stable import Draws, Trace, stable_scale, substep_noise
from .text import StarText
from .transformer import CrossInputs, Star

# sample.py's defaults; the sampler model's demo uses cfg 4.0 and seed 42 with the same filter
DEFAULT_SETTINGS = SamplingSettings(cfg=4.5, top_k=600, top_p=0.8)


@dataclass
class StarCondition:
    """The guided rows' pooled prompts (2B, C) and what cross-attention reads."""

    pooled: torch.Tensor
    cross: CrossInputs


@dataclass
class StarState(StepState):
    """The step state, plus the official sampler's stand-in for torch's global generator, which
    upstream's stable-sampling loop draws from (seeded from the step generator's seed, as the demo
    calls `torch.manual_seed(seed)` with `g_seed = seed`)."""

    global_rng: torch.Generator | None = None


class StarModel(nn.Module):
    """A STAR transformer and its VQVAE, run one scale step at a time."""

    family = "star"

    def __init__(self, pair: StarPair):
        super().__init__()
        self.pair, self.name = pair, pair.name
        self.cfg = pair.star
        self.star = Star(pair.star, pair.vae.z_channels, pair.vae.vocab_size)
        self.vae = VQVAE(pair.vae, pair.star.patch_nums)
        self.weights_origin = "unset"
        self.trace: Trace | None = None          # sees every stable-sampling sub-step (parity checks)

    @property
    def patch_nums(self) -> tuple[int, ...]:
        return self.cfg.patch_nums

    @property
    def num_steps(self) -> int:
        return len(self.patch_nums)

    @property
    def depth(self) -> int:
        return self.cfg.depth

    @property
    def device(self) -> torch.device:
        return self.star.head_logits.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.star.head_logits.weight.dtype

    def state_parts(self) -> tuple[nn.Module, ...]:
        return self.star, self.vae

    def stable_from(self) -> int:
        """The first scale filled by stable sampling (none without the sampler head)."""
        return self.cfg.sampler_from if self.cfg.sampler_head else self.num_steps

    def grid(self, step: int) -> tuple[int, int]:
        return self.patch_nums[step], self.patch_nums[step]

    def tokens_at(self, step: int) -> int:
        return self.patch_nums[step] ** 2

    def noise_at(self, step: int) -> int:
        """Uniforms a step takes per image: one per token, or per token per sub-step (and per
        position for the random-confidence sub-steps) at a stable-sampling scale."""
        tokens = self.tokens_at(step)
        return substep_noise(step, tokens) if step >= self.stable_from() else tokens

    @staticmethod
    def class_names() -> None:
        return None

    @staticmethod
    def default_settings() -> SamplingSettings:
        return DEFAULT_SETTINGS

    def runs_guidance(self, settings: SamplingSettings) -> bool:
        """Upstream always runs the empty-prompt half (its ramp starts at 0 and the row-0
        cross-attention couples the halves)."""
        return True

    def condition(self, text: StarText, guided: bool = True) -> StarCondition:
        emb, pooled, mask = (t.to(self.device) for t in text.guided())
        kv = [blk.cross_attn.text_kv(emb) for blk in self.star.blocks]
        return StarCondition(pooled, CrossInputs(kv, Star.mask_bias(mask)))

    def init_state(self, batch: int) -> StarState:
        side = self.patch_nums[-1]
        return StarState(f_hat=self.star.pos_start.new_zeros(batch, self.pair.vae.z_channels, side, side))

    def content(self, step: int, f_hat: torch.Tensor) -> torch.Tensor:
        """The step's content: f_hat area-downsampled to its grid, (B, p*p, Cvae). STAR resamples
        with torch's interpolation, as upstream does: its images are then bit-identical (the
        other families' constant resampling matrices differ from it by an ulp, a level in a few
        pixels)."""
        pn = self.patch_nums[step]
        return F.interpolate(f_hat, size=(pn, pn), mode="area").flatten(2).transpose(1, 2)

    def step_input(self, step: int, f_hat: torch.Tensor, cond: StarCondition) -> torch.Tensor:
        if step == 0:
            return self.star.first_tokens(cond.pooled)
        x = self.star.scale_tokens(step, self.content(step, f_hat))
        return x.repeat(cond.pooled.shape[0] // f_hat.shape[0], 1, 1)

    def update_f_hat(self, step: int, f_hat: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Add a step's (B, p*p, Cvae) codes: upsample to full size, Phi, accumulate."""
        pn, side = self.patch_nums[step], self.patch_nums[-1]
        h = codes.transpose(1, 2).reshape(f_hat.shape[0], -1, pn, pn)
        if pn != side:
            h = F.interpolate(h, size=(side, side), mode="bicubic")
        return f_hat + self.vae.quantize.phi(step)(h)

    def step(self, step: int, state: StarState, cond: StarCondition, noise: torch.Tensor | torch.Generator,
             settings: SamplingSettings) -> tuple[StarState, StepOutput]:
        official = isinstance(noise, torch.Generator)
        text = replace(cond.cross, rows="row0" if official else "own")
        x = self.step_input(step, state.f_hat, cond)
        hidden, caches = self.star.blocks_forward(step, x, text, state.caches)
        logits = self.star.logits(hidden)
        t = guidance_weight(settings.cfg, step, self.num_steps)
        codebook = self.vae.quantize.embedding.weight
        rng = state.global_rng
        if step >= self.stable_from():
            if official and rng is None:
                rng = torch.Generator().manual_seed(noise.initial_seed())
            draws = Draws(generator=noise, global_rng=rng) if official else Draws(uniforms=noise)
            idx, codes = stable_scale(step, self.patch_nums[step], logits,
                                      lambda c: self.star.head_logits_of(step, c, hidden, cond.pooled),
                                      t, settings, draws, codebook, self.trace)
        else:
            idx, codes = sample_step(apply_guidance(logits, t), noise, settings, 0.0, codebook)
        f_hat = self.update_f_hat(step, state.f_hat, codes)
        return StarState(f_hat, caches, rng), StepOutput(idx, logits, hidden)

    # -- images ---------------------------------------------------------------------------------
    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Latent to image in [0, 1]."""
        return self.vae.decode(f_hat).add(1).mul(0.5)

    def pixels(self, f_hat: torch.Tensor) -> torch.Tensor:
        return self.to_uint8(self.decode(f_hat))

    def to_uint8(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8, truncated as upstream's scripts convert."""
        return images.mul(255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()

    def describe(self) -> dict:
        from dataclasses import asdict
        return {"architecture": {"transformer": asdict(self.cfg), "vae": asdict(self.pair.vae)}}
