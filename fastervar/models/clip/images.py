"""Images into CLIP's vision tower exactly as the folder's preprocessor_config.json says: RGB,
bicubic resize of the short side, center crop, scale to [0, 1], normalize by its mean and std."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import FastervarError

_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Preprocess:
    short_side: int = 224
    crop: tuple[int, int] = (224, 224)          # (height, width)
    resample: int = Image.Resampling.BICUBIC
    scale: float = 1 / 255
    mean: tuple[float, ...] = _OPENAI_MEAN
    std: tuple[float, ...] = _OPENAI_STD

    @classmethod
    def from_folder(cls, folder: Path, image_size: int) -> Preprocess:
        """The folder's preprocessor_config.json, or CLIP's defaults at the tower's image size."""
        path = folder / "preprocessor_config.json"
        if not path.is_file():
            return cls(image_size, (image_size, image_size))
        try:
            d = json.loads(path.read_text())
            size, crop = d.get("size", image_size), d.get("crop_size", image_size)
            short = size.get("shortest_edge", size.get("height")) if isinstance(size, dict) else size
            crop = (crop["height"], crop["width"]) if isinstance(crop, dict) else (crop, crop)
            out = cls(int(short), (int(crop[0]), int(crop[1])), int(d.get("resample", Image.Resampling.BICUBIC)),
                      float(d.get("rescale_factor", 1 / 255)), tuple(float(x) for x in d.get("image_mean", _OPENAI_MEAN)),
                      tuple(float(x) for x in d.get("image_std", _OPENAI_STD)))
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise FastervarError(f"{path}: not a CLIP preprocessor config ({exc})") from None
        if len(out.mean) != 3 or len(out.std) != 3 or min(out.std) <= 0 or out.short_side <= 0 or min(out.crop) <= 0:
            raise FastervarError(f"{path}: image_mean/image_std need 3 values (std > 0) and sizes must be positive")
        return out

    def __call__(self, image: np.ndarray | Image.Image) -> np.ndarray:
        """(3, H, W) float32 for one uint8 image (H, W, 3), (H, W) or a PIL image."""
        pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
        pil = pil.convert("RGB")
        w, h = pil.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(self.short_side * long / short)
        size = (self.short_side, new_long) if w <= h else (new_long, self.short_side)
        x = np.asarray(pil.resize(size, resample=self.resample))
        ch, cw = self.crop
        top, left = (x.shape[0] - ch) // 2, (x.shape[1] - cw) // 2
        if top < 0 or left < 0:                 # a crop larger than the image: pad with zeros around it
            padded = np.zeros((max(ch, x.shape[0]), max(cw, x.shape[1]), 3), dtype=x.dtype)
            t0, l0 = (padded.shape[0] - x.shape[0]) // 2, (padded.shape[1] - x.shape[1]) // 2
            padded[t0:t0 + x.shape[0], l0:l0 + x.shape[1]] = x
            x = padded
            top, left = (x.shape[0] - ch) // 2, (x.shape[1] - cw) // 2
        x = (x[top:top + ch, left:left + cw] * self.scale).astype(np.float32)
        x = (x - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return x.transpose(2, 0, 1)
