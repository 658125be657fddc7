"""Writing generated images: numbered PNGs, staged so a failure leaves no partial set."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import FastervarError


def prepare_out_dir(out: str | os.PathLike) -> Path:
    """Create `out` if needed and prove it is writable, before any expensive work starts."""
    p = Path(out)
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=p, prefix=".fastervar-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise FastervarError(f"cannot write to output directory {p}: {exc.strerror or exc}") from None
    return p


@contextmanager
def output_dir(out: str | os.PathLike) -> Iterator[Path]:
    """`prepare_out_dir`, removing the directory again if it was new and the work fails."""
    existed = Path(out).exists()
    p = prepare_out_dir(out)
    try:
        yield p
    except BaseException:
        if not existed and not any(p.iterdir()):
            p.rmdir()
        raise


def write_pngs(images: np.ndarray, out: str | os.PathLike, start: int = 0) -> list[Path]:
    """Write (N, H, W, 3) uint8 images as 0000.png, 0001.png, ... all at once or not at all."""
    dest = prepare_out_dir(out)
    stage = Path(tempfile.mkdtemp(dir=dest, prefix=".fastervar-stage-"))
    try:
        names = []
        for i, img in enumerate(np.asarray(images, dtype=np.uint8)):
            name = f"{start + i:04d}.png"
            Image.fromarray(img).save(stage / name)
            names.append(name)
        for name in names:
            os.replace(stage / name, dest / name)
    except OSError as exc:
        raise FastervarError(f"cannot write images to {dest}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return [dest / n for n in names]


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


def save_png(image: np.ndarray, dest: str | os.PathLike) -> None:
    """Write one PNG atomically."""
    from .atomic import atomic_path
    with atomic_path(dest) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
