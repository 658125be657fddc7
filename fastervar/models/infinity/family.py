"""The Infinity family's implementation of the scale-step protocol.

    state_{k+1} = step_k(state_k, cond, noise_k);   image = decode(f_hat_S)

`InfinityModel` pairs the Infinity transformer with its BSQ VAE for one image schedule (aspect
ratio x pixel budget). A step embeds the accumulated bit codes (interpolated down to the step's
grid), runs the blocks with their K/V caches, guides and samples one bit per logit pair, and adds
the bits' codes, interpolated up, to the latent. The step loop in `sampler.py` drives it exactly
as it drives the VAR family, and the accelerator recombines the same pieces.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn

from ...errors import FastervarError
from ...profile import ModelSpec
from ..flops import count_flops
from ..protocol import KV, StepOutput, StepState, Sublayer, slice_rows
from ..sampling import SamplingSettings, filter_logits
from ..text.prompts import TextBatch
from .bsq import BSQVAE, Decoder, accumulate, next_scale_input, scale_codes, trilinear
from .configs import spec_of
from .schedules import PN_STEPS, nearest_template, schedule, templates
from .transformer import TEXT_MAXLEN, Infinity, RopeTable, TextCondition, ada_layer_norm

# Infinity-2B's published sampling: constant guidance 3 on the logits, temperature 0.5, per-bit top-p.
DEFAULT_SETTINGS = SamplingSettings(cfg=3.0, top_k=900, top_p=0.97, tau=0.5)


def guide_bits(logits: torch.Tensor, settings: SamplingSettings, guidance: str) -> torch.Tensor:
    """(rows, n, 2*bits) raw logits to (B, n*bits, 2) tempered logit pairs: guided as upstream
    (`cfg*c + (1-cfg)*u`), or one half as it ran. The conditional half alone is combined with
    itself, `cfg*c + (1-cfg)*c`, which is what SkipVAR's code computes (c, up to rounding)."""
    logits = logits.mul(1 / settings.tau)
    if guidance == "cfg":
        b = logits.shape[0] // 2
        logits = settings.cfg * logits[:b] + (1 - settings.cfg) * logits[b:]
    elif guidance == "cond-only":
        logits = settings.cfg * logits + (1 - settings.cfg) * logits
    return logits.reshape(logits.shape[0], -1, 2)


def sample_bits(pairs: torch.Tensor, noise: torch.Tensor | torch.Generator,
                settings: SamplingSettings) -> torch.Tensor:
    """Bits (B, n) from (B, n, 2) logit pairs after upstream's top-k/top-p filter: one draw from a
    torch.Generator for the whole batch (official), or bit = u < p(1) per bit (portable)."""
    filtered = filter_logits(pairs, settings.top_k, settings.top_p)
    probs = filtered.softmax(dim=-1)
    if isinstance(noise, torch.Generator):
        return torch.multinomial(probs.view(-1, 2), 1, replacement=True, generator=noise).view(pairs.shape[:2])
    return (noise.to(probs.dtype) < probs[..., 1]).long()


