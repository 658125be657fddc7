"""A model's scale steps as a profile says to run them, for any family.

Per step, the plan is `full` (the baseline step), `skip` (not run: f_hat keeps the upsampled
accumulation), or `reduce`: the transformer runs on r selected tokens, appends only their K/V to
the cache, and every other position is restored from the cached output of an earlier full step,
upsampled: once after the last block (`block`, StageVAR), inside the blocks for each sublayer's
branch (`layer`, FastVAR: optionally only in a block range, with the tokens rescored from the
residual stream before every sublayer, per row), or not at all (`latent`: the other positions add
no code this step). Guidance can be dropped (one half of the batch, the conditional or the null
prompt's, with the KV cache sliced to it) and chosen linear layers factorized. The identity
profile runs exactly the family's own step.

It works on the family protocol (`models.protocol.FamilyModel`): the step's pieces, the blocks
whole or one sublayer at a time, and the token grid; it never reaches into a family's modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ..models.protocol import KV, FamilyModel, StepOutput, StepState, slice_rows
from ..models.resample import resample
from ..models.sampling import SamplingSettings
from ..profile import ModelSpec, Profile, StepPlan, check_against
from ..decision_rule import Decision, features
from .factorize import factorize
from .selectors import pivotal_stream, select

_NORMS = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.RMSNorm)


def _float_inputs(_module: torch.nn.Module, args: tuple) -> tuple:
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def preview_features(model: FamilyModel, new: torch.Tensor, old: torch.Tensor, preview_step: int,
                     freq_ratio: float) -> np.ndarray:
    """SkipVAR's two features of each image, from the previews of its latest and its earlier latent."""
    def preview(f_hat: torch.Tensor) -> np.ndarray:
        return model.preview(f_hat, preview_step).detach().float().cpu().numpy()
    return features(preview(new), preview(old), freq_ratio)


@dataclass
class AccelState(StepState):
    """The baseline state plus the outputs cached for later restoration, keyed by step, and, with a
    per-image decision, the latent it compares against and the groups of images it formed."""

    hidden: dict[int, torch.Tensor] = field(default_factory=dict)             # block level
    branches: dict[int, list[list[torch.Tensor]]] = field(default_factory=dict)  # layer level: per block, per sublayer
    snapshot: torch.Tensor | None = None
    decided: tuple[np.ndarray, list[tuple[str, int]]] | None = None           # features, and each image's move
    groups: list[_Group] | None = None


@dataclass
class _Group:
    """Images that took the same move at the decision, run as a batch of their own from then on."""

    rows: list[int]
    move: tuple[str, int]
    state: AccelState
    cond: Any

    def plan(self, plan: StepPlan, step: int) -> StepPlan:
        return move_plan(self.move, plan, step)


def move_plan(move: tuple[str, int], plan: StepPlan, step: int) -> StepPlan:
    """Step `step`'s plan for an image the decision gave `move` (("none", 0): the plan itself)."""
    kind, first = move
    if kind == "skip" and step >= first:
        return StepPlan(mode="skip")
    if kind == "uncond" and step >= first:
        return replace(plan, cfg=False, unguided="cond-only")
    return plan


def under_move(profile: Profile, move: tuple[str, int]) -> Profile:
    """The profile as the images that took `move` run it: fixed plans, no decision (what export
    traces a move's graphs from; ("none", 0) gives the plan the other images run)."""
    return replace(profile, decision=None, steps=[move_plan(move, p, k) for k, p in enumerate(profile.steps)])


