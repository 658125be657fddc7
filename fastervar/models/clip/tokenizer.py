"""CLIP's byte-level BPE through `tokenizers`: from the folder's tokenizer.json, or built from the
vocab.json and merges.txt that CLIP folders also ship. Prompts become 77 ids: the start token, at
most 75 of the prompt's, the end token (kept when a long prompt is cut, as CLIP does), then the
pad token; the mask marks the real ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...errors import FastervarError

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# CLIP's pre-tokenizer: contractions, runs of letters, single digits, runs of other non-space
_WORDS = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _from_vocab(folder: Path):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    try:
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError) as exc:
        raise FastervarError(f"{folder}: cannot read vocab.json and merges.txt ({exc})") from None
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise FastervarError(f"{folder / 'vocab.json'}: not a token -> id mapping")
    merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
    if not all(len(m) == 2 for m in merges):
        raise FastervarError(f"{folder / 'merges.txt'}: every line must be two symbols")
    # the vocabulary is 256 bytes, the same with the end-of-word mark, one token per merge and the
    # two special tokens: merges past that (OpenAI's file has more) are not CLIP's
    merges = merges[:max(0, len(vocab) - 2 * 256 - 2)]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>", unk_token=EOS,
                               continuing_subword_prefix="", fuse_unk=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_WORDS), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([BOS, EOS])
    return tok


def _pad_token(folder: Path) -> str:
    """The folder's pad token (CLIP's own pads with the end token; SD-2.1's with "!")."""
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        try:
            pad = json.loads((folder / name).read_text(encoding="utf-8")).get("pad_token")
        except (OSError, ValueError, AttributeError):
            continue
        pad = pad.get("content") if isinstance(pad, dict) else pad
        if isinstance(pad, str):
            return pad
    return EOS


class CLIPTokenizer:
    def __init__(self, folder: str | Path, length: int = 77):
        folder = Path(folder)
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise FastervarError("CLIP's tokenizer needs tokenizers: pip install tokenizers") from None
        if (folder / "tokenizer.json").is_file():
            try:
                self.tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
            except Exception as exc:  # noqa: BLE001 -- tokenizers raises untyped errors for a bad file
                raise FastervarError(f"{folder / 'tokenizer.json'}: not a tokenizer file ({exc})") from None
        elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            self.tok = _from_vocab(folder)
        else:
            raise FastervarError(f"{folder}: no tokenizer (tokenizer.json, or vocab.json and merges.txt)")
        ids = {t: self.tok.token_to_id(t) for t in (BOS, EOS, _pad_token(folder))}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise FastervarError(f"{folder}: the tokenizer has no {missing[0]!r} token")
        self.bos, self.eos, self.pad = ids[BOS], ids[EOS], ids[_pad_token(folder)]
        self.length = length

    def __call__(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, mask), both (N, length) int64."""
        keep = self.length - 2
        rows = [[self.bos, *e.ids[:keep], self.eos] for e in self.tok.encode_batch(list(prompts),
                                                                                   add_special_tokens=False)]
        ids = np.full((len(rows), self.length), self.pad, dtype=np.int64)
        mask = np.zeros((len(rows), self.length), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = row
            mask[i, :len(row)] = 1
        return ids, mask
