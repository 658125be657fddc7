"""Where the files shipped inside the package live. No torch import."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent / "assets"
PROFILES_DIR = ROOT / "profiles"
EMBEDDED_MODEL_NAME = "fashion-16"


def shipped_model_dir(name: str) -> Path:
    """Where a model shipped with the package keeps its weights and config.json."""
    return ROOT / name
