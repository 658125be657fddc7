"""A model's scale steps as a profile says to run them.

Per step, the plan is `full` (the baseline step), `skip` (not run: f_hat keeps the upsampled
accumulation), or `reduce`: the transformer runs on r selected tokens, appends only their K/V to
the cache, and every other position is restored from the cached output of an earlier full step,
upsampled — either once after the last block (`block`, StageVAR) or inside the blocks for each
sublayer's branch (`layer`, FastVAR: optionally only in a block range, with the tokens rescored
from the residual stream before every sublayer, per row). Guidance can be dropped (one batch branch, the KV cache
sliced to its conditional half) and chosen linear layers factorized. The identity profile runs
exactly `VARModel.step`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..models.protocol import StepOutput, StepState
from ..models.resample import resample
from ..models.sampling import SamplingSettings
from ..models.var.family import VARModel
from ..models.var.sampling import apply_guidance, guidance_weight, sample_step
from ..models.var.transformer import KV
from ..profile import Profile, StepPlan, check_against
from .factorize import factorize
from .selectors import pivotal, select


@dataclass
class AccelState(StepState):
    """The baseline state plus the outputs cached for later restoration, keyed by step."""

    hidden: dict[int, torch.Tensor] = field(default_factory=dict)             # block level
    branches: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)  # layer level


def _half(t: torch.Tensor, b: int) -> torch.Tensor:
    return t[:b] if t.shape[0] != b else t


class AcceleratedModel:
    """Runs a VARModel's steps under a Profile; same protocol as VARModel (init_state/step/decode)."""

    def __init__(self, model: VARModel, profile: Profile, input_cov: dict | None = None):
        check_against(profile, model.cfg)
        self.model = model
        self.profile = profile
        self.num_steps = model.num_steps
        self.patch_nums = model.patch_nums
        self.cfg = model.cfg
        self._factors = self._build_factors(input_cov or {})
        needed_block = {p.restore_from for p in profile.steps if p.mode == "reduce" and p.restore_level == "block"}
        needed_layer = {p.restore_from for p in profile.steps if p.mode == "reduce" and p.restore_level == "layer"}
        self._keep_hidden, self._keep_branches = needed_block, needed_layer

    @torch.no_grad()
    def _build_factors(self, input_cov: dict) -> dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor]]:
        """Factor every (step, block, layer) the profile asks for; equal ranks share one factorization."""
        out: dict = {}
        cache: dict = {}
        for k, plan in enumerate(self.profile.steps):
            for name, rank in plan.ranks.items():
                for i, blk in enumerate(self.model.var.blocks):
                    key = (i, name, rank)
                    if key not in cache:
                        mod = blk.get_submodule(name)
                        cache[key] = factorize(mod.weight, rank, input_cov.get((i, name)))
                    out[(k, i, name)] = cache[key]
        return out

    def cast_(self, dtype: torch.dtype) -> AcceleratedModel:
        """Move the model and the factorized weights to `dtype` (export at half precision)."""
        self.model.to(dtype)
        self._factors = {k: tuple(t.to(dtype) for t in f) for k, f in self._factors.items()}
        return self

    @property
    def var(self):
        return self.model.var

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def tokens_at(self, step: int) -> int:
        return self.model.tokens_at(step)

    def noise_at(self, step: int) -> int:
        return self.model.noise_at(step)

    def init_state(self, batch: int) -> AccelState:
        return AccelState(f_hat=self.model.init_state(batch).f_hat)

    def condition(self, labels: torch.Tensor, guided: bool = True) -> torch.Tensor:
        return self.model.condition(labels, guided=guided)

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        return self.model.decode(f_hat)

    def pixels(self, f_hat: torch.Tensor) -> torch.Tensor:
        return self.to_uint8(self.decode(f_hat))

    def to_uint8(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.to_uint8(images)

    def _install(self, step: int) -> None:
        for i, blk in enumerate(self.model.var.blocks):
            for owner, short in ((blk.attn, "mat_qkv"), (blk.attn, "proj"), (blk.ffn, "fc1"), (blk.ffn, "fc2")):
                full = ("attn." if owner is blk.attn else "ffn.") + short
                f = self._factors.get((step, i, full))
                if f is None:
                    owner.factors.pop(short, None)
                else:
                    owner.factors[short] = f

    def _upsample_tokens(self, t: torch.Tensor, src: int, dst: int, mode: str) -> torch.Tensor:
        """(B, src*src, C) cached outputs to (B, dst*dst, C) on the finer grid."""
        b, _, c = t.shape
        grid = t.transpose(1, 2).reshape(b, c, src, src)
        return resample(grid, dst, mode).flatten(2).transpose(1, 2)

    @torch.no_grad()
    def step(self, k: int, state: AccelState, cond: torch.Tensor, noise: torch.Tensor | torch.Generator,
             settings: SamplingSettings) -> tuple[AccelState, StepOutput | None]:
        plan = self.profile.steps[k]
        m = self.model
        b = state.f_hat.shape[0]
        if plan.mode == "skip":
            return state, None
        if not plan.cfg:
            cond = cond[:b]
            if state.caches is not None:
                state.caches = [(kk[:b], vv[:b]) for kk, vv in state.caches]
        self._install(k)
        try:
            x = m.step_input(k, state.f_hat, cond)
            if plan.mode == "reduce" and plan.restore_level == "latent":
                return self._latent_step(k, plan, x, cond, state, noise, settings)
            if plan.mode == "full":
                hidden, caches, branches = self._full(x, cond, state.caches, k in self._keep_branches)
            else:
                hidden, caches, branches = self._reduced(k, plan, x, cond, state)
        finally:
            self._install(-1)
        if k in self._keep_hidden:
            state.hidden[k] = hidden
        if branches is not None:
            state.branches[k] = branches
        logits = m.var.logits(hidden, cond)
        guided = logits.shape[0] != b
        g = apply_guidance(logits, guidance_weight(settings.cfg, k, self.num_steps)) if guided else logits
        idx, h = sample_step(g, noise, settings, k / (self.num_steps - 1), m.vae.quantize.embedding.weight)
        state.f_hat = m.update_f_hat(k, state.f_hat, h)
        state.caches = caches
        return state, StepOutput(idx, logits, hidden)

    def _latent_step(self, k: int, plan: StepPlan, x: torch.Tensor, cond: torch.Tensor, state: AccelState,
                     noise: torch.Tensor | torch.Generator, settings: SamplingSettings):
        """Predict and add residual codes at the kept positions only; the others keep the latent
        accumulated so far (no residual), which is exactly what a skipped step leaves everywhere."""
        m = self.model
        b = state.f_hat.shape[0]
        idx = self._select(k, plan, state.f_hat)
        rows = x.shape[0] // b
        gather = idx.repeat(rows, 1).unsqueeze(-1).expand(-1, -1, x.shape[-1])
        hidden, caches = m.transformer(x.gather(1, gather), cond, state.caches)
        logits = m.var.logits(hidden, cond)
        g = apply_guidance(logits, guidance_weight(settings.cfg, k, self.num_steps)) if rows == 2 else logits
        if isinstance(noise, torch.Tensor):
            noise = noise.gather(1, idx)
        kept, h_kept = sample_step(g, noise, settings, k / (self.num_steps - 1), m.vae.quantize.embedding.weight)
        n = self.model.tokens_at(k)
        h = h_kept.new_zeros(b, n, h_kept.shape[-1]).scatter(1, idx.unsqueeze(-1).expand_as(h_kept), h_kept)
        tokens = kept.new_full((b, n), -1).scatter(1, idx, kept)
        state.f_hat = m.update_f_hat(k, state.f_hat, h)
        state.caches = caches
        return state, StepOutput(tokens, logits)

    def _select(self, k: int, plan: StepPlan, f_hat: torch.Tensor) -> torch.Tensor:
        pn = self.patch_nums[k]
        feats = resample(f_hat, pn, "area").flatten(2).transpose(1, 2)
        return select(plan.selector, feats, plan.keep, pn, k, plan.relevance)

    def _full(self, x: torch.Tensor, cond: torch.Tensor, caches: list[KV] | None, record: bool):
        if not record:
            hidden, new = self.model.transformer(x, cond, caches)
            return hidden, new, None
        return self._layerwise(x, cond, caches)

    def _reduced(self, k: int, plan: StepPlan, x: torch.Tensor, cond: torch.Tensor, state: AccelState):
        m = self.model
        b = state.f_hat.shape[0]
        pn, src = self.patch_nums[k], self.patch_nums[plan.restore_from]
        gather = None
        if plan.selector != "pivotal_stream":                 # chosen once, the same in both guidance halves
            idx = self._select(k, plan, state.f_hat).repeat(x.shape[0] // b, 1)
            gather = idx.unsqueeze(-1).expand(-1, -1, x.shape[-1])
        if plan.restore_level == "block":
            base = self._upsample_tokens(_half(state.hidden[plan.restore_from], x.shape[0]), src, pn, plan.upsample)
            hidden_kept, caches = m.transformer(x.gather(1, gather), cond, state.caches)
            return base.scatter(1, gather, hidden_kept), caches, None
        lo, hi = plan.layers or (0, len(m.var.blocks))
        restored = [(self._upsample_tokens(_half(a, x.shape[0]), src, pn, plan.upsample),
                     self._upsample_tokens(_half(f, x.shape[0]), src, pn, plan.upsample)) if lo <= i < hi else None
                    for i, (a, f) in enumerate(state.branches[plan.restore_from])]
        return self._layerwise(x, cond, state.caches, plan=plan, idx=gather, restored=restored)

    def _layerwise(self, x: torch.Tensor, cond: torch.Tensor, caches: list[KV] | None,
                   plan: StepPlan | None = None, idx: torch.Tensor | None = None, restored: list | None = None):
        """Blocks with the residual stream kept at full length; in the plan's blocks, sublayers are
        computed on the kept tokens only and the rest of their output is `restored`.

        The kept tokens are `idx`, or with the `pivotal_stream` selector rescored from the residual
        stream before each sublayer, per row (so per image and per guidance half, as FastVAR does).
        Without a plan every token is computed and the branch outputs are returned for caching.
        """
        block_cond = self.model.var.block_condition(cond)
        lo, hi = (0, len(self.model.var.blocks)) if plan is None or plan.layers is None else plan.layers
        new: list[KV] = []
        branches = []

        def pick(i: int) -> torch.Tensor | None:
            if plan is None or not lo <= i < hi:
                return None
            if plan.selector == "pivotal_stream":
                return pivotal(x, plan.keep).unsqueeze(-1).expand(-1, -1, x.shape[-1])
            return idx

        for i, blk in enumerate(self.model.var.blocks):
            mod = blk.modulation(block_cond)
            sel = pick(i)
            a_in = blk.attn_input(x, mod)
            a_in = a_in if sel is None else a_in.gather(1, sel)
            a, kv = blk.attn(a_in, None, None if caches is None else caches[i])
            a = a.mul(mod[0])
            a = a if sel is None else restored[i][0].scatter(1, sel, a)
            x = x + a
            sel = pick(i)
            f_in = blk.ffn_input(x, mod)
            f_in = f_in if sel is None else f_in.gather(1, sel)
            f = blk.ffn(f_in).mul(mod[1])
            f = f if sel is None else restored[i][1].scatter(1, sel, f)
            x = x + f
            new.append(kv)
            branches.append((a, f))
        return x, new, (branches if plan is None else None)
