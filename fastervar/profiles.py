"""The shipped profiles (`fastervar/assets/profiles/*.json`, installed with the package) and resolving
`--profile`.

`--profile` takes a path to a JSON file or the name of a shipped profile. No torch import.
"""

from __future__ import annotations

from pathlib import Path

from .assets import PROFILES_DIR
from .errors import FastervarError
from .profile import Profile, load


def shipped() -> dict[str, Path]:
    """Name -> path of every shipped profile."""
    if not PROFILES_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(PROFILES_DIR.glob("*.json"))}


def resolve(spec: str) -> Profile:
    """A profile from a file path or a shipped name, validated (not yet against a model)."""
    path = Path(spec)
    if path.suffix == ".json" or path.exists():
        return load(path)
    found = shipped()
    if spec not in found:
        names = ", ".join(found) or "none"
        raise FastervarError(f"unknown profile {spec!r}: not a file, and not a shipped profile ({names})")
    return load(found[spec])
