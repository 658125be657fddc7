"""`fastervar clip-score`: score a folder of PNGs against their prompts with a CLIP folder."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import FastervarError
from .app import main
from .options import check_writable_parent, write_json


def read_pngs(folder: Path) -> list:
    """The folder's PNGs in name order, as uint8 arrays; an unreadable one is one line."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    if not paths:
        raise FastervarError(f"{folder}: no PNG images")
    images = []
    for p in paths:
        try:
            with Image.open(p) as im:
                images.append(np.asarray(im.convert("RGB")))
        except (OSError, UnidentifiedImageError) as exc:
            raise FastervarError(f"{p}: not a readable PNG ({exc})") from None
    return images


@main.command("clip-score")
@click.argument("images_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--prompts", "prompts_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="One prompt per line, the i-th for the i-th PNG in name order.")
@click.option("--clip", "clip_dir", required=True, type=click.Path(path_type=Path),
              help="A Hugging Face CLIP folder (config.json, weights, tokenizer, preprocessor_config.json).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write {clip_score, per_image} here.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
def clip_score(images_dir: Path, prompts_file: str, clip_dir: Path, json_out: str | None, device: str,
               batch_size: int) -> None:
    """CLIP score of each image against its prompt: 100 * max(cos, 0), and their mean."""
    from ..evaluate.clip_metrics import ClipFeatures, clip_scores
    from ..models.clip.loading import load_clip
    from ..models.loading import resolve_device
    from ..utils.tokens import read_prompts
    if json_out:
        check_writable_parent(json_out)
    prompts = read_prompts((), prompts_file)
    images = read_pngs(images_dir)
    if len(prompts) != len(images):
        raise FastervarError(f"{prompts_file} has {len(prompts)} prompts but {images_dir} has {len(images)} PNGs: "
                             f"give one prompt line per image")
    judge = load_clip(clip_dir, resolve_device(device))
    scores = clip_scores(ClipFeatures(judge, batch_size), images, prompts)
    result = {"clip_score": float(scores.mean()), "per_image": [float(s) for s in scores],
              "images": len(images), "clip": str(clip_dir)}
    click.echo(f"CLIP score {result['clip_score']:.3f} over {len(images)} images")
    if json_out:
        write_json(result, json_out)
