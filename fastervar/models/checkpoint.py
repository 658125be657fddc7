"""Checkpoint I/O shared by the families: reading a state dict safely, strict key checks, telling
which family a file holds, and the weights hash that ties a profile to its weights.

Every failure is a FastervarError naming the file and the first offending key with both shapes,
because a silently half-loaded generator still makes images, just wrong ones. Pickles are read
with `weights_only=True` only.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import FastervarError
from ..utils.hashing import arrays_sha256

StateDict = dict[str, torch.Tensor]


_VAE_PREFIXES = ("encoder.", "decoder.", "quantize.", "quant_conv.", "post_quant_conv.")


def read_state_dict(path: str | os.PathLike, unwrap: str | tuple[str, ...] | None = None) -> StateDict:
    """Read a plain state dict from .safetensors or a torch pickle, refusing anything else; with
    `unwrap`, a pickle may also hold it under that key, or that path of keys (Infinity's VAE file
    is `{"vae": sd}`, STAR's training checkpoint `{"trainer": {"var_wo_ddp": sd}}`)."""
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
            sd = _torch_load(p)
        except pickle.UnpicklingError as exc:
            raise FastervarError(f"{p}: refused to load, it is not a plain weights file "
                                 f"({_first_line(exc)})") from None
        except Exception as exc:  # noqa: BLE001 - torch.load raises many types for a bad file
            raise FastervarError(f"{p}: not a readable checkpoint, the file is corrupt or truncated "
                                 f"({_first_line(exc)})") from None
        for key in (unwrap,) if isinstance(unwrap, str) else unwrap or ():
            if isinstance(sd, dict) and isinstance(sd.get(key), dict):
                sd = sd[key]
    if isinstance(sd, dict) and isinstance(sd.get("trainer"), dict) and "var_wo_ddp" in sd["trainer"]:
        raise FastervarError(f"{p}: a training checkpoint holding a STAR transformer (['trainer']['var_wo_ddp']); "
                             f"it loads as a STAR model (--model star-*, or no --model)")
    if not isinstance(sd, dict) or not sd or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise FastervarError(f"{p}: not a state dict (expected a mapping of names to tensors)")
    return sd


def read_hf_config(folder: Path, what: str, named: str = ""):
    """A Hugging Face folder's config.json, parsed (the caller checks its shape); a missing,
    unreadable or malformed one is one line (`named` prefixes the folder: the option that gave it)."""
    where = folder / "config.json"
    try:
        d = json.loads(where.read_text())
    except FileNotFoundError:
        raise FastervarError(f"{named}{folder}: no config.json (give a Hugging Face {what} folder)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FastervarError(f"{where}: malformed JSON ({exc})") from None
    except OSError as exc:
        raise FastervarError(f"cannot read {where}: {exc.strerror or exc}") from None
    return d


def read_hf_weights(folder: Path, what: str) -> StateDict:
    """A Hugging Face folder's tensors: model.safetensors (or its shards), else pytorch_model.bin,
    each read by `read_state_dict` (safetensors, or a pickle with weights_only=True)."""

    def read(name: str) -> StateDict:
        try:
            return read_state_dict(folder / name)
        except FastervarError as exc:
            raise FastervarError(f"cannot read the {what} weights: {exc}") from None

    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise FastervarError(f"{index}: not a shard index ({_first_line(exc)})") from None
        if not all(isinstance(s, str) and "/" not in s and "\\" not in s and s not in ("", ".", "..")
                   for s in shards):
            raise FastervarError(f"{index}: shard names must be files of the folder")
        return {k: v for s in shards for k, v in read(s).items()}
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).exists():
            return read(name)
    raise FastervarError(f"{folder} has no model.safetensors, shard index or pytorch_model.bin")


def _torch_load(p: Path):
    """A weights-only pickle, memory-mapped where its format allows: the tensors stay pages of the
    file until read, so loading does not hold a second copy of the weights beside the model's."""
    try:
        return torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        return torch.load(p, map_location="cpu", weights_only=True)      # the legacy (pre-zip) format


def assign_state_dict(module: torch.nn.Module, sd: StateDict) -> None:
    """Load a checked state dict by taking its tensors instead of copying them into the module's
    (a memory-mapped file's pages then serve as the weights, and the module's own initial tensors
    are freed); a tensor stored in another dtype is cast to the module's, as a copying load does."""
    own = {k: v.dtype for k, v in module.state_dict().items()}
    sd = {k: v if v.dtype == own[k] else v.to(own[k]) for k, v in sd.items()}
    module.load_state_dict(sd, strict=True, assign=True)


def load_part(module: torch.nn.Module, sd: StateDict, path: Path, what: str) -> None:
    """Check a file's state dict strictly against one part of a model and assign it; the VQVAE's
    usage table (`ema_vocab_hit_SV`, one row per scale) keeps the model's own where the schedule
    differs, as upstream does."""
    own = module.state_dict()
    check_strict(own, sd, path, what)
    sd = dict(sd)
    hits = "quantize.ema_vocab_hit_SV"
    if hits in sd and sd[hits].shape != own[hits].shape:
        sd[hits] = own[hits]
    del own
    assign_state_dict(module, sd)


def weights_from(name: str | None, checkpoint: str | None, vae_checkpoint: str | None, random_weights: bool,
                 family: str) -> str:
    """Which source the CLI's weight options name, 'random' or 'files', or one line saying what is
    missing or contradictory."""
    if random_weights:
        if checkpoint or vae_checkpoint:
            raise FastervarError("--random-weights cannot be combined with checkpoint files")
        if name is None:
            raise FastervarError("--random-weights needs --model NAME")
        return "random"
    if not (checkpoint and vae_checkpoint):
        raise FastervarError(f"{name or family} has no shipped weights: give --checkpoint (the transformer) and "
                             f"--vae-checkpoint, or --random-weights")
    return "files"


def weights_sha256(model) -> str:
    """Hash of every tensor of a step-protocol model (its `state_parts`, each in key order): ties a
    profile to the weights it was made on."""
    return arrays_sha256((k, v.detach().cpu().contiguous().numpy())
                         for part in model.state_parts() for k, v in part.state_dict().items())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


def names_infinity(keys) -> bool:
    """Whether state-dict key names are an Infinity transformer's (its null prompt, its block chunks)."""
    return any(k == "cfg_uncond" or str(k).startswith("block_chunks.") for k in keys)


def names_star(keys) -> bool:
    """Whether state-dict key names are a STAR transformer's (VAR's blocks, with a text projection)."""
    return any(k == "encoder_proj.weight" for k in keys)


def checkpoint_kind(sd: StateDict) -> str:
    """'vae', 'var', 'infinity', 'star' or 'unknown', judged from the key names."""
    if any(k.startswith(_VAE_PREFIXES) for k in sd):
        return "vae"
    if names_star(sd):
        return "star"
    if "class_emb.weight" in sd or any(k.startswith("blocks.") for k in sd):
        return "var"
    if names_infinity(sd):
        return "infinity"
    return "unknown"


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
