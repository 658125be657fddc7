"""The peers as their published code runs them: FastVAR's recipe mapped onto our schedules, its
per-sublayer pivotal selection and area-upsampled restoration, and SkipVAR's static points."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastervar import profile as P
from fastervar.accel.accelerated import AcceleratedModel
from fastervar.accel.presets import fastvar, peers, skipvar, upstream_steps
from fastervar.export.bundle import export_bundle
from fastervar.models.sampler import generate
from fastervar.models.sampling import SamplingSettings
from fastervar.models.var.configs import get_config
from fastervar.runtime.pipeline import Pipeline

S = SamplingSettings(cfg=2.0)
CLASSES = [1, 2, 7]


def test_fastvar_maps_infinity_recipe_onto_var256_by_token_share():
    cfg = get_config("d16")                                       # VAR-256: (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    assert upstream_steps(cfg)[5:] == [24, 32, 40, 48, 64]       # the last five steps pair one to one
    p = fastvar(cfg)
    assert [s.mode for s in p.steps] == ["full"] * 6 + ["reduce", "reduce", "skip", "skip"]
    s6, s7 = p.steps[6], p.steps[7]
    assert (s6.keep, s7.keep) == (64 - int(64 * 0.4), 100 - int(100 * 0.5)) == (39, 50)
    for s in (s6, s7):
        assert s.cfg and s.selector == "pivotal_stream" and s.restore_level == "layer" and s.upsample == "area"
        assert s.restore_from == 5 and s.layers == [2, 14]        # blocks 3..27 of 32, scaled to 16
    P.check_against(P.from_dict(p.to_dict()), cfg)               # round-trips and fits the model


def test_skipvar_static_points_on_var256():
    cfg = get_config("d16")
    assert [s.mode for s in skipvar(cfg, "skip1").steps][-2:] == ["full", "skip"]
    assert [s.mode for s in skipvar(cfg, "skip2").steps][-3:] == ["full", "skip", "skip"]
    unguided = skipvar(cfg, "uncond3")
    assert [s.mode for s in unguided.steps] == ["full"] * 10
    assert [s.cfg for s in unguided.steps] == [True] * 7 + [False] * 3
    assert [p.name for p in peers(cfg)] == ["d16-fastvar", "d16-skipvar-skip1", "d16-skipvar-skip2",
                                            "d16-skipvar-uncond3"]


def test_profile_refuses_block_range_outside_layer_level_or_model():
    cfg = get_config("tiny")
    d = fastvar(cfg).to_dict()
    d["steps"][4]["restore_level"] = "block"
    with pytest.raises(P.ProfileError, match=r"steps\[4\].layers: needs restore_level 'layer'"):
        P.from_dict(d)
    d = fastvar(cfg).to_dict()
    d["steps"][4]["layers"] = [0, 3]
    with pytest.raises(P.ProfileError, match=r"reaches past the model's 2 blocks"):
        P.check_against(P.from_dict(d), cfg)
    d["steps"][4]["upsample"] = "nearest"
    with pytest.raises(P.ProfileError, match=r"upsample must be one of"):
        P.from_dict(d)


def _area(t: torch.Tensor, src: int, dst: int) -> torch.Tensor:
    rows, _, c = t.shape
    grid = t.transpose(1, 2).reshape(rows, c, src, src)
    return F.interpolate(grid, size=(dst, dst), mode="area").flatten(2).transpose(1, 2)


def _reference_fastvar_step(model, plan, pn, src_pn, x, cond, caches, branches):
    """FastVAR's block loop written out directly: score the residual stream before each sublayer,
    keep the top tokens per row, scatter their outputs over the area-upsampled cached output."""
    var = model.var
    block_cond = var.block_condition(cond)
    lo, hi = plan.layers
    kv_lens, differed = [], False
    for i, blk in enumerate(var.blocks):
        mod = blk.modulation(block_cond)
        for branch in range(2):
            keep = None
            if lo <= i < hi:
                score = (x - x.mean(1, keepdim=True)).square().sum(-1)
                keep = score.argsort(dim=1, descending=True)[:, :plan.keep]
                differed |= len({tuple(sorted(row)) for row in keep.tolist()}) > 1
                keep = keep.unsqueeze(-1).expand(-1, -1, x.shape[-1])
            if branch == 0:
                inp = blk.attn_input(x, mod)
                out, kv = blk.attn(inp if keep is None else inp.gather(1, keep), None, caches[i])
                out = out * mod[0]
                kv_lens.append(kv[0].shape[2])
            else:
                inp = blk.ffn_input(x, mod)
                out = blk.ffn(inp if keep is None else inp.gather(1, keep)) * mod[1]
            if keep is not None:
                out = _area(branches[i][branch], src_pn, pn).scatter(1, keep, out)
            x = x + out
    return var.logits(x, cond), kv_lens, differed


@torch.no_grad()
def test_fastvar_step_matches_a_direct_reading_of_its_block_loop(tiny_model):
    prof = fastvar(tiny_model.cfg)
    k = next(i for i, s in enumerate(prof.steps) if s.mode == "reduce")
    prof.steps[k].layers = [1, 2]                  # block 0 intact, block 1 pruned (the tiny model has two)
    acc = AcceleratedModel(tiny_model, prof)
    cond = acc.condition(torch.tensor(CLASSES))
    state = acc.init_state(3)
    for step in range(k):
        state, _ = acc.step(step, state, cond, torch.rand(3, acc.tokens_at(step)), S)
    plan = prof.steps[k]
    before = copy.deepcopy(state)
    state, out = acc.step(k, state, cond, torch.rand(3, acc.tokens_at(k)), S)
    x = tiny_model.step_input(k, before.f_hat, cond)
    want, kv_lens, differed = _reference_fastvar_step(
        tiny_model, plan, tiny_model.patch_nums[k], tiny_model.patch_nums[plan.restore_from], x, cond, before.caches,
        before.branches[plan.restore_from])
    assert torch.allclose(out.logits, want, atol=1e-5)
    assert differed                                # the rows (images, guidance halves) chose their own tokens
    cached = sum(tiny_model.tokens_at(s) for s in range(k))
    assert kv_lens == [cached + tiny_model.tokens_at(k), cached + plan.keep]     # full block vs pruned block
    assert [c[0].shape[2] for c in state.caches] == kv_lens
    assert out.tokens.shape == (3, tiny_model.tokens_at(k))        # every position still sampled


@torch.no_grad()
def test_fastvar_skips_the_last_steps_and_keeps_the_early_ones(tiny_model):
    prof = fastvar(tiny_model.cfg)
    base = generate(tiny_model, CLASSES, S, seed=0)
    g = generate(AcceleratedModel(tiny_model, prof), CLASSES, S, seed=0)
    first = next(i for i, s in enumerate(prof.steps) if s.mode != "full")
    for step in range(first):
        assert torch.equal(g.tokens[step], base.tokens[step])
    for step, s in enumerate(prof.steps):
        if s.mode == "skip":
            assert g.tokens[step].shape == (3, 0)


def test_fastvar_bundle_runs_token_for_token_like_torch(tmp_path, tiny_model):
    prof = fastvar(tiny_model.cfg)
    prof.steps[next(i for i, s in enumerate(prof.steps) if s.mode == "reduce")].layers = [1, 2]
    path = export_bundle(tiny_model, prof, tmp_path / "b", S, max_batch=2, progress=False)
    ref = generate(AcceleratedModel(tiny_model, prof), CLASSES, S, seed=3, batch_size=3)
    for chain in (True, False):
        got = Pipeline.from_bundle(path, chain=chain).generate(CLASSES, seed=3)
        for step, t in enumerate(ref.tokens):
            assert np.array_equal(got.tokens[step], t.numpy()), f"step {step} tokens differ (chain={chain})"