class InfinityModel(nn.Module):
    """An Infinity transformer and its BSQ VAE, run one scale step at a time on one schedule."""

    family = "infinity"
    FACTORIZABLE = ("sa.mat_qkv", "sa.proj", "ca.mat_q", "ca.proj", "ffn.fc1", "ffn.fc2")

    def __init__(self, transformer: Infinity, vae: BSQVAE, h_div_w: float = 1.0, pn: str = "1M",
                 name: str = "infinity"):
        super().__init__()
        if transformer.cfg.bits != vae.cfg.token_bits:
            raise FastervarError(f"the transformer predicts {transformer.cfg.bits} bits per token but the VAE "
                                 f"codes {vae.cfg.token_bits}: they are not a pair")
        self.infinity = transformer
        self.vae = vae
        self.name = name
        self.weights_origin = "unset"
        self.use_schedule(h_div_w, pn)

    def use_schedule(self, h_div_w: float, pn: str) -> None:
        """Pick the aspect template nearest `h_div_w` and the pixel budget `pn`."""
        template = nearest_template(h_div_w)
        self.h_div_w, self.pn = template, pn
        self.schedule = schedule(template, pn)
        full = templates()[template][PN_STEPS["1M"] - 1]
        self.rope = RopeTable(self.infinity.cfg.head_dim, self.schedule, full)

    def at_aspect(self, h_div_w: float) -> InfinityModel:
        """The same weights (shared, not copied) on another aspect template of this budget."""
        other = InfinityModel(self.infinity, self.vae, h_div_w, self.pn, self.name)
        other.weights_origin = self.weights_origin
        return other.eval()

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

    @property
    def depth(self) -> int:
        return self.infinity.cfg.depth

    def spec(self) -> ModelSpec:
        """What profiles see: the pixel budget and its step count (steps are identified by index,
        so one profile serves every aspect template of the budget), on this aspect's grids."""
        h, w = self.latent_grid(self.num_steps - 1)
        d = self.vae.cfg.codebook_dim
        return spec_of(self.name, self.infinity.cfg, self.vae.cfg, self.pn, self.h_div_w,
                       decoder_flops=lambda: count_flops(lambda: Decoder(self.vae.cfg), (1, d, h, w)))

    def grid(self, step: int) -> tuple[int, int]:
        return tuple(self.schedule[step])

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

    @staticmethod
    def class_names() -> None:
        """A text-to-image model has prompts, not classes."""
        return None

    @staticmethod
    def default_settings() -> SamplingSettings:
        return DEFAULT_SETTINGS

    def runs_guidance(self, settings: SamplingSettings) -> bool:
        """Upstream runs the null-prompt half only when guidance changes something."""
        return settings.cfg != 1

    # -- the unit -------------------------------------------------------------------------------
    def condition(self, text: TextBatch, guided: bool = True) -> TextCondition:
        return self.infinity.condition(text.embeddings.to(self.device), text.lengths.to(self.device), guided)

    def is_guided(self, cond: TextCondition, batch: int) -> bool:
        return cond.guided

    # the linears an int8 bundle quantizes, by traced parameter name (see export/quantize.py): every
    # block's self- and cross-attention and FFN linears, the shared AdaLN projection, the step input
    INT8_LINEARS = (r"(^|\.)infinity\.(block_chunks\.\d+\.module\.\d+\.(sa\.(mat_qkv|proj)|ca\.(mat_q|mat_kv|proj)"
                    r"|ffn\.(fc1|fc2))|shared_ada_lin\.1|word_embed)\.weight$")

    def conditioning(self) -> dict:
        return {"kind": "text", "channels": self.infinity.cfg.text_channels, "max_length": TEXT_MAXLEN}

    @staticmethod
    def condition_inputs(tensors: tuple[torch.Tensor, ...]) -> TextBatch:
        """(embeddings, lengths), as `condition` takes them."""
        return TextBatch(*tensors)

    def example_condition(self, batch: int, text_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Seeded prompt embeddings of `text_length` tokens, the first prompt that long and the
        others shorter: tracing sees padding."""
        gen = torch.Generator().manual_seed(text_length)
        emb = torch.randn(batch, text_length, self.infinity.cfg.text_channels, generator=gen)
        lengths = (text_length - torch.arange(batch)).clamp(min=1)
        emb *= (torch.arange(text_length)[None, :] < lengths[:, None])[..., None]
        return emb, lengths

    def describe(self) -> dict:
        """What a bundle's manifest records of the model beyond its identity."""
        return {"architecture": {"transformer": asdict(self.infinity.cfg), "vae": asdict(self.vae.cfg)},
                "grids": [list(g) for g in self.schedule]}

    def drop_guidance(self, cond: TextCondition, batch: int, guidance: str) -> TextCondition:
        """The null-prompt half alone (null-text), or the prompts alone (cond-only) as SkipVAR's
        code prepares them: text and AdaLN gains from the prompts encoded by themselves, the head's
        condition from the guided batch's first half."""
        if guidance == "null-text":
            return TextCondition(*(slice_rows(t, batch, guidance) for t in (cond.text, cond.mask, cond.pooled,
                                                                             cond.gss)), guided=False,
                                 prompts=cond.prompts)
        alone = self.infinity.condition(*cond.prompts, guided=False)
        return TextCondition(alone.text, alone.mask, cond.pooled[:batch], alone.gss, guided=False,
                             prompts=cond.prompts)

    def init_state(self, batch: int) -> StepState:
        h, w = self.latent_grid(self.num_steps - 1)
        return StepState(f_hat=self.infinity.pos_start.new_zeros(batch, self.vae.cfg.codebook_dim, h, w))

    def content(self, step: int, f_hat: torch.Tensor) -> torch.Tensor:
        """The step's content: the latent interpolated to its grid, (B, h*w, bits)."""
        return next_scale_input(f_hat, self.schedule[step], self.vae.cfg.patch_size)

    def step_input(self, step: int, f_hat: torch.Tensor, cond: TextCondition) -> torch.Tensor:
        """Scale-k tokens with their level embedding: the pooled prompt at k=0, else the latent
        interpolated to the step's grid."""
        if step == 0:
            x = self.infinity.first_tokens(cond)
        else:
            x = self.infinity.word_embed(self.content(step, f_hat)).repeat(cond.text.shape[0] // f_hat.shape[0], 1, 1)
        return x + self.infinity.lvl_embed.weight[step]

    def block_context(self, step: int, cond: TextCondition) -> tuple[TextCondition, torch.Tensor]:
        return cond, self.rope.at(step, self.device)

    def blocks_forward(self, step: int, x: torch.Tensor, ctx: tuple[TextCondition, torch.Tensor],
                       caches: list[KV] | None, positions: torch.Tensor | None = None) -> tuple[torch.Tensor, list[KV]]:
        """All blocks on this step's tokens, or on the rows at `positions` (rows, r), whose rope
        is gathered there."""
        cond, rope = ctx
        if positions is not None:
            rope = rope[:, positions].unsqueeze(2)
        return self.infinity.blocks_forward(x, cond, rope, caches)

    def sublayers(self, block: int, ctx: tuple[TextCondition, torch.Tensor], cache: KV | None) -> list[Sublayer]:
        """Block `block` as its three residual branches: self-attention (rope gathered at the
        computed positions), cross-attention to the text, FFN."""
        cond, rope = ctx
        blk = self.infinity.blocks[block]
        gamma1, gamma2, scale1, scale2, shift1, shift2 = (blk.ada_gss + cond.gss).unbind(2)

        def attn(h: torch.Tensor, positions: torch.Tensor | None) -> tuple[torch.Tensor, KV]:
            r = rope if positions is None else rope[:, positions].unsqueeze(2)
            a, kv = blk.sa(h, r, cache)
            return a.mul_(gamma1), kv

        def cross(h: torch.Tensor, positions: torch.Tensor | None) -> tuple[torch.Tensor, None]:
            return blk.ca(h, cond.text, cond.mask).float(), None

        def ffn(h: torch.Tensor, positions: torch.Tensor | None) -> tuple[torch.Tensor, None]:
            return blk.ffn(h).mul(gamma2), None

        return [Sublayer("attn", lambda x: ada_layer_norm(x, scale1, shift1), attn),
                Sublayer("cross", blk.ca_norm, cross),
                Sublayer("ffn", lambda x: ada_layer_norm(x, scale2, shift2), ffn)]

    def logits(self, hidden: torch.Tensor, cond: TextCondition) -> torch.Tensor:
        return self.infinity.logits(hidden, cond)

    def sample(self, step: int, logits: torch.Tensor, noise: torch.Tensor | torch.Generator,
               settings: SamplingSettings, guidance: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Bits (B, n, bits), which are also what the latent update adds (as their codes)."""
        pairs = guide_bits(logits, settings, guidance)
        bits = sample_bits(pairs, noise, settings).view(pairs.shape[0], logits.shape[1], -1)
        return bits, bits

    def guidance_gap(self, step: int, logits: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
        """(B,) how far guidance moves each image's bit distributions at this step: the total
        variation between the guided and the conditional pair, averaged over bits (0 unguided)."""
        if not self.runs_guidance(settings):
            return logits.new_zeros(logits.shape[0])
        b = logits.shape[0] // 2
        guided = guide_bits(logits, settings, "cfg").softmax(-1)
        alone = guide_bits(logits[:b], settings, "none").softmax(-1)
        return 0.5 * (guided - alone).abs().sum(-1).mean(-1)

    def update_f_hat(self, step: int, f_hat: torch.Tensor, bits: torch.Tensor,
                     kept: torch.Tensor | None = None) -> torch.Tensor:
        """Add a step's (B, h*w, bits) bits to the latent as codes, interpolated up to full size;
        with `kept` (B, h*w) only those positions add theirs, the others nothing."""
        bits = bits.view(bits.shape[0], self.tokens_at(step), -1)
        codes = scale_codes(bits, self.schedule[step], self.vae.cfg.patch_size)
        if kept is not None:
            mask = kept.to(codes.dtype)[..., None].expand(bits.shape)
            codes = codes * scale_codes(mask, self.schedule[step], self.vae.cfg.patch_size).ne(0)
        return accumulate(f_hat, codes, tuple(f_hat.shape[-2:]))

    def step(self, step: int, state: StepState, cond: TextCondition, noise: torch.Tensor | torch.Generator,
             settings: SamplingSettings) -> tuple[StepState, StepOutput]:
        x = self.step_input(step, state.f_hat, cond)
        hidden, caches = self.blocks_forward(step, x, self.block_context(step, cond), state.caches)
        logits = self.logits(hidden, cond)
        bits, codes = self.sample(step, logits, noise, settings, "cfg" if cond.guided else "none")
        f_hat = self.update_f_hat(step, state.f_hat, codes)
        return StepState(f_hat, caches), StepOutput(bits.flatten(1), logits, hidden)

    def teacher_forced_logits(self, cond: TextCondition, bits: list[torch.Tensor]) -> torch.Tensor:
        """(B', L, 2*bits) logits of every step from given bits (B, h*w*bits) per step, in one
        block-causal pass."""
        f_hat = self.init_state(cond.batch).f_hat
        xs = [self.step_input(0, f_hat, cond)]
        for k in range(self.num_steps - 1):
            f_hat = self.update_f_hat(k, f_hat, bits[k])
            xs.append(self.step_input(k + 1, f_hat, cond))
        ropes = [self.rope.at(k, f_hat.device) for k in range(self.num_steps)]
        return self.infinity.logits(self.infinity.teacher_forward(xs, cond, ropes), cond)

    # -- low-rank factors -----------------------------------------------------------------------
    def factor_slots(self, block: int) -> dict[str, tuple[nn.Module, str]]:
        """Each factorizable linear of a block: the module whose `factors` dict takes it, and its key."""
        blk = self.infinity.blocks[block]
        return {name: (blk.get_submodule(name.split(".")[0]), name.split(".")[1]) for name in self.FACTORIZABLE}

    def linear_shape(self, name: str) -> tuple[int, int]:
        weight = self.infinity.blocks[0].get_submodule(name).weight
        return weight.shape[1], weight.shape[0]

    # -- images ---------------------------------------------------------------------------------
    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Latent to image in [0, 1]."""
        return self.vae.decode(f_hat).add(1).div(2)

    def preview(self, f_hat: torch.Tensor, step: int) -> torch.Tensor:
        """A small image of the latent so far, in [-1, 1]: resampled to step `step`'s latent grid
        (trilinearly, as upstream resamples) and decoded, as SkipVAR's decision previews it."""
        return self.vae.decode(trilinear(f_hat, self.latent_grid(step)))

    def select_rows(self, cond: TextCondition, rows: list[int], batch: int) -> TextCondition:
        """The condition of images `rows` of a batch of `batch` (both halves when guided)."""
        index = torch.tensor(rows + ([r + batch for r in rows] if cond.guided else []), device=cond.text.device)
        prompts = None if cond.prompts is None else tuple(t[torch.tensor(rows)] for t in cond.prompts)
        return TextCondition(cond.text[index], cond.mask[index], cond.pooled[index], cond.gss[index], cond.guided,
                             prompts)

    def pixels(self, f_hat: torch.Tensor) -> torch.Tensor:
        return self.to_uint8(self.decode(f_hat))

    def to_uint8(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 RGB, truncated as upstream converts (it then flips to BGR for OpenCV)."""
        return images.permute(0, 2, 3, 1).mul(255).to(torch.uint8)
