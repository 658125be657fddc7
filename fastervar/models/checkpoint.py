"""Checkpoint I/O: the released .pth state dicts and our safetensors, checked strictly.

Every failure is a FastervarError naming the file and the first offending key with both shapes,
because a silently half-loaded generator still makes images, just wrong ones. Pickles are read
with `weights_only=True` only.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import FastervarError
from ..utils.atomic import atomic_dir
from ..utils.hashing import arrays_sha256
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

StateDict = dict[str, torch.Tensor]
_VAE_PREFIXES = ("encoder.", "decoder.", "quantize.", "quant_conv.", "post_quant_conv.")
_SCHEDULES = {sum(p * p for p in s): s for s in (SCHEDULE_256, SCHEDULE_512)}


def read_state_dict(path: str | os.PathLike, unwrap: str | None = None) -> StateDict:
    """Read a plain state dict from .safetensors or a torch pickle, refusing anything else; with
    `unwrap`, a pickle may also hold it under that key (Infinity's VAE file is `{"vae": sd}`)."""
    p = Path(path)
    if not p.exists():
        raise FastervarError(f"checkpoint not found: {p}")
    if not p.is_file():
        raise FastervarError(f"checkpoint is not a file: {p}")
    if p.suffix == ".safetensors":
        try:
            sd = load_file(str(p), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise FastervarError(f"{p}: not a readable safetensors file ({_first_line(exc)})") from None
    else:
        try:
            sd = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise FastervarError(f"{p}: refused to load, it is not a plain weights file "
                                 f"({_first_line(exc)})") from None
        except Exception as exc:  # noqa: BLE001 - torch.load raises many types for a bad file
            raise FastervarError(f"{p}: not a readable checkpoint, the file is corrupt or truncated "
                                 f"({_first_line(exc)})") from None
        if unwrap and isinstance(sd, dict) and isinstance(sd.get(unwrap), dict):
            sd = sd[unwrap]
    if not isinstance(sd, dict) or not sd or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise FastervarError(f"{p}: not a state dict (expected a mapping of names to tensors)")
    return sd


def weights_sha256(model: VARModel) -> str:
    """Hash of every tensor of the model in key order: ties a profile to the weights it was made on."""
    return arrays_sha256((k, v.detach().cpu().contiguous().numpy())
                         for part in (model.var, model.vae) for k, v in part.state_dict().items())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


def names_infinity(keys) -> bool:
    """Whether state-dict key names are an Infinity transformer's (its null prompt, its block chunks)."""
    return any(k == "cfg_uncond" or str(k).startswith("block_chunks.") for k in keys)


def checkpoint_kind(sd: StateDict) -> str:
    """'vae', 'var' or 'unknown', judged from the key names."""
    if any(k.startswith(_VAE_PREFIXES) for k in sd):
        return "vae"
    if "class_emb.weight" in sd or any(k.startswith("blocks.") for k in sd):
        return "var"
    if names_infinity(sd):
        return "infinity"
    return "unknown"


def _expect_kind(sd: StateDict, path: Path, want: str) -> None:
    kind = checkpoint_kind(sd)
    if kind == want:
        return
    flag = {"var": "--var-checkpoint", "vae": "--vae-checkpoint"}[want]
    if kind == "unknown":
        raise FastervarError(f"{path}: not a {want.upper()} checkpoint (first key {next(iter(sd))!r})")
    if kind == "infinity":
        raise FastervarError(f"{path} is an Infinity (text-to-image) transformer; this command takes class-"
                             f"conditional VAR models (Infinity runs in `fastervar generate`)")
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


def check_strict(model_sd: StateDict, file_sd: StateDict, path: Path, what: str) -> None:
    """Fail on the first missing, unexpected or mis-shaped key, in the model's key order."""
    for key, want in model_sd.items():
        if key not in file_sd:
            raise FastervarError(f"{path}: {what} checkpoint is missing key {key!r} "
                                 f"(model expects shape {tuple(want.shape)})")
        got = file_sd[key]
        if got.shape != want.shape and key != "quantize.ema_vocab_hit_SV":
            raise FastervarError(f"{path}: {what} checkpoint does not match the model at key {key!r}: "
                                 f"file has shape {tuple(got.shape)}, model expects {tuple(want.shape)}")
    for key, got in file_sd.items():
        if key not in model_sd:
            raise FastervarError(f"{path}: {what} checkpoint has unexpected key {key!r} "
                                 f"(shape {tuple(got.shape)}); the model has no such parameter")


def _load_part(module: torch.nn.Module, sd: StateDict, path: Path, what: str) -> None:
    own = module.state_dict()
    check_strict(own, sd, path, what)
    sd = dict(sd)
    hits = "quantize.ema_vocab_hit_SV"
    if hits in sd and sd[hits].shape != own[hits].shape:
        sd[hits] = own[hits]          # usage statistics only; their row count follows the schedule
    module.load_state_dict(sd, strict=True)


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
    _load_part(model.var, var_sd, var_p, "VAR")
    _load_part(model.vae, vae_sd, vae_p, "VQVAE")
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
