"""Load a CLIP folder as users have it: config.json, the weights (safetensors, or
pytorch_model.bin read with weights_only), the tokenizer and the preprocessor config; strictly,
naming the first bad key. A text-only folder (`CLIPTextModel`, SD-2.1's `text_encoder/`) loads
the text tower alone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...errors import FastervarError
from ..checkpoint import assign_state_dict, check_strict, read_hf_weights
from .config import read_config
from .images import Preprocess
from .tokenizer import CLIPTokenizer
from .towers import CLIP

# keys some savers keep that are not weights: position indices
_NOT_WEIGHTS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


@dataclass
class ClipJudge:
    """A loaded CLIP folder: the model, its tokenizer (when the folder has one) and preprocessing."""

    model: CLIP
    tokenizer: CLIPTokenizer | None
    preprocess: Preprocess | None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Projected text embeddings (N, P) for prompts."""
        if self.tokenizer is None:
            raise FastervarError("this CLIP folder has no tokenizer (tokenizer.json, or vocab.json and merges.txt)")
        ids, mask = self.tokenizer(prompts)
        return self.model.text_features(torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device))

    def encode_images(self, images: list[np.ndarray]) -> torch.Tensor:
        """Projected image embeddings (N, P) for uint8 images (H, W, 3) or (H, W)."""
        if self.preprocess is None:
            raise FastervarError("this CLIP folder is text-only: it cannot score images")
        pixels = torch.from_numpy(np.stack([self.preprocess(im) for im in images])).to(self.device)
        return self.model.image_features(pixels)


def clip_identity(folder: str | Path) -> str:
    """What identifies a CLIP folder for caches: its config and its weight files' names, sizes and
    modification times (hashing gigabytes of weights on every run would cost more than it saves)."""
    import hashlib
    folder = Path(folder)
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def load_clip(folder: str | Path, device: str | torch.device = "cpu") -> ClipJudge:
    folder = Path(folder)
    if not folder.is_dir():
        raise FastervarError(f"--clip {folder}: not a folder (give a Hugging Face CLIP folder)")
    cfg = read_config(folder)
    sd = {k: v for k, v in read_hf_weights(folder, "CLIP").items() if k not in _NOT_WEIGHTS}
    if cfg.vision is None and not any(k.startswith("text_model.") for k in sd):
        # a text tower saved by transformers 5 drops the `text_model.` prefix older savers wrote
        sd = {k if k.startswith("text_projection.") else f"text_model.{k}": v for k, v in sd.items()}
        sd.pop("text_model.embeddings.position_ids", None)
    model = CLIP(cfg)
    check_strict(model.state_dict(), sd, folder, "CLIP")
    assign_state_dict(model, sd)
    model = model.eval().to(device)
    has_tokenizer = (folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file()
    tokenizer = CLIPTokenizer(folder, cfg.text.positions) if has_tokenizer else None
    preprocess = Preprocess.from_folder(folder, cfg.vision.image_size) if cfg.vision is not None else None
    return ClipJudge(model, tokenizer, preprocess)
