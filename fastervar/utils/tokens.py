"""Prompts to T5 token ids with a folder's `tokenizer.json`, cut as Hugging Face's T5 tokenizer cuts
them. Torch-free: the toolchain's encoder and the runtime's bundled text encoder both tokenize here."""

from __future__ import annotations

import warnings
from pathlib import Path

from ..errors import FastervarError


class PromptTokenizer:
    """A `tokenizers` tokenizer and the longest prompt the encoder takes, in tokens."""

    def __init__(self, tokenizer, max_length: int = 512):
        self.tokenizer, self.max_length = tokenizer, max_length
        self.eos = tokenizer.token_to_id("</s>")
        self._warned = False

    @classmethod
    def from_file(cls, path: str | Path, max_length: int = 512) -> PromptTokenizer:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise FastervarError("encoding prompts needs the tokenizers package (pip install tokenizers)") from None
        path = Path(path)
        if not path.is_file():
            raise FastervarError(f"{path.parent}: no tokenizer.json (save the tokenizer with the model)")
        try:
            return cls(Tokenizer.from_file(str(path)), max_length)
        except Exception as exc:  # noqa: BLE001 -- tokenizers raises untyped errors for bad files
            raise FastervarError(f"{path}: not a tokenizer ({str(exc).splitlines()[0]})") from None

    def count(self, prompt: str) -> int:
        """How many tokens `prompt` is before any cut (a server refuses what is too long)."""
        return len(self.tokenizer.encode(prompt).ids)

    def ids(self, prompts: list[str]) -> list[list[int]]:
        """Each prompt's ids; one longer than `max_length` keeps its first `max_length - 1` tokens
        and its closing `</s>`, as Hugging Face's T5 tokenizer truncates (warned once)."""
        out = []
        for prompt, enc in zip(prompts, self.tokenizer.encode_batch(prompts)):
            ids = list(enc.ids)
            if len(ids) > self.max_length:
                if not self._warned:
                    warnings.warn(f"a prompt of {len(ids)} tokens is longer than the encoder's {self.max_length}; "
                                  f"it is cut to its first {self.max_length - 1} and </s> "
                                  f"({prompt[:40]!r}...)", stacklevel=2)
                    self._warned = True
                ids = ids[: self.max_length - 1] + ids[-1:] if ids[-1] == self.eos else ids[: self.max_length]
            out.append(ids)
        return out


def read_prompts(prompts: tuple[str, ...], prompts_file: str | None) -> list[str]:
    """`--prompt` values, then the non-empty lines of `--prompts FILE`, in order."""
    out = list(prompts)
    if prompts_file:
        try:
            out += [line.strip() for line in Path(prompts_file).read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise FastervarError(f"cannot read --prompts file {prompts_file}: {exc}") from None
    return out
