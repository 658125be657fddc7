"""Which r tokens of an h x w map the transformer runs on at a reduced step.

Every selector returns sorted (B, r) int64 position indices. Data-dependent ones read the step's
content features (the area-downsampled f_hat, before position embeddings), so the choice follows
the image rather than the fixed position table. Their constants (the projection, the fixed index
sets) are built once per device in numpy, so a step uploads nothing and graph export sees
constants.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import torch

from ..errors import FastervarError


def pivotal(feats: torch.Tensor, keep: int) -> torch.Tensor:
    """FastVAR's score on the step's content: the tokens farthest from the map's mean (its DC
    component), in position order."""
    score = (feats - feats.mean(dim=1, keepdim=True)).square().sum(-1)
    return score.topk(keep, dim=1).indices.sort(dim=1).values


def pivotal_stream(x: torch.Tensor, keep: int, grid: tuple[int, int]) -> torch.Tensor:
    """FastVAR's selection on the residual stream (rows, h*w, C), computed as its code computes it
    (`masked_previous_scale_cache`): the mean by adaptive average pooling over the grid, the
    squared distance from it summed over channels, then the `keep` highest by `argsort`, in score
    order. Scores can tie to the last bit at the keep/drop boundary, so the same reduction and the
    same sort are what keep the same tokens."""
    rows, _, c = x.shape
    h, w = grid
    mean = torch.nn.functional.adaptive_avg_pool2d(x.view(rows, h, w, c).permute(0, 3, 1, 2), (1, 1))
    mean = mean.permute(0, 2, 3, 1).view(rows, 1, c)
    score = torch.sum((x - mean) ** 2, dim=-1, keepdim=True)
    return torch.argsort(score, dim=1, descending=True)[:, :keep, 0]


@cache
def _projection(width: int, dim: int, seed: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_normal((width, dim)) / math.sqrt(dim)).to(device=device, dtype=dtype)


def random_projection(feats: torch.Tensor, keep: int, dim: int = 8, seed: int = 0) -> torch.Tensor:
    """StageVAR-style representatives: farthest-point sampling in a fixed random projection.

    The projection makes the cost independent of the feature width; farthest-point sampling picks
    r tokens that span the map's feature space, so restoring the rest from cache loses least.
    """
    b, _, c = feats.shape
    rows = torch.arange(b, device=feats.device)
    z = feats @ _projection(c, dim, seed, feats.device, feats.dtype)          # (B, n, dim)
    centred = z - z.mean(1, keepdim=True)
    first = centred.square().sum(-1).argmax(1)                 # start from the most atypical token
    chosen = [first]
    dist = (z - z[rows, first].unsqueeze(1)).square().sum(-1)
    for _ in range(keep - 1):
        nxt = dist.argmax(1)
        chosen.append(nxt)
        dist = torch.minimum(dist, (z - z[rows, nxt].unsqueeze(1)).square().sum(-1))
    return torch.stack(chosen, 1).sort(dim=1).values


@cache
def random(n: int, keep: int, step: int, device: torch.device) -> torch.Tensor:
    """A fixed random subset per step, the same for every image (data-independent baseline): (1, r)."""
    idx = np.sort(np.random.default_rng(1000 + step).permutation(n)[:keep])
    return torch.from_numpy(idx).unsqueeze(0).to(device)


@cache
def grid(size: int | tuple[int, int], keep: int, device: torch.device) -> torch.Tensor:
    """Uniform anchors: a lattice over the h x w map (an int: square) shaped like it, completed in
    raster order: (1, r)."""
    h, w = (size, size) if isinstance(size, int) else size
    rows = max(1, min(h, round(math.sqrt(keep * h / w))))
    cols = max(1, min(w, math.ceil(keep / rows)))
    ys = torch.linspace(0, h - 1, rows).round().long()
    xs = torch.linspace(0, w - 1, cols).round().long()
    lattice = (ys.view(-1, 1) * w + xs.view(1, -1)).flatten().unique()
    if len(lattice) < keep:
        rest = torch.tensor([i for i in range(h * w) if i not in set(lattice.tolist())])
        lattice = torch.cat((lattice, rest[: keep - len(lattice)]))
    return lattice[:keep].sort().values.unsqueeze(0).to(device)


@cache
def relevance(scores: tuple[float, ...], keep: int, device: torch.device) -> torch.Tensor:
    """The positions a calibration run found most relevant, the same for every image: (1, r)."""
    return torch.tensor(scores).topk(keep).indices.sort().values.unsqueeze(0).to(device)


def select(name: str, feats: torch.Tensor, keep: int, size: int | tuple[int, int], step: int,
           scores: list[float] | None = None) -> torch.Tensor:
    """Dispatch by selector name; `feats` is the step's (B, h*w, C) content on its (h, w) grid
    (an int for a square one)."""
    b = feats.shape[0]
    size = (size, size) if isinstance(size, int) else tuple(size)
    if name == "pivotal":
        return pivotal(feats, keep)
    if name == "random_projection":
        return random_projection(feats, keep, seed=step)
    if name == "random":
        return random(size[0] * size[1], keep, step, feats.device).expand(b, -1)
    if name == "grid":
        return grid(size, keep, feats.device).expand(b, -1)
    if name == "relevance":
        if scores is None:
            raise FastervarError("selector 'relevance' needs calibrated scores")
        return relevance(tuple(scores), keep, feats.device).expand(b, -1)
    raise FastervarError(f"unknown selector {name!r}")
