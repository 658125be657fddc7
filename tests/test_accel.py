"""The accelerator: identity parity, each selector, restoration, guidance dropping, factorization, skips."""

from __future__ import annotations

import pytest
import torch

from fastervar import profile as P
from fastervar.accel import selectors
from fastervar.accel.accelerated import AcceleratedModel
from fastervar.accel.factorize import factorize, relative_error
from fastervar.models.sampler import generate
from fastervar.models.sampling import SamplingSettings

S = SamplingSettings(cfg=2.0)
CLASSES = [1, 2, 7]


def late_profile(cfg, **step5) -> P.Profile:
    p = P.identity(cfg, "test")
    p.stages = {"semantic": [0, 1, 2], "structure": [3, 4], "refine": [5, 6]}
    p.steps[5] = P.StepPlan(**{"mode": "reduce", "cfg": False, "keep": 12, "selector": "pivotal",
                               "restore_from": 4, **step5})
    p.steps[6] = P.StepPlan(mode="reduce", cfg=False, keep=20, selector="grid", restore_from=4)
    return p


@pytest.fixture(scope="module")
def baseline(tiny_model):
    return generate(tiny_model, CLASSES, S, seed=0)


@pytest.mark.parametrize(("selector", "level"), [(s, lv) for s in P.SELECTORS for lv in P.RESTORE_LEVELS
                                                  if s != "pivotal_stream" or lv == "layer"])   # it acts per sublayer
def test_reduced_steps_keep_early_steps_intact(tiny_model, baseline, selector, level):
    rel = [float((i * 7) % 36) for i in range(36)] if selector == "relevance" else None
    acc = AcceleratedModel(tiny_model, late_profile(tiny_model.cfg, selector=selector, restore_level=level,
                                                    relevance=rel))
    g = generate(acc, CLASSES, S, seed=0)
    for k in range(5):
        assert torch.equal(g.tokens[k], baseline.tokens[k])
    assert g.tokens[5].shape == baseline.tokens[5].shape     # every position still gets a token
    assert g.images.shape == baseline.images.shape


def test_selectors_pick_the_right_tokens():
    feats = torch.zeros(2, 16, 4)
    feats[0, [3, 9]] = 5.0                 # two outliers: pivotal and farthest-point must find them
    feats[1, [0, 15]] = torch.tensor([5.0, 0, 0, 0])
    assert selectors.pivotal(feats, 2).tolist() == [[3, 9], [0, 15]]
    rp = selectors.random_projection(feats, 2)
    # farthest-point: one of the two identical outliers plus one ordinary token, spanning both kinds
    assert rp.shape == (2, 2) and len(set(rp[0].tolist()) & {3, 9}) == 1
    cpu = torch.device("cpu")
    g = selectors.select("grid", feats, 4, 4, step=6)
    assert g.tolist() == [[0, 3, 12, 15]] * 2            # the corners of a 4x4 map, for every image
    assert len(set(selectors.grid(8, 20, cpu)[0].tolist())) == 20
    r = selectors.select("random", torch.zeros(3, 36, 4), 10, 6, step=5)
    assert r.shape == (3, 10) and torch.equal(r[0], r[2]) and torch.equal(r[0], selectors.random(36, 10, 5, cpu)[0])
    assert selectors.select("relevance", feats[:1], 2, 2, step=1, scores=[0.0, 3.0, 1.0, 2.0]).tolist() == [[1, 3]]
    # constants are made once per device, so a GPU step uploads nothing
    assert selectors.grid(4, 4, cpu) is selectors.grid(4, 4, cpu)


