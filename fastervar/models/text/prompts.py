"""Prompts as a text-conditioned model takes them: T5 embeddings at each prompt's true length.

A batch is padded (N, T, C) float32 plus (N,) lengths. It comes from the T5 encoder (`t5.py`)
or from a `--text-embeddings` file, for tests and for users who encode prompts elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ...errors import FastervarError
from ...utils.embeddings import read_embeddings


@dataclass
class TextBatch:
    embeddings: torch.Tensor      # (N, T, C) float32, zero beyond each prompt's length
    lengths: torch.Tensor         # (N,) int64, each >= 1

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def rows(self, index: list[int]) -> TextBatch:
        """The prompts at `index`, trimmed to their longest length."""
        lengths = self.lengths[index]
        return TextBatch(self.embeddings[index, :int(lengths.max())], lengths)


def read_text_embeddings(path: str | Path) -> TextBatch:
    """Read a `.npz` with `embeddings` (N, T, C) float32, zero-padded, and `lengths` (N,) int."""
    emb, lengths = read_embeddings(path)
    return TextBatch(torch.from_numpy(emb.copy()), torch.from_numpy(lengths))


def prompt_source(prompts: list[str], text_encoder: str | None, embeddings_file: str | None, encoder: str) -> str:
    """Where a text model's prompts come from, 'file' or 'encoder', or one line saying what is
    missing or contradictory; `encoder` names the folder the family's encoder is."""
    if embeddings_file:
        if text_encoder or prompts:
            raise FastervarError("--text-embeddings already holds the prompts: give it without "
                                 "--prompt/--prompts/--text-encoder")
        return "file"
    if not text_encoder:
        raise FastervarError(f"a text-to-image model needs --text-encoder DIR ({encoder}) "
                             f"or --text-embeddings FILE.npz")
    if not prompts:
        raise FastervarError("no prompts given: use --prompt TEXT (repeatable) or --prompts FILE")
    return "encoder"


def text_batch(prompts: list[str], text_encoder: str | None, embeddings_file: str | None) -> TextBatch:
    """The prompts encoded by the T5 folder, or the rows of an embeddings file (which then stand
    for the images, in order, and take no prompts)."""
    if prompt_source(prompts, text_encoder, embeddings_file, "a Flan-T5 folder") == "file":
        return read_text_embeddings(embeddings_file)
    from .t5 import TextEncoder
    emb, lengths = TextEncoder.from_folder(text_encoder).encode(prompts)
    return TextBatch(torch.from_numpy(emb), torch.from_numpy(lengths))
