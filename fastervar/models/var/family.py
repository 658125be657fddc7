"""The VAR family's implementation of the scale-step protocol.

`VARModel` pairs a VAR transformer with its VQVAE and exposes the scale step, split into the pieces
an accelerator replaces (input tokens, transformer, guidance, sampling, f_hat update). The
reference sampler, the accelerator and the exporter all call these same pieces.
"""

from __future__ import annotations

import torch
from torch import nn

from ...profile import ModelSpec
from ..protocol import KV, StepOutput, StepState, Sublayer, slice_rows
from ..resample import resample
from .configs import ModelConfig, validate
from .sampling import SamplingSettings, apply_guidance, guidance_weight, sample_step
from .transformer import VAR
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

    # -- what a profile is made for --------------------------------------------------------------
    family = "var"

    @property
    def depth(self) -> int:
        return self.cfg.var.depth

    def spec(self) -> ModelSpec:
        return self.cfg.spec()

    def schedule_identity(self) -> dict:
        """The model and schedule a profile for it names."""
        return {"family": self.family, "config": self.cfg.name, "patch_nums": list(self.patch_nums)}

    def grid(self, step: int) -> tuple[int, int]:
        return self.patch_nums[step], self.patch_nums[step]

    def class_names(self) -> list[str] | None:
        """What each class label depicts, for prompting CLIP: ImageNet's 1000 classes for the released
        models, Fashion-MNIST's for the shipped ones; None for a model trained on other data."""
        if self.var.num_classes == 1000:
            from importlib.resources import files
            return (files("fastervar") / "assets" / "imagenet_classes.txt").read_text().splitlines()
        if self.cfg.name.startswith("fashion-"):
            from .configs import FASHION_MNIST_CLASSES
            return list(FASHION_MNIST_CLASSES)
        return None

    @staticmethod
    def default_settings() -> SamplingSettings:
        """Upstream VAR's FID recipe."""
        return SamplingSettings()

    def runs_guidance(self, settings: SamplingSettings) -> bool:
        """Upstream VAR always runs the null-class half (its guidance ramps up from 0)."""
        return True

    # -- the unit -------------------------------------------------------------------------------
    def condition(self, labels: torch.Tensor, guided: bool = True) -> torch.Tensor:
        """Class embeddings for the batch, followed by the null class when guidance runs."""
        if guided:
            labels = torch.cat((labels, torch.full_like(labels, self.var.num_classes)))
        return self.var.condition(labels)

    def is_guided(self, cond: torch.Tensor, batch: int) -> bool:
        return cond.shape[0] != batch

    # the linears an int8 bundle quantizes, by traced parameter name (see export/quantize.py)
    INT8_LINEARS = (r"(^|\.)var\.(blocks\.\d+\.(attn\.mat_qkv|attn\.proj|ffn\.fc1|ffn\.fc2|ada_lin\.1)"
                    r"|word_embed)\.weight$")

    def conditioning(self) -> dict:
        return {"kind": "class", "num_classes": self.var.num_classes}

    @staticmethod
    def condition_inputs(tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The labels, as `condition` takes them."""
        return tensors[0]

    def example_condition(self, batch: int, text_length: int) -> tuple[torch.Tensor]:
        return (torch.arange(batch) % self.var.num_classes,)

    def describe(self) -> dict:
        """What a bundle's manifest records of the model beyond its identity."""
        return {"architecture": self.cfg.to_dict(), "num_classes": self.var.num_classes,
                "vocab_size": self.cfg.vae.vocab_size, "patch_nums": list(self.patch_nums)}

    def drop_guidance(self, cond: torch.Tensor, batch: int, guidance: str) -> torch.Tensor:
        """The class half (cond-only) or the null-class half (null-text) of a guided condition."""
        return slice_rows(cond, batch, guidance)

    def init_state(self, batch: int) -> StepState:
        full = self.patch_nums[-1]
        w = self.var.pos_start
        return StepState(f_hat=w.new_zeros(batch, self.cfg.vae.z_channels, full, full))

    def content(self, step: int, f_hat: torch.Tensor) -> torch.Tensor:
        """The step's content: f_hat area-downsampled to its grid, (B, p*p, Cvae)."""
        return resample(f_hat, self.patch_nums[step], "area").flatten(2).transpose(1, 2)

    def step_input(self, step: int, f_hat: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Scale-k tokens: SOS from the condition at k=0, else the embedded downsampled f_hat."""
        if step == 0:
            return self.var.first_tokens(cond)
        x = self.var.scale_tokens(step, self.content(step, f_hat))
        return x.repeat(cond.shape[0] // f_hat.shape[0], 1, 1)

    def block_context(self, step: int, cond: torch.Tensor) -> torch.Tensor:
        """What the blocks are modulated by: the condition, or its shared projection (d36)."""
        return self.var.block_condition(cond)

    def blocks_forward(self, step: int, x: torch.Tensor, ctx: torch.Tensor, caches: list[KV] | None,
                       positions: torch.Tensor | None = None) -> tuple[torch.Tensor, list[KV]]:
        """All blocks on this step's tokens (or the rows at `positions`: VAR's positions are in the
        tokens already), attending to the cached coarser scales."""
        new: list[KV] = []
        for i, blk in enumerate(self.var.blocks):
            x, kv = blk(x, ctx, None, None if caches is None else caches[i])
            new.append(kv)
        return x, new

    def sublayers(self, block: int, ctx: torch.Tensor, cache: KV | None) -> list[Sublayer]:
        """Block `block` as its two residual branches, self-attention and FFN (no position input:
        VAR's positions are in the tokens)."""
        blk = self.var.blocks[block]
        mod = blk.modulation(ctx)

        def attn(h: torch.Tensor, positions: torch.Tensor | None) -> tuple[torch.Tensor, KV]:
            a, kv = blk.attn(h, None, cache)
            return a.mul(mod[0]), kv

        def ffn(h: torch.Tensor, positions: torch.Tensor | None) -> tuple[torch.Tensor, None]:
            return blk.ffn(h).mul(mod[1]), None

        return [Sublayer("attn", lambda x: blk.attn_input(x, mod), attn),
                Sublayer("ffn", lambda x: blk.ffn_input(x, mod), ffn)]

    def logits(self, hidden: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.var.logits(hidden, cond)

    def sample(self, step: int, logits: torch.Tensor, noise: torch.Tensor | torch.Generator,
               settings: SamplingSettings, guidance: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, n, 1) and their codes (B, n, Cvae): guided logits on VAR's linear ramp, or the
        one half the step ran."""
        if guidance == "cfg":
            logits = apply_guidance(logits, guidance_weight(settings.cfg, step, self.num_steps))
        idx, h = sample_step(logits, noise, settings, step / (self.num_steps - 1), self.vae.quantize.embedding.weight)
        return idx.unsqueeze(-1), h

    def guidance_gap(self, step: int, logits: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
        """(B,) how far guidance moves each image's token distributions at this step: the total
        variation between the guided and the conditional distribution, averaged over tokens."""
        b = logits.shape[0] // 2
        guided = apply_guidance(logits, guidance_weight(settings.cfg, step, self.num_steps))
        return 0.5 * (guided.softmax(-1) - logits[:b].softmax(-1)).abs().sum(-1).mean(-1)

    def update_f_hat(self, step: int, f_hat: torch.Tensor, h: torch.Tensor,
                     kept: torch.Tensor | None = None) -> torch.Tensor:
        """Add a step's (B, p*p, Cvae) codes to the latent: upsample, Phi, accumulate; with `kept`
        (B, p*p), only those positions add theirs."""
        if kept is not None:
            h = h * kept.to(h.dtype).unsqueeze(-1)
        b, pn = f_hat.shape[0], self.patch_nums[step]
        h = h.transpose(1, 2).reshape(b, -1, pn, pn)
        return f_hat + self._per_image(lambda x: self.vae.quantize.upsampled_residual(step, x), h)

    def step(self, step: int, state: StepState, cond: torch.Tensor,
             noise: torch.Tensor | torch.Generator, settings: SamplingSettings) -> tuple[StepState, StepOutput]:
        """One full scale step of the baseline: tokens in, f_hat and caches out."""
        guided = cond.shape[0] != state.f_hat.shape[0]
        x = self.step_input(step, state.f_hat, cond)
        hidden, caches = self.blocks_forward(step, x, self.block_context(step, cond), state.caches)
        logits = self.logits(hidden, cond)
        idx, h = self.sample(step, logits, noise, settings, "cfg" if guided else "none")
        f_hat = self.update_f_hat(step, state.f_hat, h)
        return StepState(f_hat, caches), StepOutput(idx.flatten(1), logits, hidden)

    # -- low-rank factors -----------------------------------------------------------------------
    FACTORIZABLE = ("attn.mat_qkv", "attn.proj", "ffn.fc1", "ffn.fc2")

    def factor_slots(self, block: int) -> dict[str, tuple[nn.Module, str]]:
        """Each factorizable linear of a block: the module whose `factors` dict takes it, and its key."""
        blk = self.var.blocks[block]
        return {name: (blk.get_submodule(name.split(".")[0]), name.split(".")[1]) for name in self.FACTORIZABLE}

    def linear_shape(self, name: str) -> tuple[int, int]:
        """(in, out) features of a factorizable linear."""
        weight = self.var.blocks[0].get_submodule(name).weight
        return weight.shape[1], weight.shape[0]

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Latent to image in [0, 1]."""
        return self._per_image(self.vae.decode, f_hat).add(1).mul(0.5)

    def preview(self, f_hat: torch.Tensor, step: int) -> torch.Tensor:
        """A small image of the latent so far, in [-1, 1]: area-resampled to step `step`'s grid
        and decoded."""
        return self._per_image(self.vae.decode, resample(f_hat, self.patch_nums[step], "area"))

    def select_rows(self, cond: torch.Tensor, rows: list[int], batch: int) -> torch.Tensor:
        """The condition of images `rows` of a batch of `batch` (both halves when guided)."""
        index = rows + ([r + batch for r in rows] if cond.shape[0] != batch else [])
        return cond[torch.tensor(index, device=cond.device)]

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
