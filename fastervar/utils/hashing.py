"""SHA-256 of files and of named arrays: what ties a bundle to its files and a profile to its weights."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np


def file_sha256(path: str | Path) -> str:
    """Hex digest of a file, read in 16 MiB chunks so a large weights file is never held whole."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def arrays_sha256(named: Iterable[tuple[str, np.ndarray]]) -> str:
    """Hex digest of (name, array) pairs in the given order: each name, then the array's bytes."""
    h = hashlib.sha256()
    for name, array in named:
        h.update(name.encode())
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()
