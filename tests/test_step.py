"""VAR's scale-step unit: the cache grows step by step, the VQVAE re-encodes its own latent, and the
resampling matrices equal torch's interpolation. (The KV-cache and identity checks of every family
are in test_families.py.)"""

from __future__ import annotations

import pytest
import torch

from fastervar.models.sampler import generate
from fastervar.models.sampling import SamplingSettings


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
