"""The Infinity family's implementation of the scale-step protocol.

    state_{k+1} = step_k(state_k, cond, noise_k);   image = decode(f_hat_S)

`InfinityModel` pairs the Infinity transformer with its BSQ VAE for one image schedule (aspect
ratio x pixel budget). A step embeds the accumulated bit codes (interpolated down to the step's
grid), runs the blocks with their K/V caches, guides and samples one bit per logit pair, and adds
the bits' codes, interpolated up, to the latent. The step loop in `sampler.py` drives it exactly
as it drives the VAR family.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...errors import FastervarError
from ..protocol import StepOutput, StepState
from ..sampling import SAMPLERS, filter_logits
from ..text.prompts import TextBatch
from .bsq import BSQVAE, accumulate, next_scale_input, scale_codes
from .schedules import PN_STEPS, nearest_template, schedule, templates
from .transformer import Infinity, RopeTable, TextCondition


@dataclass(frozen=True)
class BitSamplingSettings:
    """Infinity's sampling: temperature, constant guidance on the logits and per-bit filtering;
    the defaults are Infinity-2B's published ones."""

    cfg: float = 3.0
    tau: float = 0.5
    top_k: int = 900
    top_p: float = 0.97
    sampler: str = "portable"

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise FastervarError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if not self.tau > 0:
            raise FastervarError(f"tau must be > 0, got {self.tau}")
        if self.cfg < 0 or self.top_k < 0 or not 0.0 <= self.top_p <= 1.0:
            raise FastervarError(f"need cfg >= 0, top_k >= 0 and 0 <= top_p <= 1; got {self.cfg}, "
                                 f"{self.top_k}, {self.top_p}")

    @property
    def guided(self) -> bool:
        """Upstream runs the null-prompt half only when guidance changes something."""
        return self.cfg != 1


def guide_bits(logits: torch.Tensor, settings: BitSamplingSettings, guided: bool) -> torch.Tensor:
    """(B', n, 2*bits) raw logits to (B, n*bits, 2) tempered, guided logit pairs."""
    logits = logits.mul(1 / settings.tau)
    if guided:
        b = logits.shape[0] // 2
        logits = settings.cfg * logits[:b] + (1 - settings.cfg) * logits[b:]
    return logits.reshape(logits.shape[0], -1, 2)


def sample_bits(pairs: torch.Tensor, noise: torch.Tensor | torch.Generator,
                settings: BitSamplingSettings) -> torch.Tensor:
    """Bits (B, n) from (B, n, 2) logit pairs after upstream's top-k/top-p filter: one draw from a
    torch.Generator for the whole batch (official), or bit = u < p(1) per bit (portable)."""
    filtered = filter_logits(pairs, settings.top_k, settings.top_p)
    probs = filtered.softmax(dim=-1)
    if isinstance(noise, torch.Generator):
        return torch.multinomial(probs.view(-1, 2), 1, replacement=True, generator=noise).view(pairs.shape[:2])
    return (noise.to(probs.dtype) < probs[..., 1]).long()


