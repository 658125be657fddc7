"""STAR's prompts: SD-2.1's CLIP text encoding of each prompt (all 77 tokens, the padding mask and
the pooled end token) and of the empty prompt, which guidance uses as its null row.

They come from a `--text-embeddings` file or from `--text-encoder DIR` (SD-2.1's `text_encoder/`
folder, a `CLIPTextModel` layout, run by the clean-room CLIP text tower).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...errors import FastervarError

ROW_ARRAYS = ("embeddings", "pooled", "mask")
NULL_ARRAYS = ("null_embeddings", "null_pooled", "null_mask")


@dataclass
class StarText:
    """Prompts (N, 77, C) / (N, C) / (N, 77) and the empty prompt's rows (1, ...)."""

    embeddings: torch.Tensor
    pooled: torch.Tensor
    mask: torch.Tensor
    null_embeddings: torch.Tensor
    null_pooled: torch.Tensor
    null_mask: torch.Tensor

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    @property
    def channels(self) -> int:
        return self.embeddings.shape[-1]

    def rows(self, index: list[int]) -> StarText:
        return StarText(self.embeddings[index], self.pooled[index], self.mask[index],
                        self.null_embeddings, self.null_pooled, self.null_mask)

    def guided(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(text, pooled, mask) of the 2N rows upstream runs: the prompts, then N empty prompts."""
        n = len(self)
        return (torch.cat([self.embeddings, self.null_embeddings.expand(n, -1, -1)]),
                torch.cat([self.pooled, self.null_pooled.expand(n, -1)]),
                torch.cat([self.mask, self.null_mask.expand(n, -1)]))


def read_star_embeddings(path: str | Path) -> StarText:
    """A `.npz` (never unpickled) with the prompts' `embeddings` (N, 77, C) float32, `pooled`
    (N, C), `mask` (N, 77) of 0/1, and the empty prompt's `null_embeddings`, `null_pooled`,
    `null_mask` (1, ...)."""
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as data:
            missing = [k for k in ROW_ARRAYS + NULL_ARRAYS if k not in data.files]
            if missing:
                raise FastervarError(f"{p}: a STAR embeddings file needs {', '.join(ROW_ARRAYS + NULL_ARRAYS)}; "
                                     f"missing {', '.join(missing)}")
            arrays = {k: data[k] for k in ROW_ARRAYS + NULL_ARRAYS}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise FastervarError(f"{p}: not a readable .npz file ({str(exc).splitlines()[0] if str(exc) else exc})") \
            from None
    for key, v in arrays.items():
        kinds = "iub" if key.endswith("mask") else "f"
        if v.dtype.kind not in kinds:
            raise FastervarError(f"{p}: '{key}' must be {'integers' if kinds == 'iub' else 'floats'}, got {v.dtype}")
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            raise FastervarError(f"{p}: '{key}' holds NaN or infinite values")
    for prefix, count in (("", None), ("null_", 1)):
        emb, pooled, mask = (arrays[prefix + k] for k in ROW_ARRAYS)
        n = emb.shape[0] if emb.ndim == 3 else -1
        if emb.ndim != 3 or n < 1 or (count and n != count):
            raise FastervarError(f"{p}: '{prefix}embeddings' must be ({count or 'N'}, T, C), got {emb.shape}")
        if pooled.shape != (n, emb.shape[2]):
            raise FastervarError(f"{p}: '{prefix}pooled' must be {(n, emb.shape[2])}, got {pooled.shape}")
        if mask.shape != emb.shape[:2] or not np.isin(mask, (0, 1)).all():
            raise FastervarError(f"{p}: '{prefix}mask' must be {emb.shape[:2]} of 0/1, got {mask.shape}")
        if not (mask.sum(1) >= 1).all():
            raise FastervarError(f"{p}: every row of '{prefix}mask' must keep at least one token")
    if arrays["null_embeddings"].shape[1:] != arrays["embeddings"].shape[1:]:
        raise FastervarError(f"{p}: the null rows {arrays['null_embeddings'].shape[1:]} and the prompts "
                             f"{arrays['embeddings'].shape[1:]} differ in shape")
    t = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.int64 if k.endswith("mask") else np.float32))
         for k, v in arrays.items()}
    return StarText(**t)


class StarTextEncoder:
    """SD-2.1's CLIP text encoder folder, with its tokenizer (in the folder or its `../tokenizer`)."""

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu"):
        from ..clip.loading import load_clip
        folder = Path(folder)
        judge = load_clip(folder, device)
        tokenizer = judge.tokenizer
        if tokenizer is None and (folder.parent / "tokenizer").is_dir():
            from ..clip.tokenizer import CLIPTokenizer
            tokenizer = CLIPTokenizer(folder.parent / "tokenizer", judge.model.text_model.cfg.positions)
        if tokenizer is None:
            raise FastervarError(f"{folder}: no tokenizer beside the text encoder (tokenizer.json or vocab.json + "
                                 f"merges.txt, in the folder or in ../tokenizer)")
        self.model, self.tokenizer = judge.model.text_model, tokenizer

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> StarText:
        """The prompts and the empty prompt, as upstream encodes them."""
        ids, mask = self.tokenizer(list(prompts) + [""])
        ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
        device = next(self.model.parameters()).device
        hidden, pooled = self.model(ids_t.to(device), mask_t.to(device))
        hidden, pooled = hidden.float().cpu(), pooled.float().cpu()
        return StarText(hidden[:-1], pooled[:-1], mask_t[:-1], hidden[-1:], pooled[-1:], mask_t[-1:])


def star_prompts(prompts: list[str], text_encoder: str | None, embeddings_file: str | None) -> StarText:
    """The prompts encoded by SD-2.1's text encoder folder, or the rows of an embeddings file."""
    from ..text.prompts import prompt_source
    if prompt_source(prompts, text_encoder, embeddings_file, "SD-2.1's text_encoder folder") == "file":
        return read_star_embeddings(embeddings_file)
    return StarTextEncoder(text_encoder).encode(prompts)
