"""VAR checkpoint I/O: the released .pth state dicts and our safetensors model folders, checked
strictly, with the configuration read off the tensors."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from safetensors.torch import save_file

from ...errors import FastervarError
from ...utils.atomic import atomic_dir
from ..checkpoint import StateDict, checkpoint_kind, load_part, read_state_dict
from .configs import (
    NAMED_CONFIGS,
    OFFICIAL_VAE,
    SCHEDULE_256,
    SCHEDULE_512,
    ModelConfig,
    VARConfig,
    VQVAEConfig,
    validate,
)
from .family import VARModel

_SCHEDULES = {sum(p * p for p in s): s for s in (SCHEDULE_256, SCHEDULE_512)}


def _expect_kind(sd: StateDict, path: Path, want: str) -> None:
    kind = checkpoint_kind(sd)
    if kind == want:
        return
    flag = {"var": "--var-checkpoint", "vae": "--vae-checkpoint"}[want]
    if kind == "unknown":
        raise FastervarError(f"{path}: not a {want.upper()} checkpoint (first key {next(iter(sd))!r})")
    if kind == "infinity":
        raise FastervarError(f"{path} is an Infinity (text-to-image) transformer; this command takes class-"
                             f"conditional VAR models (Infinity runs in generate, calibrate, bench and evaluate)")
    if kind == "star":
        raise FastervarError(f"{path} is a STAR (text-to-image) transformer; STAR runs in generate so far "
                             f"(fastervar generate --checkpoint F --vae-checkpoint F --text-embeddings F.npz)")
    raise FastervarError(f"{path} looks like a {kind.upper()} checkpoint but was given as {flag}")


def infer_var_config(sd: StateDict, path: Path) -> VARConfig:
    """Read depth, width, heads, classes and schedule off the tensors of a VAR state dict."""
    try:
        depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
        c = sd["class_emb.weight"].shape[1]
        heads = sd["blocks.0.attn.scale_mul_1H11"].shape[1] if "blocks.0.attn.scale_mul_1H11" in sd \
            else max(1, c // 64)
        seq = sd["pos_1LC"].shape[1]
        fc1 = sd["blocks.0.ffn.fc1.weight"].shape[0]
        classes = sd["class_emb.weight"].shape[0] - 1
    except (KeyError, ValueError, IndexError) as exc:
        raise FastervarError(f"{path}: cannot infer the VAR configuration, missing key {exc}") from None
    if seq not in _SCHEDULES:
        raise FastervarError(f"{path}: {seq} positions match no known schedule "
                             f"(256 px: 680, 512 px: 2240); pass --model for a custom one")
    return VARConfig(depth=depth, embed_dim=c, num_heads=heads, mlp_ratio=fc1 / c, num_classes=classes,
                     shared_aln="shared_ada_lin.1.weight" in sd,
                     attn_l2_norm="blocks.0.attn.scale_mul_1H11" in sd, patch_nums=_SCHEDULES[seq])


def infer_vae_config(sd: StateDict, path: Path) -> VQVAEConfig:
    """Read channel widths and layout off the tensors of a VQVAE state dict."""
    try:
        ch = sd["encoder.conv_in.weight"].shape[0]
        levels = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.(\d+)\.", k)))
        mult = tuple(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(levels))
        blocks = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k)))
        phis = 1 + max(int(m.group(1)) for k in sd
                       if (m := re.match(r"quantize\.quant_resi\.qresi_ls\.(\d+)\.", k)))
        vocab, z = sd["quantize.embedding.weight"].shape
    except (KeyError, ValueError, IndexError) as exc:
        raise FastervarError(f"{path}: cannot infer the VQVAE configuration, missing key {exc}") from None
    return VQVAEConfig(vocab_size=vocab, z_channels=z, ch=ch, ch_mult=mult, num_res_blocks=blocks,
                       in_channels=sd["encoder.conv_in.weight"].shape[1],
                       using_sa=f"encoder.down.{levels - 1}.attn.0.qkv.weight" in sd,
                       using_mid_sa="encoder.mid.attn_1.qkv.weight" in sd, phi_count=phis,
                       num_groups=OFFICIAL_VAE.num_groups)


def config_for(var_cfg: VARConfig, vae_cfg: VQVAEConfig) -> ModelConfig:
    """Name an inferred configuration after the official one it equals, if any."""
    for named in NAMED_CONFIGS.values():
        if named.var == var_cfg and named.vae == vae_cfg:
            return named
    return ModelConfig(f"custom-d{var_cfg.depth}", var_cfg, vae_cfg, "inferred from checkpoint")


def load_model(var_path: str | os.PathLike, vae_path: str | os.PathLike,
               config: ModelConfig | None = None) -> VARModel:
    """Build a model for the two files (inferring the configuration unless given) and load both."""
    var_p, vae_p = Path(var_path), Path(vae_path)
    var_sd = read_state_dict(var_p)
    _expect_kind(var_sd, var_p, "var")
    vae_sd = read_state_dict(vae_p)
    _expect_kind(vae_sd, vae_p, "vae")
    if config is None:
        var_cfg = infer_var_config(var_sd, var_p)
        vae_cfg = infer_vae_config(vae_sd, vae_p)
        config = config_for(var_cfg, vae_cfg)
    validate(config)
    model = VARModel(config)
    load_part(model.var, var_sd, var_p, "VAR")
    load_part(model.vae, vae_sd, vae_p, "VQVAE")
    return model.eval()


def _save(tensors: StateDict, dest: Path, metadata: dict[str, str]) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(dest), metadata=metadata)


def save_model_dir(model: VARModel, directory: str | os.PathLike) -> None:
    """Write `var.safetensors`, `vae.safetensors` and `config.json` as one folder, atomically: a
    reader never sees new weights beside an old config."""
    meta = {"format": "fastervar-model/1", "config": model.cfg.name}
    with atomic_dir(directory) as stage:
        _save(model.var.state_dict(), stage / "var.safetensors", meta)
        _save(model.vae.state_dict(), stage / "vae.safetensors", meta)
        (stage / "config.json").write_text(json.dumps(model.cfg.to_dict(), indent=2))


def read_folder_config(directory: str | os.PathLike) -> ModelConfig | None:
    """The configuration `save_model_dir` wrote into a folder, or None if it has no config.json."""
    cfg_path = Path(directory) / "config.json"
    try:
        data = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise FastervarError(f"cannot read {cfg_path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise FastervarError(f"{cfg_path}: malformed JSON ({exc})") from None
    return ModelConfig.from_dict(data)


def load_model_dir(directory: str | os.PathLike) -> VARModel:
    """Load a directory written by `save_model_dir`."""
    d = Path(directory)
    if not d.is_dir():
        raise FastervarError(f"model folder {d} does not exist")
    config = read_folder_config(d)
    if config is None:
        raise FastervarError(f"model directory {d} has no config.json")
    return load_model(d / "var.safetensors", d / "vae.safetensors", config)
