"""Prompt embeddings from a `.npz` file, read without torch: the toolchain and the torch-free
runtime take the same `--text-embeddings` files, checked the same way."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..errors import FastervarError


def read_embeddings(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """`embeddings` (N, T, C) float32, zero-padded, and `lengths` (N,) int64 from a `.npz`
    (never unpickled); every problem is one line naming the file."""
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as data:
            if "embeddings" not in data or "lengths" not in data:
                raise FastervarError(f"{p}: needs arrays 'embeddings' (N, T, C) and 'lengths' (N,); "
                                     f"found {', '.join(data.files) or 'none'}")
            emb, lengths = data["embeddings"], data["lengths"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise FastervarError(f"{p}: not a readable .npz file ({str(exc).splitlines()[0] if str(exc) else exc})") \
            from None
    if emb.ndim != 3 or emb.dtype != np.float32:
        raise FastervarError(f"{p}: 'embeddings' must be float32 (N, T, C), got {emb.dtype} {emb.shape}")
    if lengths.shape != (emb.shape[0],) or not np.issubdtype(lengths.dtype, np.integer):
        raise FastervarError(f"{p}: 'lengths' must be ({emb.shape[0]},) integers, got {lengths.dtype} {lengths.shape}")
    if len(lengths) == 0 or lengths.min() < 1 or lengths.max() > emb.shape[1]:
        raise FastervarError(f"{p}: every length must be in 1..{emb.shape[1]}")
    return emb, lengths.astype(np.int64)
