"""Fashion-MNIST from the Debian package `dataset-fashion-mnist`, as 3-channel 32x32 tensors."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from ..errors import FastervarError

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def _read_idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    return np.frombuffer(data, dtype=np.uint8, offset=header)


def load_split(split: str, root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N, 28, 28) uint8 images and (N,) int64 labels of the 'train' or 'test' split."""
    d = Path(root) if root else DEFAULT_DIR
    img_name, lbl_name = _FILES[split]
    if not (d / img_name).exists():
        raise FastervarError(f"Fashion-MNIST not found in {d}: install the Debian package "
                             f"dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
                             f"or pass --data DIR")
    try:
        images = _read_idx(d / img_name, 16).reshape(-1, 28, 28)
        labels = _read_idx(d / lbl_name, 8).astype(np.int64)
    except (OSError, ValueError, EOFError) as exc:
        raise FastervarError(f"cannot read Fashion-MNIST from {d}: {exc}") from None
    if len(images) != len(labels):
        raise FastervarError(f"Fashion-MNIST in {d} is inconsistent: {len(images)} images, {len(labels)} labels")
    return images, labels


def to_model_space(images: np.ndarray) -> np.ndarray:
    """(N, 28, 28) uint8 to (N, 3, 32, 32) float32 in [-1, 1]: padded by 2, grey in all channels."""
    x = np.pad(images, ((0, 0), (2, 2), (2, 2))).astype(np.float32) / 127.5 - 1.0
    return np.repeat(x[:, None], 3, axis=1)

