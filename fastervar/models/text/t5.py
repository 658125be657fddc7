"""A T5 encoder, written from the architecture, that strict-loads a Hugging Face T5 / Flan-T5 folder.

Infinity conditions on Flan-T5-XL's encoder. transformers is a test oracle here, not a dependency:
this module needs torch, `tokenizers` (the folder's `tokenizer.json`) and safetensors. The
architecture: token embedding; per block, RMS-normed self-attention (no 1/sqrt(d) scaling) with a
bucketed relative-position bias that the first block owns and every block adds, then an RMS-normed
feed-forward (gated GELU for T5 v1.1 and Flan-T5, ReLU for the original T5); a final RMS norm.
Prompts are encoded at their true length (the `</s>` the tokenizer appends included), which gives
the rows padding to 512 gives.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import FastervarError
from ...utils.tokens import PromptTokenizer


@dataclass(frozen=True)
class T5Config:
    vocab_size: int
    d_model: int
    d_kv: int
    d_ff: int
    num_layers: int
    num_heads: int
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    gated: bool = True                 # feed_forward_proj "gated-gelu" (v1.1, Flan) or "relu"

    @classmethod
    def from_hf(cls, data: dict, path: Path) -> T5Config:
        if not isinstance(data, dict):
            raise FastervarError(f"{path}: not a T5 config (a JSON object)")
        proj = data.get("feed_forward_proj", "relu")
        if proj not in ("relu", "gated-gelu"):
            raise FastervarError(f"{path}: feed_forward_proj {proj!r} is not supported (relu or gated-gelu)")
        try:
            cfg = cls(vocab_size=int(data["vocab_size"]), d_model=int(data["d_model"]), d_kv=int(data["d_kv"]),
                       d_ff=int(data["d_ff"]), num_layers=int(data["num_layers"]), num_heads=int(data["num_heads"]),
                       relative_attention_num_buckets=int(data.get("relative_attention_num_buckets", 32)),
                       relative_attention_max_distance=int(data.get("relative_attention_max_distance", 128)),
                       layer_norm_epsilon=float(data.get("layer_norm_epsilon", 1e-6)), gated=proj == "gated-gelu")
        except (KeyError, TypeError, ValueError) as exc:
            raise FastervarError(f"{path}: not a T5 config ({exc})") from None
        sizes = {k: v for k, v in asdict(cfg).items() if isinstance(v, int) and not isinstance(v, bool)}
        bad = next((k for k, v in sizes.items() if v < 1), None)
        if bad:
            raise FastervarError(f"{path}: {bad} must be positive, got {sizes[bad]}")
        return cfg


class RMSNorm(nn.Module):
    """Scale by the root mean square, no mean subtraction and no bias; computed in float32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.square().mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(self.weight.dtype)


def relative_buckets(query_len: int, key_len: int, num_buckets: int, max_distance: int,
                     device: torch.device) -> torch.Tensor:
    """(query_len, key_len) bucket of each key's offset from each query, bidirectional: half the
    buckets for keys after the query; within a half, exact offsets below a quarter of the buckets,
    then logarithmically wider bins up to `max_distance`, beyond which offsets share the last bin."""
    offset = torch.arange(key_len, device=device)[None, :] - torch.arange(query_len, device=device)[:, None]
    half = num_buckets // 2
    base = (offset > 0).long() * half
    dist = offset.abs()
    exact = half // 2
    scaled = torch.log(dist.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (half - exact)
    far = (exact + scaled.long()).clamp(max=half - 1)
    return base + torch.where(dist < exact, dist, far)


class Attention(nn.Module):
    def __init__(self, cfg: T5Config, has_bias: bool):
        super().__init__()
        inner = cfg.num_heads * cfg.d_kv
        self.q = nn.Linear(cfg.d_model, inner, bias=False)
        self.k = nn.Linear(cfg.d_model, inner, bias=False)
        self.v = nn.Linear(cfg.d_model, inner, bias=False)
        self.o = nn.Linear(inner, cfg.d_model, bias=False)
        self.cfg = cfg
        if has_bias:
            self.relative_attention_bias = nn.Embedding(cfg.relative_attention_num_buckets, cfg.num_heads)

    def position_bias(self, length: int) -> torch.Tensor:
        """(1, heads, L, L): the first block's learned bias per relative-offset bucket."""
        b = relative_buckets(length, length, self.cfg.relative_attention_num_buckets,
                             self.cfg.relative_attention_max_distance, self.relative_attention_bias.weight.device)
        return self.relative_attention_bias(b).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h, d = self.cfg.num_heads, self.cfg.d_kv
        q, k, v = (proj(x).view(b, n, h, d).transpose(1, 2) for proj in (self.q, self.k, self.v))
        scores = (q @ k.transpose(-1, -2)).float() + bias              # T5 does not scale by 1/sqrt(d)
        out = scores.softmax(-1).to(v.dtype) @ v
        return self.o(out.transpose(1, 2).reshape(b, n, h * d))


class FeedForward(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.gated = cfg.gated
        if cfg.gated:
            self.wi_0 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
            self.wi_1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        else:
            self.wi = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.wo(F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x))
        return self.wo(F.relu(self.wi(x)))


class _AttentionLayer(nn.Module):
    def __init__(self, cfg: T5Config, has_bias: bool):
        super().__init__()
        self.SelfAttention = Attention(cfg, has_bias)
        self.layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)


