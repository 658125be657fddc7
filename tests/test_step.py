"""The scale-step unit: KV-cached steps equal the teacher-forced block-causal forward."""

from __future__ import annotations

import pytest
import torch

from fastervar.models.loading import random_model
from fastervar.models.sampler import generate
from fastervar.models.sampling import SamplingSettings


def _stepwise_logits(model, labels, tokens):
    cond = model.condition(labels)
    state = model.init_state(len(labels))
    out = []
    for k in range(model.num_steps):
        x = model.step_input(k, state.f_hat, cond)
        hidden, state.caches = model.blocks_forward(k, x, model.block_context(k, cond), state.caches)
        out.append(model.logits(hidden, cond))
        state.f_hat = model.update_f_hat(k, state.f_hat, model.vae.quantize.embedding(tokens[k]))
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("name", ["tiny", "tiny-saln", "tiny-d16-schedule"])
@torch.no_grad()
def test_kv_cached_steps_match_teacher_forcing(name):
    model = random_model(name, seed=1)
    labels = torch.tensor([1, 8])
    tokens = generate(model, labels.tolist(), SamplingSettings(), seed=0).tokens
    guided = torch.cat((labels, torch.full_like(labels, model.var.num_classes)))
    teacher = model.var(guided, model.teacher_inputs(tokens).repeat(2, 1, 1))
    cached = _stepwise_logits(model, labels, tokens)
    assert teacher.shape == cached.shape == (4, model.var.cfg.seq_len, model.cfg.vae.vocab_size)
    assert (teacher - cached).abs().max().item() < 1e-4


@torch.no_grad()
def test_step_grows_the_cache_and_accumulates_f_hat(tiny_model):
    labels = torch.tensor([3])
    cond = tiny_model.condition(labels)
    state = tiny_model.init_state(1)
    seen = 0
    for k in range(tiny_model.num_steps):
        u = torch.rand(1, tiny_model.tokens_at(k))
        before = state.f_hat.clone()
        state, out = tiny_model.step(k, state, cond, u, SamplingSettings())
        seen += tiny_model.tokens_at(k)
        assert state.caches[0][0].shape[2] == seen and state.caches[0][0].shape[0] == 2
        assert out.tokens.shape == (1, tiny_model.tokens_at(k))
        assert not torch.equal(before, state.f_hat)


def test_vqvae_reencodes_its_own_latent(tiny_model):
    """Quantizing a latent that is exactly a token pyramid returns that pyramid's f_hat."""
    with torch.no_grad():
        g = generate(tiny_model, [0, 1], SamplingSettings(), seed=2)
        fhat = tiny_model.vae.quantize.indices_to_fhat(g.tokens)[-1]
        assert torch.allclose(fhat, g.f_hat, atol=1e-5)


@pytest.mark.parametrize("src, dst, mode", [(1, 16, "bicubic"), (3, 16, "bicubic"), (13, 16, "bicubic"),
                                            (5, 8, "bicubic"), (16, 13, "area"), (16, 5, "area"), (8, 3, "area")])
def test_resample_matrices_equal_torch_interpolate(src, dst, mode):
    import torch.nn.functional as F

    from fastervar.models.resample import _matrix64, resample
    x = torch.randn(2, 3, src, src, dtype=torch.float64)
    want = F.interpolate(x, size=(dst, dst), mode=mode)
    m = torch.from_numpy(_matrix64(src, dst, mode))
    assert torch.allclose(m @ x @ m.T, want, atol=1e-12)
    assert torch.allclose(resample(x.float(), dst, mode), want.float(), atol=1e-5)