class InfinityModel(nn.Module):
    """An Infinity transformer and its BSQ VAE, run one scale step at a time on one schedule."""

    def __init__(self, transformer: Infinity, vae: BSQVAE, h_div_w: float = 1.0, pn: str = "1M"):
        super().__init__()
        if transformer.cfg.bits != vae.cfg.token_bits:
            raise FastervarError(f"the transformer predicts {transformer.cfg.bits} bits per token but the VAE "
                                 f"codes {vae.cfg.token_bits}: they are not a pair")
        self.infinity = transformer
        self.vae = vae
        self.weights_origin = "unset"
        self.use_schedule(h_div_w, pn)

    def use_schedule(self, h_div_w: float, pn: str) -> None:
        """Pick the aspect template nearest `h_div_w` and the pixel budget `pn`."""
        template = nearest_template(h_div_w)
        self.h_div_w, self.pn = template, pn
        self.schedule = schedule(template, pn)
        full = templates()[template][PN_STEPS["1M"] - 1]
        self.rope = RopeTable(self.infinity.cfg.head_dim, self.schedule, full)

    @property
    def device(self) -> torch.device:
        return self.infinity.head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.infinity.head.weight.dtype

    def state_parts(self) -> tuple[nn.Module, ...]:
        """The weights as the released files hold them: transformer, then BSQ VAE."""
        return self.infinity, self.vae

    @property
    def num_steps(self) -> int:
        return len(self.schedule)

    def tokens_at(self, step: int) -> int:
        h, w = self.schedule[step]
        return h * w

    def noise_at(self, step: int) -> int:
        """Uniforms a step consumes per image: one per bit."""
        return self.tokens_at(step) * self.infinity.cfg.bits

    def latent_grid(self, step: int) -> tuple[int, int]:
        """The VAE latent's (h, w) at a step: twice the token grid when tokens are 2x2-patchified."""
        h, w = self.schedule[step]
        return h * self.vae.cfg.patch_size, w * self.vae.cfg.patch_size

    # -- the unit -------------------------------------------------------------------------------
    def condition(self, text: TextBatch, guided: bool = True) -> TextCondition:
        return self.infinity.condition(text.embeddings.to(self.device), text.lengths.to(self.device), guided)

    def init_state(self, batch: int) -> StepState:
        h, w = self.latent_grid(self.num_steps - 1)
        return StepState(f_hat=self.infinity.pos_start.new_zeros(batch, self.vae.cfg.codebook_dim, h, w))

    def step_input(self, step: int, f_hat: torch.Tensor, cond: TextCondition) -> torch.Tensor:
        """Scale-k tokens: the pooled prompt at k=0, else the latent interpolated to the step's grid."""
        if step == 0:
            return self.infinity.first_tokens(cond)
        x = self.infinity.word_embed(next_scale_input(f_hat, self.schedule[step], self.vae.cfg.patch_size))
        return x.repeat(2 if cond.guided else 1, 1, 1)

    def update_f_hat(self, step: int, f_hat: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        """Add a step's (B, h*w*bits) bits to the latent as codes, interpolated up to full size."""
        codes = scale_codes(bits.view(bits.shape[0], self.tokens_at(step), -1), self.schedule[step],
                            self.vae.cfg.patch_size)
        return accumulate(f_hat, codes, tuple(f_hat.shape[-2:]))

    def step(self, step: int, state: StepState, cond: TextCondition, noise: torch.Tensor | torch.Generator,
             settings: BitSamplingSettings) -> tuple[StepState, StepOutput]:
        x = self.step_input(step, state.f_hat, cond)
        hidden, caches = self.infinity.blocks_forward(x, step, cond, self.rope.at(step, x.device), state.caches)
        logits = self.infinity.logits(hidden, cond)
        bits = sample_bits(guide_bits(logits, settings, cond.guided), noise, settings)
        f_hat = self.update_f_hat(step, state.f_hat, bits)
        return StepState(f_hat, caches), StepOutput(bits, logits, hidden)

    def teacher_forced_logits(self, cond: TextCondition, bits: list[torch.Tensor]) -> torch.Tensor:
        """(B', L, 2*bits) logits of every step from given bits (B, h*w*bits) per step, in one
        block-causal pass."""
        f_hat = self.init_state(cond.batch).f_hat
        xs = [self.infinity.first_tokens(cond)]
        for k in range(self.num_steps - 1):
            f_hat = self.update_f_hat(k, f_hat, bits[k])
            xs.append(self.step_input(k + 1, f_hat, cond))
        ropes = [self.rope.at(k, f_hat.device) for k in range(self.num_steps)]
        return self.infinity.logits(self.infinity.teacher_forward(xs, cond, ropes), cond)

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Latent to image in [0, 1]."""
        return self.vae.decode(f_hat).add(1).div(2)

    def pixels(self, f_hat: torch.Tensor) -> torch.Tensor:
        return self.to_uint8(self.decode(f_hat))

    def to_uint8(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 RGB, truncated as upstream converts (it then flips to BGR for OpenCV)."""
        return images.permute(0, 2, 3, 1).mul(255).to(torch.uint8)
