"""Loading Infinity: the released transformer files (one `.pth`, or a sharded folder) and their
BSQ VAE, strictly and safely; the architecture is read off the tensors.

Upstream loads with `strict=False`, which would let a truncated or mismatched file produce
images from half-random weights; here the first missing, unexpected or mis-shaped key is an
error naming the file, the key and both shapes.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from ...errors import FastervarError
from ..checkpoint import (
    StateDict,
    assign_state_dict,
    check_strict,
    names_infinity,
    names_star,
    read_state_dict,
    weights_from,
)
from .bsq import BSQVAE, load_bsq
from .configs import INFINITY_CONFIGS, BSQConfig, InfinityConfig
from .family import InfinityModel
from .transformer import Infinity

_SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def config_name(t_cfg: InfinityConfig, v_cfg: BSQConfig) -> str:
    """The named configuration a loaded pair equals, else a name that says it is custom."""
    return next((name for name, pair in INFINITY_CONFIGS.items() if pair == (t_cfg, v_cfg)),
                f"infinity-custom-d{t_cfg.depth}w{t_cfg.width}")


def is_infinity_file(path: str | os.PathLike) -> bool:
    """Whether a transformer checkpoint is Infinity's, from its key names alone (safetensors
    headers, or a memory-mapped pickle); unreadable files are left to the loader to report."""
    p = Path(path)
    if p.is_dir():
        return True
    try:
        if p.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(p), framework="pt") as f:
                keys = list(f.keys())
        else:
            keys = list(torch.load(p, map_location="cpu", weights_only=True, mmap=True))
    except Exception:  # noqa: BLE001 - any unreadable file gets the loader's own message
        return False
    return names_infinity(keys)


def read_infinity_state_dict(path: str | os.PathLike) -> StateDict:
    """One file, or a folder of shards with a Hugging Face index (how Infinity-8B is released)."""
    p = Path(path)
    if not p.is_dir():
        return read_state_dict(p, unwrap="vae")
    index = next((p / name for name in _SHARD_INDEXES if (p / name).exists()), None)
    if index is None:
        raise FastervarError(f"{p}: a checkpoint folder needs {' or '.join(_SHARD_INDEXES)}")
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FastervarError(f"{index}: not a shard index with a 'weight_map' ({exc})") from None
    sd: StateDict = {}
    for shard in sorted(set(weight_map.values())):
        part = read_state_dict(p / shard)
        sd.update({k: v for k, v in part.items() if weight_map.get(k) == shard})
    missing = sorted(set(weight_map) - set(sd))
    if missing:
        raise FastervarError(f"{p}: the index names {len(missing)} keys its shards lack, first {missing[0]!r}")
    return sd


def _normalise(sd: StateDict) -> StateDict:
    """Accept `scale_mul_1H11` in both of upstream's shapes: (1, H, 1, 1), or (1, 1, H, 1) as
    its flash-attention build saves it."""
    out = dict(sd)
    for k, v in sd.items():
        if k.endswith("scale_mul_1H11") and v.dim() == 4 and v.shape[1] == 1 and v.shape[2] > 1:
            out[k] = v.reshape(1, -1, 1, 1)
    return out


def infer_infinity_config(sd: StateDict, path: str | os.PathLike) -> InfinityConfig:
    """Depth, chunks, width, heads, text width and bits, from the tensors."""
    try:
        blocks = {(int(m.group(1)), int(m.group(2)))
                  for k in sd if (m := re.match(r"block_chunks\.(\d+)\.module\.(\d+)\.", k))}
        chunks = 1 + max(c for c, _ in blocks)
        width, bits = sd["word_embed.weight"].shape
        heads = sd["block_chunks.0.module.0.sa.scale_mul_1H11"].numel()
        text_channels = sd["cfg_uncond"].shape[1]
    except (KeyError, ValueError) as exc:
        raise FastervarError(f"{path}: cannot infer the Infinity configuration, missing key {exc}") from None
    return InfinityConfig(depth=len(blocks), width=width, heads=heads, chunks=chunks,
                          text_channels=text_channels, bits=bits)


def load_infinity_transformer(path: str | os.PathLike, cfg: InfinityConfig | None = None) -> Infinity:
    p = Path(path)
    sd = read_infinity_state_dict(p)
    if not names_infinity(sd):
        hint = " (it looks like a VAE)" if any(k.startswith(("encoder.", "decoder.")) for k in sd) else \
            " (it is a STAR transformer: give it with --model star-* or no --model)" if names_star(sd) else \
            " (it looks like a class-conditional VAR)" if "class_emb.weight" in sd else ""
        raise FastervarError(f"{p}: not an Infinity transformer checkpoint{hint}; first key {next(iter(sd))!r}")
    sd = _normalise(sd)
    model = Infinity(cfg or infer_infinity_config(sd, p))
    check_strict(model.state_dict(), sd, p, "Infinity")
    assign_state_dict(model, sd)
    return model.eval()


def load_infinity_model(checkpoint: str | os.PathLike, vae_checkpoint: str | os.PathLike,
                        name: str | None = None, h_div_w: float = 1.0, pn: str = "1M") -> InfinityModel:
    """Both files, architecture from `name` when given, else read off the files."""
    t_cfg, v_cfg = INFINITY_CONFIGS[name] if name else (None, None)
    transformer = load_infinity_transformer(checkpoint, t_cfg)
    if v_cfg is None:
        from .bsq import infer_bsq_config
        vae_sd = read_state_dict(vae_checkpoint, unwrap="vae")
        if names_infinity(vae_sd):
            raise FastervarError(f"{vae_checkpoint}: this is an Infinity transformer, given as the VAE")
        probe = infer_bsq_config(vae_sd, 1, vae_checkpoint)
        patch = 2 if transformer.cfg.bits == 4 * probe.codebook_dim else 1
        v_cfg = BSQConfig(probe.codebook_dim, probe.ch, probe.ch_mult, probe.num_res_blocks, patch)
    vae = load_bsq(vae_checkpoint, v_cfg)
    model = InfinityModel(transformer, vae, h_div_w, pn, config_name(transformer.cfg, vae.cfg))
    model.weights_origin = "checkpoint"
    return model.eval()


def resolve_infinity(name: str | None, checkpoint: str | None, vae_checkpoint: str | None,
                     random_weights: bool, device: torch.device, h_div_w: float, pn: str) -> InfinityModel:
    """The Infinity model the CLI options name: random weights of a named config, or the files."""
    if name is not None and name not in INFINITY_CONFIGS:
        raise FastervarError(f"unknown Infinity model {name!r}; choose one of {', '.join(INFINITY_CONFIGS)}")
    if weights_from(name, checkpoint, vae_checkpoint, random_weights, "Infinity") == "random":
        model = random_infinity(name, h_div_w=h_div_w, pn=pn)
    else:
        model = load_infinity_model(checkpoint, vae_checkpoint, name, h_div_w, pn)
    return model.to(device)


def random_infinity(name: str, seed: int = 0, h_div_w: float = 1.0, pn: str = "0.06M") -> InfinityModel:
    """A named configuration with seeded weights (keyed by parameter name, as the parity
    references were made), for tests and speed benchmarks."""
    from ..loading import seed_module_
    t_cfg, v_cfg = INFINITY_CONFIGS[name]
    model = InfinityModel(seed_module_(Infinity(t_cfg), seed + 1), seed_module_(BSQVAE(v_cfg), seed + 2), h_div_w, pn,
                          name)
    model.weights_origin = "random"
    return model.eval()
