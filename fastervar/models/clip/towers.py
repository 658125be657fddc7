"""CLIP's two towers as Hugging Face's folders name their weights (`text_model.*`,
`vision_model.*`, `text_projection`, `visual_projection`, `logit_scale`), so a folder loads
strictly into them. Pre-LN transformer blocks; the text tower is causal and pools its end token,
the vision tower pools its class token."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import FastervarError
from .config import CLIPConfig, TextConfig, TowerConfig, VisionConfig


def _activation(name: str, x: torch.Tensor) -> torch.Tensor:
    # OpenAI's models were trained with the sigmoid approximation; OpenCLIP's and SD-2.1's with gelu
    return x * torch.sigmoid(1.702 * x) if name == "quick_gelu" else F.gelu(x)


class Attention(nn.Module):
    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.heads = cfg.heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(cfg.width, cfg.width) for _ in range(4))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (p(x).view(b, n, self.heads, c // self.heads).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class MLP(nn.Module):
    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.act = cfg.act
        self.fc1, self.fc2 = nn.Linear(cfg.width, cfg.mlp), nn.Linear(cfg.mlp, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(_activation(self.act, self.fc1(x)))


class Layer(nn.Module):
    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.self_attn, self.mlp = Attention(cfg), MLP(cfg)
        self.layer_norm1 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.layer_norm2 = nn.LayerNorm(cfg.width, eps=cfg.eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return x


class TextEmbeddings(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab, cfg.width)
        self.position_embedding = nn.Embedding(cfg.positions, cfg.width)


class TextTransformer(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = TextEmbeddings(cfg)
        self.encoder = Encoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.width, eps=cfg.eps)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) \
            -> tuple[torch.Tensor, torch.Tensor]:
        """(last hidden state (B, N, C), pooled end-token state (B, C)) for token ids (B, N)."""
        b, n = ids.shape
        e = self.embeddings
        x = e.token_embedding(ids) + e.position_embedding.weight[:n]
        allowed = torch.ones(n, n, dtype=torch.bool, device=ids.device).tril()[None, None]
        if attention_mask is not None:
            allowed = allowed & attention_mask.bool()[:, None, None, :]
        mask = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill(~allowed, float("-inf"))
        hidden = self.final_layer_norm(self.encoder(x, mask))
        if self.cfg.eos_id == 2:
            end = ids.argmax(-1)
        else:
            end = (ids == self.cfg.eos_id).int().argmax(-1)
        return hidden, hidden[torch.arange(b, device=ids.device), end]


class VisionEmbeddings(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(cfg.width))
        self.patch_embedding = nn.Conv2d(cfg.channels, cfg.width, cfg.patch, stride=cfg.patch, bias=False)
        self.position_embedding = nn.Embedding((cfg.image_size // cfg.patch) ** 2 + 1, cfg.width)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(pixels.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight


class VisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = VisionEmbeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.width, eps=cfg.eps)      # the folders' own spelling
        self.encoder = Encoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.width, eps=cfg.eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """The pooled class-token state (B, C) for preprocessed pixels (B, 3, S, S)."""
        hidden = self.encoder(self.pre_layrnorm(self.embeddings(pixels)))
        return self.post_layernorm(hidden[:, 0])


class CLIP(nn.Module):
    """Both towers and their projections, or the text tower alone (a text-only folder)."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.cfg = cfg
        self.text_model = TextTransformer(cfg.text)
        if cfg.projection is not None:
            self.text_projection = nn.Linear(cfg.text.width, cfg.projection, bias=False)
        if cfg.vision is not None:
            self.vision_model = VisionTransformer(cfg.vision)
            self.visual_projection = nn.Linear(cfg.vision.width, cfg.projection, bias=False)
            self.logit_scale = nn.Parameter(torch.tensor(2.6592))

    @torch.no_grad()
    def text_features(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Projected text embeddings (B, P), unnormalized."""
        if self.cfg.projection is None:
            raise FastervarError("this CLIP text tower has no projection: it gives hidden states, not embeddings")
        return self.text_projection(self.text_model(ids, attention_mask)[1])

    @torch.no_grad()
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Projected image embeddings (B, P), unnormalized."""
        if self.cfg.vision is None:
            raise FastervarError("this CLIP folder has no vision tower")
        return self.visual_projection(self.vision_model(pixels))
