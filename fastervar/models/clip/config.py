"""A CLIP folder's architecture, read from its config.json (a CLIPModel, or a text-only
CLIPTextModel as Stable Diffusion 2.1's `text_encoder/`), with Hugging Face's defaults for the
keys a file leaves out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import FastervarError
from ..checkpoint import read_hf_config

ACTIVATIONS = ("quick_gelu", "gelu")


@dataclass(frozen=True)
class TowerConfig:
    """One transformer tower: pre-LN blocks of self-attention and a two-layer MLP."""

    width: int
    layers: int
    heads: int
    mlp: int
    act: str
    eps: float


@dataclass(frozen=True)
class TextConfig(TowerConfig):
    vocab: int
    positions: int                 # the context length, 77 for every released CLIP
    eos_id: int                    # 2 in configs saved before transformers fixed it: then the
    #                                pooled token is the highest id's (argmax), which is the end token


@dataclass(frozen=True)
class VisionConfig(TowerConfig):
    image_size: int
    patch: int
    channels: int


@dataclass(frozen=True)
class CLIPConfig:
    text: TextConfig
    vision: VisionConfig | None    # None for a text-only folder
    projection: int | None         # None for a text tower without a projection


_TOWER_DEFAULTS = {"text": {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
                            "num_attention_heads": 8, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
                            "vocab_size": 49408, "max_position_embeddings": 77, "eos_token_id": 49407},
                   "vision": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                              "num_attention_heads": 12, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
                              "image_size": 224, "patch_size": 32, "num_channels": 3}}


def _get(d: dict, key: str, kind: str, want: type, where: Path) -> Any:
    value = d.get(key, _TOWER_DEFAULTS[kind][key])
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, want) or isinstance(value, bool):
        raise FastervarError(f"{where}: {kind} config {key!r} must be {want.__name__}, got {value!r}")
    if want is int and value <= 0 and key != "eos_token_id":
        raise FastervarError(f"{where}: {kind} config {key!r} must be positive, got {value}")
    return value


def _tower(d: dict, kind: str, where: Path) -> dict[str, Any]:
    act = _get(d, "hidden_act", kind, str, where)
    if act not in ACTIVATIONS:
        raise FastervarError(f"{where}: {kind} activation {act!r} is not one CLIP uses ({', '.join(ACTIVATIONS)})")
    width, heads = _get(d, "hidden_size", kind, int, where), _get(d, "num_attention_heads", kind, int, where)
    if width % heads:
        raise FastervarError(f"{where}: {kind} width {width} is not a multiple of its {heads} heads")
    return {"width": width, "layers": _get(d, "num_hidden_layers", kind, int, where), "heads": heads,
            "mlp": _get(d, "intermediate_size", kind, int, where), "act": act,
            "eps": _get(d, "layer_norm_eps", kind, float, where)}


def text_config(d: dict, where: Path) -> TextConfig:
    return TextConfig(**_tower(d, "text", where), vocab=_get(d, "vocab_size", "text", int, where),
                      positions=_get(d, "max_position_embeddings", "text", int, where),
                      eos_id=_get(d, "eos_token_id", "text", int, where))


def vision_config(d: dict, where: Path) -> VisionConfig:
    cfg = VisionConfig(**_tower(d, "vision", where), image_size=_get(d, "image_size", "vision", int, where),
                       patch=_get(d, "patch_size", "vision", int, where),
                       channels=_get(d, "num_channels", "vision", int, where))
    if cfg.image_size % cfg.patch:
        raise FastervarError(f"{where}: image size {cfg.image_size} is not a multiple of patch {cfg.patch}")
    return cfg


def read_config(folder: Path) -> CLIPConfig:
    """The folder's CLIP architecture; anything else (a missing or malformed config.json, another
    model type) is one line."""
    where = folder / "config.json"
    d = read_hf_config(folder, "CLIP")
    if not isinstance(d, dict):
        raise FastervarError(f"{where}: not a config object")
    kind = d.get("model_type")
    if kind == "clip":
        for part in ("text_config", "vision_config"):
            if not isinstance(d.get(part) or {}, dict):
                raise FastervarError(f"{where}: {part} must be an object")
        projection = d.get("projection_dim", 512)
        if not isinstance(projection, int) or isinstance(projection, bool) or projection <= 0:
            raise FastervarError(f"{where}: projection_dim must be a positive integer, got {projection!r}")
        return CLIPConfig(text_config(d.get("text_config") or {}, where),
                          vision_config(d.get("vision_config") or {}, where), projection)
    if kind == "clip_text_model":
        with_projection = "CLIPTextModelWithProjection" in (d.get("architectures") or [])
        return CLIPConfig(text_config(d, where), None, d.get("projection_dim", 512) if with_projection else None)
    raise FastervarError(f"{where}: model_type {kind!r} is not a CLIP model (clip or clip_text_model)")
