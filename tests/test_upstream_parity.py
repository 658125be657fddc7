"""Our official sampler against upstream VAR's own code, for fresh seeds: the same tokens at every
step and images within one uint8 level. Opt-in: set FASTERVAR_UPSTREAM_VAR to a clone of
FoundationVision/VAR (with huggingface_hub installed, which upstream imports)."""

from __future__ import annotations

import os
import secrets

import pytest
import torch

from fastervar.models.loading import randomize_
from fastervar.models.sampler import generate
from fastervar.models.sampling import SamplingSettings
from fastervar.models.var.configs import SCHEDULE_256, ModelConfig, VARConfig, VQVAEConfig
from fastervar.models.var.family import VARModel

UPSTREAM = os.environ.get("FASTERVAR_UPSTREAM_VAR")
pytestmark = pytest.mark.skipif(not UPSTREAM, reason="set FASTERVAR_UPSTREAM_VAR to a clone of FoundationVision/VAR "
                                                     "to compare with upstream's sampler")


@pytest.fixture(scope="module")
def pair():
    """A two-block model upstream's builder can make (width 64 x depth, its VQVAE at width 32),
    random weights loaded into both."""
    from fastervar.bench.upstream import load_upstream
    cfg = ModelConfig("upstream-d2", VARConfig(depth=2, embed_dim=128, num_heads=2, patch_nums=SCHEDULE_256),
                      VQVAEConfig(ch=32))
    ours = randomize_(VARModel(cfg), seed=1).eval()        # ours first: building upstream disables init
    upstream = load_upstream(UPSTREAM, ours)
    tokens: list[torch.Tensor] = []
    upstream.vae_quant_proxy[0].embedding.register_forward_hook(lambda _m, args, _o: tokens.append(args[0].clone()))
    return ours, upstream, tokens


@pytest.mark.parametrize("settings", [SamplingSettings(cfg=1.5, top_k=900, top_p=0.96, sampler="official"),
                                      SamplingSettings(cfg=4.0, top_k=0, top_p=0.0, sampler="official")],
                         ids=["fid-recipe", "unfiltered"])
def test_official_sampler_reproduces_upstream_for_fresh_seeds(pair, settings):
    ours, upstream, tokens = pair
    for _ in range(3):
        seed = secrets.randbelow(2**31)
        classes = [secrets.randbelow(1000) for _ in range(2)]
        tokens.clear()
        with torch.no_grad():
            want = upstream.autoregressive_infer_cfg(2, torch.tensor(classes), g_seed=seed, cfg=settings.cfg,
                                                     top_k=settings.top_k, top_p=settings.top_p)
        got = generate(ours, classes, settings, seed=seed, batch_size=2)
        assert len(tokens) == len(got.tokens), (seed, classes)
        for k, (a, b) in enumerate(zip(tokens, got.tokens)):
            assert torch.equal(a, b), f"seed {seed}, classes {classes}: step {k} tokens differ"
        diff = ((want.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).int() - got.images.int()).abs()
        assert diff.max() <= 1, (seed, classes)
