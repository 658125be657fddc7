"""The VAR family's implementation of the scale-step protocol.

`VARModel` pairs a VAR transformer with its VQVAE and exposes the scale step, split into the pieces
an accelerator replaces (input tokens, transformer, guidance, sampling, f_hat update). The
reference sampler, the accelerator and the exporter all call these same pieces.
"""

from __future__ import annotations

import torch
from torch import nn

from ..protocol import StepOutput, StepState
from ..resample import resample
from .configs import ModelConfig, validate
from .sampling import SamplingSettings, apply_guidance, guidance_weight, sample_step
from .transformer import KV, VAR
from .vqvae import VQVAE


class VARModel(nn.Module):
    """A VAR transformer and the VQVAE it was trained against, run one scale step at a time."""

    def __init__(self, cfg: ModelConfig, batch_invariant: bool = False):
        super().__init__()
        validate(cfg)
        self.cfg = cfg
        # Convolution kernels pick their algorithm by batch size, so the same latent can decode to
        # images one uint8 level apart in different batches. Running the conv parts image by image
        # makes an image bit-identical whatever its batch: a parity check's opt-in, never the
        # timed path (upstream, and a server, convolve the whole batch at once).
        self.batch_invariant = batch_invariant
        self.weights_origin = "unset"          # random, checkpoint or shipped: the loaders say which
        self.vae = VQVAE(cfg.vae, cfg.var.patch_nums)
        self.var = VAR(cfg.var, cfg.vae.z_channels, cfg.vae.vocab_size)

    @property
    def patch_nums(self) -> tuple[int, ...]:
        return self.var.patch_nums

    @property
    def num_steps(self) -> int:
        return len(self.patch_nums)

    @property
    def device(self) -> torch.device:
        return self.var.head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.var.head.weight.dtype

    def state_parts(self) -> tuple[nn.Module, ...]:
        """The weights as the released files hold them: transformer, then VQVAE."""
        return self.var, self.vae

    def tokens_at(self, step: int) -> int:
        return self.patch_nums[step] ** 2

    def noise_at(self, step: int) -> int:
        """Uniforms a step consumes per image (portable sampler): one per token."""
        return self.tokens_at(step)

    # -- the unit -------------------------------------------------------------------------------
    def condition(self, labels: torch.Tensor, guided: bool = True) -> torch.Tensor:
        """Class embeddings for the batch, followed by the null class when guidance runs."""
        if guided:
            labels = torch.cat((labels, torch.full_like(labels, self.var.num_classes)))
        return self.var.condition(labels)

    def init_state(self, batch: int) -> StepState:
        full = self.patch_nums[-1]
        w = self.var.pos_start
        return StepState(f_hat=w.new_zeros(batch, self.cfg.vae.z_channels, full, full))

    def step_input(self, step: int, f_hat: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Scale-k tokens: SOS from the condition at k=0, else the embedded downsampled f_hat."""
        if step == 0:
            return self.var.first_tokens(cond)
        pn = self.patch_nums[step]
        feats = resample(f_hat, pn, "area").flatten(2).transpose(1, 2)
        x = self.var.scale_tokens(step, feats)
        return x.repeat(cond.shape[0] // f_hat.shape[0], 1, 1)

    def transformer(self, x: torch.Tensor, cond: torch.Tensor,
                    caches: list[KV] | None) -> tuple[torch.Tensor, list[KV]]:
        """All blocks on this step's tokens, attending to the cached coarser scales."""
        block_cond = self.var.block_condition(cond)
        new: list[KV] = []
        for i, blk in enumerate(self.var.blocks):
            x, kv = blk(x, block_cond, None, None if caches is None else caches[i])
            new.append(kv)
        return x, new

    def update_f_hat(self, step: int, f_hat: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Add a step's (B, p*p, Cvae) codes to the latent: upsample, Phi, accumulate."""
        b, pn = f_hat.shape[0], self.patch_nums[step]
        h = h.transpose(1, 2).reshape(b, -1, pn, pn)
        return f_hat + self._per_image(lambda x: self.vae.quantize.upsampled_residual(step, x), h)

    def step(self, step: int, state: StepState, cond: torch.Tensor,
             noise: torch.Tensor | torch.Generator, settings: SamplingSettings) -> tuple[StepState, StepOutput]:
        """One full scale step of the baseline: tokens in, f_hat and caches out."""
        guided = cond.shape[0] != state.f_hat.shape[0]
        x = self.step_input(step, state.f_hat, cond)
        hidden, caches = self.transformer(x, cond, state.caches)
        logits = self.var.logits(hidden, cond)
        ratio = step / (self.num_steps - 1)
        guided_logits = apply_guidance(logits, guidance_weight(settings.cfg, step, self.num_steps)) \
            if guided else logits
        idx, h = sample_step(guided_logits, noise, settings, ratio, self.vae.quantize.embedding.weight)
        f_hat = self.update_f_hat(step, state.f_hat, h)
        return StepState(f_hat, caches), StepOutput(idx, logits, hidden)

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Latent to image in [0, 1]."""
        return self._per_image(self.vae.decode, f_hat).add(1).mul(0.5)

    def pixels(self, f_hat: torch.Tensor) -> torch.Tensor:
        return self.to_uint8(self.decode(f_hat))

    def to_uint8(self, images: torch.Tensor) -> torch.Tensor:
        """VAR's images round to uint8, as its demos do."""
        return to_uint8(images)

    def _per_image(self, fn, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        if not self.batch_invariant or x.shape[0] == 1:
            return fn(x)
        return torch.cat([fn(x[i:i + 1]) for i in range(x.shape[0])])

    # -- teacher forcing ------------------------------------------------------------------------
    def teacher_inputs(self, idx_list: list[torch.Tensor]) -> torch.Tensor:
        """(B, L-1, Cvae) inputs of steps 1..S-1 from ground-truth token pyramids."""
        fhats = self.vae.quantize.indices_to_fhat(idx_list[:-1])
        feats = [resample(f, pn, "area").flatten(2).transpose(1, 2)
                 for f, pn in zip(fhats, self.patch_nums[1:])]
        return torch.cat(feats, dim=1)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] to (B, H, W, 3) uint8, rounding as the upstream demos do."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
