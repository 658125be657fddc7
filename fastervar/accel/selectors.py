"""Which r tokens of a p x p map the transformer runs on at a reduced step.

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
    """FastVAR: the tokens farthest from the map's mean (its DC component)."""
    score = (feats - feats.mean(dim=1, keepdim=True)).square().sum(-1)
    return score.topk(keep, dim=1).indices.sort(dim=1).values


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
def grid(pn: int, keep: int, device: torch.device) -> torch.Tensor:
    """Uniform anchors: a near-square lattice over the p x p map, completed in raster order: (1, r)."""
    rows = max(1, min(pn, round(math.sqrt(keep))))
    cols = max(1, min(pn, math.ceil(keep / rows)))
    ys = torch.linspace(0, pn - 1, rows).round().long()
    xs = torch.linspace(0, pn - 1, cols).round().long()
    lattice = (ys.view(-1, 1) * pn + xs.view(1, -1)).flatten().unique()
    if len(lattice) < keep:
        rest = torch.tensor([i for i in range(pn * pn) if i not in set(lattice.tolist())])
        lattice = torch.cat((lattice, rest[: keep - len(lattice)]))
    return lattice[:keep].sort().values.unsqueeze(0).to(device)


@cache
def relevance(scores: tuple[float, ...], keep: int, device: torch.device) -> torch.Tensor:
    """The positions a calibration run found most relevant, the same for every image: (1, r)."""
    return torch.tensor(scores).topk(keep).indices.sort().values.unsqueeze(0).to(device)


def select(name: str, feats: torch.Tensor, keep: int, pn: int, step: int,
           scores: list[float] | None = None) -> torch.Tensor:
    """Dispatch by selector name; `feats` is (B, p*p, Cvae) content of this step."""
    b = feats.shape[0]
    if name == "pivotal":
        return pivotal(feats, keep)
    if name == "random_projection":
        return random_projection(feats, keep, seed=step)
    if name == "random":
        return random(pn * pn, keep, step, feats.device).expand(b, -1)
    if name == "grid":
        return grid(pn, keep, feats.device).expand(b, -1)
    if name == "relevance":
        if scores is None:
            raise FastervarError("selector 'relevance' needs calibrated scores")
        return relevance(tuple(scores), keep, feats.device).expand(b, -1)
    raise FastervarError(f"unknown selector {name!r}")