def test_block_restoration_takes_unselected_positions_from_the_cache(tiny_model):
    """With keep=1 almost every output of step 5 comes from step 4's cache, upsampled."""
    p = late_profile(tiny_model.cfg, keep=1, selector="grid")
    acc = AcceleratedModel(tiny_model, p)
    labels = torch.tensor(CLASSES)
    cond = acc.condition(labels)
    state = acc.init_state(3)
    for k in range(6):
        u = torch.rand(3, acc.tokens_at(k), generator=torch.Generator().manual_seed(k))
        state, out = acc.step(k, state, cond, u, S)
    assert 4 in state.hidden
    up = acc._upsample_tokens(state.hidden[4][:3], 4, 5, "bicubic")       # steps 4 (5x5) to 5 (6x6)
    expected = tiny_model.var.logits(up, cond[:3])
    assert torch.allclose(out.logits[:, 1:], expected[:, 1:], atol=1e-5)
    assert not torch.allclose(out.logits[:, 0], expected[:, 0], atol=1e-5)


def test_dropping_guidance_halves_the_batch_and_slices_the_cache(tiny_model):
    acc = AcceleratedModel(tiny_model, late_profile(tiny_model.cfg))
    cond = acc.condition(torch.tensor(CLASSES))
    state = acc.init_state(3)
    for k in range(7):
        u = torch.rand(3, acc.tokens_at(k))
        state, out = acc.step(k, state, cond, u, S)
        batch = 6 if k < 5 else 3
        assert out.logits.shape[0] == batch and state.caches[0][0].shape[0] == batch
    kept = sum(tiny_model.tokens_at(k) for k in range(5)) + 12 + 20
    assert state.caches[0][0].shape[2] == kept      # only kept tokens entered the cache


def test_skip_leaves_f_hat_to_the_upsampled_accumulation(tiny_model, baseline):
    p = P.identity(tiny_model.cfg)
    p.steps[6] = P.StepPlan(mode="skip", cfg=True)
    g = generate(AcceleratedModel(tiny_model, p), CLASSES, S, seed=0)
    assert g.tokens[6].shape == (3, 0)
    fhats = tiny_model.vae.quantize.indices_to_fhat(baseline.tokens[:6])
    assert torch.allclose(g.f_hat, fhats[-1], atol=1e-5)


def test_factorized_layers_error_on_their_own_inputs():
    torch.manual_seed(0)
    w = torch.randn(64, 48) @ torch.diag(torch.logspace(0, -2, 48))
    x = torch.randn(500, 48) * torch.logspace(0, -1, 48)        # anisotropic inputs
    errs = [relative_error(w, *factorize(w, r), x) for r in (4, 16, 47)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.05
    cov = x.T @ x / len(x)
    assert relative_error(w, *factorize(w, 8, cov), x) < relative_error(w, *factorize(w, 8), x)
    a, b = factorize(w, 48)
    assert torch.allclose(b @ a, w, atol=1e-4)


def test_factorized_profile_runs_the_thin_layers(tiny_model, baseline):
    p = P.identity(tiny_model.cfg)
    p.steps[6] = P.StepPlan(mode="full", cfg=True, ranks={"ffn.fc1": 63, "attn.mat_qkv": 63})
    g = generate(AcceleratedModel(tiny_model, p), CLASSES, S, seed=0)
    for k in range(6):
        assert torch.equal(g.tokens[k], baseline.tokens[k])
    assert all(not blk.ffn.factors for blk in tiny_model.var.blocks)    # removed after the step


def test_latent_restoration_adds_residuals_only_at_kept_positions(tiny_model, baseline):
    p = P.identity(tiny_model.cfg)
    p.steps[6] = P.StepPlan(mode="reduce", cfg=True, keep=64, selector="pivotal", restore_level="latent")
    g = generate(AcceleratedModel(tiny_model, p), CLASSES, S, seed=0)
    assert torch.equal(g.tokens[6], baseline.tokens[6])          # keeping every token is the baseline
    p.steps[6] = P.StepPlan(mode="reduce", cfg=True, keep=5, selector="pivotal", restore_level="latent")
    g = generate(AcceleratedModel(tiny_model, p), CLASSES, S, seed=0)
    assert ((g.tokens[6] >= 0).sum(1) == 5).all() and ((g.tokens[6] == -1).sum(1) == 59).all()
