"""The upstream VAR sampler, from a clone the user points at, run beside ours on the same weights.

Nothing of upstream is vendored: the clone's `models` package is imported from the directory the
user names, built the way upstream's `build_vae_var` builds it for the model's configuration, and
given our model's weights (the key layouts are the same, loaded strictly). It backs
`benchmarks/upstream_speed.py` (upstream's speed beside ours) and the opt-in parity test.

Two habits of upstream to know: building it turns `reset_parameters` off for the whole process
(build our models first), and it keeps its sampling generator on `dist.get_device()`, which is
the GPU whenever one exists, so the generator is replaced by one on the model's device.
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import FastervarError
from ..models.sampling import SamplingSettings
from ..models.var.family import VARModel, to_uint8
from ..timing import Batch, Run


def load_upstream(src: str | Path, model: VARModel) -> Any:
    """Upstream's VAR (with its VQVAE inside) for `model`'s configuration, holding `model`'s weights."""
    src = Path(src)
    if not (src / "models" / "var.py").is_file():
        raise FastervarError(f"{src} is not a clone of FoundationVision/VAR (it has no models/var.py)")
    cfg = model.cfg
    if cfg.var.embed_dim != 64 * cfg.var.depth or cfg.var.num_heads != cfg.var.depth:
        raise FastervarError(f"upstream builds width 64 x depth with one head per 64 channels; {cfg.name} has "
                             f"width {cfg.var.embed_dim} and {cfg.var.num_heads} heads at depth {cfg.var.depth}")
    sys.path.insert(0, str(src))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from models import build_vae_var
    except ImportError as exc:
        raise FastervarError(f"upstream VAR at {src} failed to import ({exc}); it needs huggingface_hub "
                             f"(pip install huggingface_hub)") from None
    device = model.var.head.weight.device
    with contextlib.redirect_stdout(io.StringIO()):
        vae, var = build_vae_var(device=device, patch_nums=cfg.var.patch_nums, V=cfg.vae.vocab_size,
                                 Cvae=cfg.vae.z_channels, ch=cfg.vae.ch, share_quant_resi=cfg.vae.phi_count,
                                 num_classes=cfg.var.num_classes, depth=cfg.var.depth, shared_aln=cfg.var.shared_aln,
                                 attn_l2_norm=cfg.var.attn_l2_norm, flash_if_available=False, fused_if_available=False)
    try:
        var.load_state_dict(model.var.state_dict(), strict=True)
        vae.load_state_dict(model.vae.state_dict(), strict=True)
    except RuntimeError as exc:
        raise FastervarError(f"upstream's modules do not take {cfg.name}'s weights: "
                             f"{str(exc).strip().splitlines()[0]}") from None
    var.eval()                 # built in training mode: drop-path would draw from the global RNG
    vae.eval()
    var.rng = torch.Generator(device=device)
    return var


class UpstreamRunner:
    """Upstream's `autoregressive_infer_cfg` as a timing-harness runner: one call per batch, seeded
    seed + j for batch j as our official sampler is."""

    def __init__(self, upstream: Any, settings: SamplingSettings):
        self.var, self.settings = upstream, settings
        self.device = upstream.lvl_1L.device

    @torch.no_grad()
    def __call__(self, batch: Batch) -> Run:
        s = self.settings
        labels = torch.tensor(batch.labels, device=self.device)
        t0 = time.perf_counter()
        images = self.var.autoregressive_infer_cfg(len(labels), labels, g_seed=batch.generator_seed, cfg=s.cfg,
                                                   top_k=s.top_k, top_p=s.top_p, more_smooth=s.more_smooth)
        images = to_uint8(images).cpu().numpy()
        return Run(images, [], [0.0] * len(self.var.patch_nums), 0.0, graph_seconds=time.perf_counter() - t0)