class _FeedForwardLayer(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.DenseReluDense = FeedForward(cfg)
        self.layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)


class Block(nn.Module):
    def __init__(self, cfg: T5Config, first: bool):
        super().__init__()
        self.layer = nn.ModuleList([_AttentionLayer(cfg, first), _FeedForwardLayer(cfg)])

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        attn, ffn = self.layer
        x = x + attn.SelfAttention(attn.layer_norm(x), bias)
        return x + ffn.DenseReluDense(ffn.layer_norm(x))


class T5Encoder(nn.Module):
    """Token ids to hidden states; the parameter names are Hugging Face's, under `encoder.`."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.block = nn.ModuleList([Block(cfg, first=i == 0) for i in range(cfg.num_layers)])
        self.final_layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) ids, optional (B, L) bool mask of real tokens, to (B, L, d_model)."""
        x = self.embed_tokens(ids)
        bias = self.block[0].layer[0].SelfAttention.position_bias(ids.shape[1])
        if mask is not None:
            bias = bias + torch.where(mask[:, None, None, :], 0.0, torch.finfo(torch.float32).min)
        for blk in self.block:
            x = blk(x, bias)
        return self.final_layer_norm(x)

    def embed(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, L) ids padded past each prompt's length to (B, L, d_model) embeddings, zero past
        it: what Infinity reads, and what a bundle's text-encoder graph computes."""
        mask = torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]
        return self(ids, mask).masked_fill(~mask[..., None], 0.0)




def load_encoder(folder: str | Path) -> T5Encoder:
    """Strict-load the encoder of a T5 or Flan-T5 folder (decoder weights, if any, are ignored)."""
    folder = Path(folder)
    from ..checkpoint import read_hf_config, read_hf_weights
    cfg = T5Config.from_hf(read_hf_config(folder, "T5", named="--text-encoder "), folder / "config.json")
    found = read_hf_weights(folder, "T5")
    model = T5Encoder(cfg)
    want = {f"encoder.{k}": v.shape for k, v in model.state_dict().items()}
    sd = {k: v for k, v in found.items() if k.startswith("encoder.")}
    # the token embedding is tied to `shared`, which savers often keep alone
    if "encoder.embed_tokens.weight" not in sd and "shared.weight" in found:
        sd["encoder.embed_tokens.weight"] = found["shared.weight"]
    for key, ref in want.items():
        if key not in sd:
            raise FastervarError(f"{folder}: T5 weight {key} is missing")
        if tuple(sd[key].shape) != tuple(ref):
            raise FastervarError(f"{folder}: T5 weight {key} has shape {tuple(sd[key].shape)}, "
                                 f"the config says {tuple(ref)}")
    extra = sorted(set(sd) - set(want))
    if extra:
        raise FastervarError(f"{folder}: unexpected T5 encoder weight {extra[0]}")
    from ..checkpoint import assign_state_dict
    assign_state_dict(model, {k.removeprefix("encoder."): v for k, v in sd.items()})
    return model.eval()


class TextEncoder:
    """Prompts to (embeddings, lengths) as `--text-embeddings` files hold them: (N, T, C) float32,
    zero past each prompt's true length (its tokens and `</s>`, at most `max_length`)."""

    def __init__(self, encoder: T5Encoder, tokenizer: PromptTokenizer):
        self.encoder, self.tokenizer = encoder, tokenizer

    @classmethod
    def from_folder(cls, folder: str | Path, max_length: int = 512) -> TextEncoder:
        folder = Path(folder)
        tokenizer = PromptTokenizer.from_file(folder / "tokenizer.json", max_length)
        return cls(load_encoder(folder), tokenizer)

    def token_ids(self, prompts: list[str]) -> list[list[int]]:
        return self.tokenizer.ids(prompts)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ids = self.token_ids(prompts)
        lengths = np.array([len(i) for i in ids], dtype=np.int64)
        width = int(lengths.max())
        batch = torch.zeros(len(ids), width, dtype=torch.long)
        for r, row in enumerate(ids):
            batch[r, :len(row)] = torch.tensor(row)
        hidden = self.encoder.embed(batch, torch.from_numpy(lengths))
        return hidden.numpy().astype(np.float32), lengths
