"""The upstream Infinity runner (`benchmarks/infinity_speed.py --upstream-src`) against our official
sampler, through the timing harness: the same images for fresh seeds, so the benchmark's upstream
row times the computation ours reproduces. Opt-in: set FASTERVAR_UPSTREAM_INFINITY to a
FoundationVision/Infinity tree (einops and pytz installed, which upstream imports)."""

from __future__ import annotations

import os
import secrets
from dataclasses import replace

import pytest
import torch

from fastervar.models.infinity.checkpoint import random_infinity
from fastervar.models.text.prompts import TextBatch
from fastervar.timing import TorchRunner, batches

UPSTREAM = os.environ.get("FASTERVAR_UPSTREAM_INFINITY")
pytestmark = pytest.mark.skipif(not UPSTREAM, reason="set FASTERVAR_UPSTREAM_INFINITY to a FoundationVision/Infinity "
                                                     "tree to compare with upstream's sampler")


@pytest.mark.parametrize("aspect", [1.0, 0.5])
def test_upstream_runner_draws_what_our_official_sampler_draws(one_thread, aspect):
    from fastervar.bench.upstream_infinity import UpstreamInfinityRunner, load_upstream
    ours = random_infinity("infinity-tiny", h_div_w=aspect, pn="0.06M")
    net, vae, schedule = load_upstream(UPSTREAM, ours)
    g = torch.Generator().manual_seed(secrets.randbelow(2**31))
    lengths = torch.tensor([5, 3])
    emb = torch.randn(2, 5, 256, generator=g) * (torch.arange(5)[None, :, None] < lengths[:, None, None])
    bank = TextBatch(emb, lengths)
    settings = replace(ours.default_settings(), sampler="official")
    seed = secrets.randbelow(2**31)
    for batch in batches([0, 1], seed, 2):
        want = TorchRunner(ours, settings, prompts=bank)(batch).images
        got = UpstreamInfinityRunner(net, vae, schedule, settings, bank, ours.vae.cfg.codebook_dim)(batch).images
        assert got.shape == want.shape and (got == want).all(), f"seed {seed}"