class AcceleratedModel:
    """Runs a family model's steps under a Profile; the same step protocol as the model itself."""

    def __init__(self, model: FamilyModel, profile: Profile, input_cov: dict | None = None):
        check_against(profile, model)
        self.model = model
        self.profile = profile
        self.num_steps = model.num_steps
        self._factors = self._build_factors(input_cov or {})
        self._keep_hidden = {p.restore_from for p in profile.steps if p.mode == "reduce" and p.restore_level == "block"}
        self._keep_branches = {p.restore_from for p in profile.steps if p.mode == "reduce" and p.restore_level == "layer"}
        self.decision = None if profile.decision is None else Decision.from_profile(profile.decision)

    @property
    def dynamic(self) -> bool:
        """Whether the work of a step depends on the images (a per-image decision): such steps
        cannot be captured as fixed graphs."""
        return self.decision is not None

    @torch.no_grad()
    def _build_factors(self, input_cov: dict) -> dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor]]:
        """Factor every (step, block, layer) the profile asks for; equal ranks share one factorization."""
        out: dict = {}
        made: dict = {}
        for k, plan in enumerate(self.profile.steps):
            for name, rank in plan.ranks.items():
                for i in range(self.model.depth):
                    key = (i, name, rank)
                    if key not in made:
                        owner, short = self.model.factor_slots(i)[name]
                        made[key] = factorize(getattr(owner, short).weight, rank, input_cov.get((i, name)))
                    out[(k, i, name)] = made[key]
        return out

    def cast_(self, dtype: torch.dtype) -> AcceleratedModel:
        """Move the model and the factorized weights to `dtype` (export at half precision). Norms
        keep float32 parameters and run on float32 inputs, as autocast means them to: a model that
        keeps its residual stream in float32 (Infinity) feeds them float32, which a half norm refuses
        on the CPU, and ONNX wants a norm's input and parameters of one type."""
        self.model.to(dtype)
        for module in self.model.modules():
            if isinstance(module, _NORMS):
                module.float()
                if _float_inputs not in module._forward_pre_hooks.values():     # aspects share modules
                    module.register_forward_pre_hook(_float_inputs)
        self._factors = {k: tuple(t.to(dtype) for t in f) for k, f in self._factors.items()}
        return self

    # -- the step protocol, delegated ---------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def depth(self) -> int:
        return self.model.depth

    def spec(self) -> ModelSpec:
        return self.model.spec()

    def state_parts(self) -> tuple[torch.nn.Module, ...]:
        return self.model.state_parts()

    def grid(self, step: int) -> tuple[int, int]:
        return self.model.grid(step)

    def tokens_at(self, step: int) -> int:
        return self.model.tokens_at(step)

    def noise_at(self, step: int) -> int:
        return self.model.noise_at(step)

    def runs_guidance(self, settings: SamplingSettings) -> bool:
        return self.model.runs_guidance(settings)

    def init_state(self, batch: int) -> AccelState:
        return AccelState(f_hat=self.model.init_state(batch).f_hat)

    def condition(self, inputs: Any, guided: bool = True) -> Any:
        return self.model.condition(inputs, guided=guided)

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        return self.model.decode(f_hat)

    def pixels(self, f_hat: torch.Tensor) -> torch.Tensor:
        return self.to_uint8(self.decode(f_hat))

    def to_uint8(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.to_uint8(images)

    # -- one step -----------------------------------------------------------------------------
    def _install(self, step: int) -> None:
        """Put step `step`'s factors into the model's linears (none for step -1)."""
        for i in range(self.model.depth):
            for name, (owner, short) in self.model.factor_slots(i).items():
                f = self._factors.get((step, i, name))
                if f is None:
                    owner.factors.pop(short, None)
                else:
                    owner.factors[short] = f

    def _upsample_tokens(self, t: torch.Tensor, src: int, dst: int, mode: str) -> torch.Tensor:
        """(rows, tokens of step src, C) cached outputs to (rows, tokens of step dst, C)."""
        rows, _, c = t.shape
        (hs, ws), size = self.model.grid(src), self.model.grid(dst)
        grid = t.transpose(1, 2).reshape(rows, c, hs, ws)
        return resample(grid, size, mode).flatten(2).transpose(1, 2)

    @torch.no_grad()
    def step(self, k: int, state: AccelState, cond: Any, noise: torch.Tensor | torch.Generator,
             settings: SamplingSettings) -> tuple[AccelState, StepOutput | None]:
        d = self.decision
        if d is not None and state.groups is not None:
            return self._grouped_step(k, state, noise, settings)
        state, out = self._run_step(k, self.profile.steps[k], state, cond, noise, settings)
        if d is not None and k == d.compare:
            state.snapshot = state.f_hat.clone()
        if d is not None and k == d.after:
            self._decide(state, cond)
        return state, out

    def _decide(self, state: AccelState, cond: Any) -> None:
        """Each image's move from its two previews; images with the same move form a group."""
        d, m = self.decision, self.model
        b = state.f_hat.shape[0]
        x = preview_features(m, state.f_hat, state.snapshot, d.preview_step, d.freq_ratio)
        moves = d.moves(x)
        state.decided = x, moves
        state.groups = []
        for move in dict.fromkeys(moves):
            rows = [i for i, mv in enumerate(moves) if mv == move]
            sub = AccelState(f_hat=state.f_hat[rows])
            if state.caches is not None:
                sub.caches = [(_take(kk, rows, b), _take(vv, rows, b)) for kk, vv in state.caches]
            sub.hidden = {j: _take(t, rows, b) for j, t in state.hidden.items()}
            sub.branches = {j: [[_take(t, rows, b) for t in blk] for blk in per] for j, per in state.branches.items()}
            state.groups.append(_Group(rows, move, sub, m.select_rows(cond, rows, b)))

    def _grouped_step(self, k: int, state: AccelState, noise: torch.Tensor | torch.Generator,
                      settings: SamplingSettings) -> tuple[AccelState, StepOutput | None]:
        """Step k for each group under its own plan; tokens of images that skip it are -1."""
        b = state.f_hat.shape[0]
        f_hat = state.f_hat.clone()
        outs = []
        for g in state.groups:
            sub_noise = noise[g.rows] if isinstance(noise, torch.Tensor) else noise
            g.state, out = self._run_step(k, g.plan(self.profile.steps[k], k), g.state, g.cond, sub_noise, settings)
            f_hat[g.rows] = g.state.f_hat
            outs.append(out)
        state.f_hat = f_hat
        ran = [(g, o) for g, o in zip(state.groups, outs) if o is not None]
        if not ran:
            return state, None
        tokens = ran[0][1].tokens.new_full((b, ran[0][1].tokens.shape[1]), -1)
        for g, o in ran:
            tokens[g.rows] = o.tokens
        return state, StepOutput(tokens, None)

    def _run_step(self, k: int, plan: StepPlan, state: AccelState, cond: Any, noise: torch.Tensor | torch.Generator,
                  settings: SamplingSettings) -> tuple[AccelState, StepOutput | None]:
        m = self.model
        b = state.f_hat.shape[0]
        if plan.mode == "skip":
            return state, None
        guidance = "cfg" if m.is_guided(cond, b) else "none"
        if guidance == "cfg" and not plan.cfg:
            guidance = plan.unguided
            cond = m.drop_guidance(cond, b, guidance)
            if state.caches is not None:
                state.caches = [(slice_rows(kk, b, guidance), slice_rows(vv, b, guidance)) for kk, vv in state.caches]
        self._install(k)
        try:
            x = m.step_input(k, state.f_hat, cond)
            ctx = m.block_context(k, cond)
            if plan.mode == "reduce" and plan.restore_level == "latent":
                return self._latent_step(k, plan, x, ctx, cond, state, noise, settings, guidance)
            if plan.mode == "full":
                hidden, caches, branches = self._full(k, x, ctx, state.caches, k in self._keep_branches)
            else:
                hidden, caches, branches = self._reduced(k, plan, x, ctx, state, guidance)
        finally:
            self._install(-1)
        if k in self._keep_hidden:
            state.hidden[k] = hidden
        if branches is not None:
            state.branches[k] = branches
        logits = m.logits(hidden, cond)
        tokens, codes = m.sample(k, logits, noise, settings, guidance)
        state.f_hat = m.update_f_hat(k, state.f_hat, codes)
        state.caches = caches
        return state, StepOutput(tokens.flatten(1), logits, hidden)

    def _latent_step(self, k: int, plan: StepPlan, x: torch.Tensor, ctx: Any, cond: Any, state: AccelState,
                     noise: torch.Tensor | torch.Generator, settings: SamplingSettings, guidance: str):
        """Predict and add codes at the kept positions only; the others keep the latent
        accumulated so far (no code added), which is exactly what a skipped step leaves everywhere."""
        m = self.model
        b, n = state.f_hat.shape[0], m.tokens_at(k)
        idx = self._select(k, plan, state.f_hat)
        rows = x.shape[0] // b
        positions = idx.repeat(rows, 1)
        kept_x = x.gather(1, positions.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        hidden, caches = m.blocks_forward(k, kept_x, ctx, state.caches, positions)
        logits = m.logits(hidden, cond)
        if isinstance(noise, torch.Tensor):
            per_token = noise.view(b, n, -1)
            noise = per_token.gather(1, idx.unsqueeze(-1).expand(-1, -1, per_token.shape[-1])).flatten(1)
        tokens_kept, codes_kept = m.sample(k, logits, noise, settings, guidance)
        ones = torch.ones_like(idx, dtype=torch.bool)                 # a tensor: a scalar bool cannot be traced
        kept = torch.zeros(b, n, dtype=torch.bool, device=idx.device).scatter(1, idx, ones)
        codes = codes_kept.new_zeros(b, n, codes_kept.shape[-1]).scatter(
            1, idx.unsqueeze(-1).expand_as(codes_kept), codes_kept)
        tokens = tokens_kept.new_full((b, n, tokens_kept.shape[-1]), -1).scatter(
            1, idx.unsqueeze(-1).expand_as(tokens_kept), tokens_kept)
        state.f_hat = m.update_f_hat(k, state.f_hat, codes, kept)
        state.caches = caches
        return state, StepOutput(tokens.flatten(1), logits)

    def _select(self, k: int, plan: StepPlan, f_hat: torch.Tensor) -> torch.Tensor:
        """(B, r) positions from the step's content, the same in both guidance halves; chosen in
        float32 under autocast too, so that a half-precision bundle keeps the tokens fp32 keeps."""
        h, w = self.model.grid(k)
        with torch.autocast(f_hat.device.type, enabled=False):
            content = self.model.content(k, f_hat.float())
            return select(plan.selector, content, plan.kept(h * w), (h, w), k, plan.relevance)

    def _full(self, k: int, x: torch.Tensor, ctx: Any, caches: list[KV] | None, record: bool):
        if not record:
            hidden, new = self.model.blocks_forward(k, x, ctx, caches)
            return hidden, new, None
        return self._layerwise(k, x, ctx, caches)

    def _reduced(self, k: int, plan: StepPlan, x: torch.Tensor, ctx: Any, state: AccelState, guidance: str):
        m = self.model
        b = state.f_hat.shape[0]
        rows = x.shape[0]
        positions = None
        if plan.selector != "pivotal_stream":                 # chosen once, the same in both guidance halves
            positions = self._select(k, plan, state.f_hat).repeat(rows // b, 1)
        if plan.restore_level == "block":
            cached = slice_rows(state.hidden[plan.restore_from], b, guidance)
            base = self._upsample_tokens(cached, plan.restore_from, k, plan.upsample)
            gather = positions.unsqueeze(-1).expand(-1, -1, x.shape[-1])
            hidden_kept, caches = m.blocks_forward(k, x.gather(1, gather), ctx, state.caches, positions)
            return base.to(hidden_kept.dtype).scatter(1, gather, hidden_kept), caches, None
        lo, hi = plan.layers or (0, m.depth)
        restored = [[self._upsample_tokens(slice_rows(t, b, guidance), plan.restore_from, k, plan.upsample)
                     for t in per_block] if lo <= i < hi else None
                    for i, per_block in enumerate(state.branches[plan.restore_from])]
        return self._layerwise(k, x, ctx, state.caches, plan=plan, positions=positions, restored=restored)

    def _layerwise(self, k: int, x: torch.Tensor, ctx: Any, caches: list[KV] | None, plan: StepPlan | None = None,
                   positions: torch.Tensor | None = None, restored: list | None = None):
        """Blocks with the residual stream kept at full length; in the plan's blocks, each sublayer
        runs on the kept rows only and the rest of its output is `restored`.

        The kept rows are `positions`, or with the `pivotal_stream` selector rescored from the
        residual stream before each sublayer, per row (per image and per guidance half), in score
        order, as FastVAR's code does. Without a plan every row runs and the branch outputs are
        returned for caching."""
        m = self.model
        lo, hi = (0, m.depth) if plan is None or plan.layers is None else plan.layers
        grid = m.grid(k)
        new: list[KV] = []
        branches = []
        for i in range(m.depth):
            reduced = plan is not None and lo <= i < hi
            outputs = []
            kv = None
            for j, sub in enumerate(m.sublayers(i, ctx, None if caches is None else caches[i])):
                sel = None
                if reduced:
                    sel = pivotal_stream(x, plan.kept(x.shape[1]), grid) if plan.selector == "pivotal_stream" \
                        else positions
                rows_in = x if sel is None else x.gather(1, sel.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
                out, block_kv = sub.branch(sub.input(rows_in), sel)
                if sel is not None:
                    out = restored[i][j].scatter(1, sel.unsqueeze(-1).expand(-1, -1, out.shape[-1]), out)
                kv = block_kv if block_kv is not None else kv
                x = x + out
                outputs.append(out)
            new.append(kv)
            branches.append(outputs)
        return x, new, (branches if plan is None else None)


def _take(t: torch.Tensor, rows: list[int], batch: int) -> torch.Tensor:
    """Rows of images `rows` of a batch tensor: both halves of a guided one."""
    index = rows + ([r + batch for r in rows] if t.shape[0] == 2 * batch else [])
    return t[torch.tensor(index, device=t.device)]
