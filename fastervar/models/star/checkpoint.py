"""Loading STAR: its transformer (a training checkpoint's `["trainer"]["var_wo_ddp"]`, or a plain
state dict, .pth or .safetensors) and VAR's VQVAE, strictly; the architecture is read off the
tensors and whether the file has the sampler head decides which of upstream's two paths runs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ...errors import FastervarError
from ..checkpoint import StateDict, checkpoint_kind, load_part, names_star, read_state_dict, weights_from
from ..var.checkpoint import infer_vae_config
from .configs import STAR_MODELS, StarConfig, get_pair, pair_for, schedule_for
from .family import StarModel

_WRAPPED = ("trainer", "var_wo_ddp")
_OTHER = {"var": "a class-conditional VAR transformer", "infinity": "an Infinity transformer",
          "vae": "a VQVAE"}


def read_star(path: str | os.PathLike) -> StateDict:
    return read_state_dict(path, unwrap=_WRAPPED)


def is_star_file(path: str | os.PathLike) -> bool:
    """Whether a transformer file is STAR's, from its key names; unreadable files are left to the
    loader to report."""
    try:
        return names_star(read_star(path))
    except FastervarError:
        return False


def infer_star_config(sd: StateDict, path: Path) -> StarConfig:
    """Depth, width, heads, text width, scale count and the sampler head, from the tensors."""
    try:
        depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
        width = sd["word_embed.weight"].shape[0]
        heads = sd["blocks.0.attn.scale_mul_1H11"].shape[1]
        text = sd["encoder_proj.weight"].shape[1]
        scales = sd["lvl_embed.weight"].shape[0]
        hidden = sd["blocks.0.ffn.fc1.weight"].shape[0]
        classes = sd["class_emb.weight"].shape[0] - 1
    except (KeyError, ValueError, IndexError) as exc:
        raise FastervarError(f"{path}: cannot infer the STAR configuration, missing key {exc}") from None
    return StarConfig(depth=depth, width=width, heads=heads, patch_nums=schedule_for(scales), text_channels=text,
                      sampler_head="head_logits2.weight" in sd, mlp_ratio=hidden / width, num_classes=classes)


def _expect(sd: StateDict, path: Path, want: str) -> None:
    kind = checkpoint_kind(sd)
    if kind == want:
        return
    what = {"star": "STAR transformer", "vae": "VQVAE"}[want]
    flag = {"star": "--checkpoint", "vae": "--vae-checkpoint"}[want]
    if kind in _OTHER or kind == "star":
        other = "a STAR transformer" if kind == "star" else _OTHER[kind]
        raise FastervarError(f"{path}: this is {other}, given as {flag} (a {what})")
    raise FastervarError(f"{path}: not a {what} checkpoint (first key {next(iter(sd))!r})")


def load_star(checkpoint: str | os.PathLike, vae_checkpoint: str | os.PathLike, name: str | None = None) -> StarModel:
    """Both files; the architecture from `name` when given, else read off the files."""
    t_path, v_path = Path(checkpoint), Path(vae_checkpoint)
    t_sd, v_sd = read_star(t_path), read_state_dict(v_path)
    _expect(t_sd, t_path, "star")
    _expect(v_sd, v_path, "vae")
    if name is not None:
        pair = get_pair(name)
    else:
        pair = pair_for(infer_star_config(t_sd, t_path), infer_vae_config(v_sd, v_path))
    model = StarModel(pair)
    load_part(model.star, t_sd, t_path, "STAR")
    load_part(model.vae, v_sd, v_path, "VQVAE")
    model.weights_origin = "checkpoint"
    return model.eval()


def random_star(name: str, seed: int = 0) -> StarModel:
    """A named configuration with seeded weights (keyed by parameter name, as the parity
    references were made), for tests and speed benchmarks."""
    from ..loading import seed_module_
    model = StarModel(get_pair(name))
    seed_module_(model.star, seed + 1)
    seed_module_(model.vae, seed + 2)
    model.weights_origin = "random"
    return model.eval()


def resolve_star(name: str | None, checkpoint: str | None, vae_checkpoint: str | None, random_weights: bool,
                 device: torch.device) -> StarModel:
    """The STAR model the CLI options name: random weights of a named config, or the files."""
    if name is not None and name not in STAR_MODELS:
        raise FastervarError(f"unknown STAR model {name!r}; choose one of {', '.join(STAR_MODELS)}")
    if weights_from(name, checkpoint, vae_checkpoint, random_weights, "STAR") == "random":
        model = random_star(name)
    else:
        model = load_star(checkpoint, vae_checkpoint, name)
    return model.to(device)

