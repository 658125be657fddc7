"""Image files and conversions: numbered PNG folders written whole or not at all, single PNGs,
grids, and grey digits in the RGB layout generated images have."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import FastervarError
from .atomic import atomic_dir, atomic_path

_NUMBERED = re.compile(r"\d{4,}\.png")


def check_image_target(out: str | os.PathLike) -> Path:
    """An image folder replaces an older one of ours, never a folder holding anything else: checked
    before any work, so a wrong `--out` costs nothing."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise FastervarError(f"--out {p} exists and is not a directory")
    if p.is_dir():
        other = sorted(e.name for e in p.iterdir() if not _NUMBERED.fullmatch(e.name))
        if other:
            raise FastervarError(f"--out {p} holds files that are not generated images ({other[0]}); "
                                 f"choose a new or empty directory")
    return p


@contextmanager
def image_folder(out: str | os.PathLike) -> Iterator[Path]:
    """A staging folder beside `out`; when the block succeeds it becomes `out` in one rename (an
    older image folder there is replaced), when it fails or is interrupted it is removed."""
    with atomic_dir(check_image_target(out)) as stage:
        yield stage


def write_pngs(images: np.ndarray, folder: str | os.PathLike, start: int = 0) -> list[Path]:
    """(N, H, W, 3) uint8 images as 0000.png, 0001.png, ... in `folder` (a staging folder from
    `image_folder`, which makes the set appear at once)."""
    folder = Path(folder)
    paths = []
    try:
        for i, img in enumerate(np.asarray(images, dtype=np.uint8)):
            path = folder / f"{start + i:04d}.png"
            Image.fromarray(img).save(path)
            paths.append(path)
    except OSError as exc:
        raise FastervarError(f"cannot write images to {folder}: {exc.strerror or exc}") from None
    return paths


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def save_png(image: np.ndarray, dest: str | os.PathLike) -> None:
    """Write one PNG atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(png_bytes(image))


def tile_grid(images: np.ndarray, rows: int, scale: int = 2, pad: int = 2) -> np.ndarray:
    """Tile (N, H, W, 3) uint8 images row-major into one picture, upscaled by nearest neighbour."""
    n, h, w, c = images.shape
    cols = -(-n // rows)
    big = images.repeat(scale, axis=1).repeat(scale, axis=2)
    hh, ww = h * scale + pad, w * scale + pad
    grid = np.full((rows * hh + pad, cols * ww + pad, c), 255, dtype=np.uint8)
    for i, img in enumerate(big):
        r, q = divmod(i, cols)
        grid[pad + r * hh: pad + r * hh + h * scale, pad + q * ww: pad + q * ww + w * scale] = img
    return grid


def grey_to_rgb(images: np.ndarray, pad: int = 2) -> np.ndarray:
    """(N, h, w) uint8 grey to (N, h + 2 pad, w + 2 pad, 3) uint8: Fashion-MNIST's 28 px digits in
    the 32 px layout the embedded models generate."""
    x = np.pad(images, ((0, 0), (pad, pad), (pad, pad)))
    return np.repeat(x[..., None], 3, axis=-1)
