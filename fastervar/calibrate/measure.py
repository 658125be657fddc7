"""Measurements of the baseline that calibration decides from.

One instrumented run of the reference sampler over the calibration prompts records, per step:
- convergence toward the final result: semantic similarity (the judge's features, or a low-pass
  latent when there is no judge) and structural similarity (SSIM of the decoded partial image);
- how much guidance changes the prediction (total variation between guided and conditional-only
  token distributions);
- per-position relevance: how badly the previous step's output, upsampled, predicts this step's
  block output (what restoration from cache would get wrong);
- for the linear layers the search factorizes, the covariance and effective rank of their inputs
  at every step (at the latest steps only, where a wide model's statistics would not fit).
The result is plain numpy, cached on disk keyed by everything it depends on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..evaluate.metrics import ssim
from ..models.factors import observing
from ..models.resample import resample
from ..models.sampler import generate_batch
from ..models.sampling import SamplingSettings


@dataclass
class Measurements:
    semantic: np.ndarray                    # (S,) mean similarity of step-k partial to final
    structure: np.ndarray                   # (S,) mean SSIM of decoded step-k partial to final
    guidance_tv: np.ndarray                 # (S,) mean TV distance guided vs conditional-only
    relevance: list[np.ndarray]             # per step (p*p,) restoration error per position
    input_cov: dict[str, np.ndarray]        # "k/block/layer" -> (in, in) E[x x^T] at step k
    effective_rank: dict[str, float]        # "k/block/layer" -> rank holding 99% of input energy
    final_images: np.ndarray                # (N, H, W, 3) the baseline images
    tokens: list[np.ndarray] = field(default_factory=list)   # per step (N, p*p)

    def save(self, path: Path) -> None:
        from ..utils.atomic import atomic_path
        arrays = {"semantic": self.semantic, "structure": self.structure, "guidance_tv": self.guidance_tv,
                  "final_images": self.final_images}
        arrays.update({f"relevance/{k}": r for k, r in enumerate(self.relevance)})
        arrays.update({f"tokens/{k}": t for k, t in enumerate(self.tokens)})
        arrays.update({f"cov/{k}": v for k, v in self.input_cov.items()})
        arrays["erank_keys"] = np.array(list(self.effective_rank), dtype=str)
        arrays["erank_values"] = np.array(list(self.effective_rank.values()), dtype=np.float64)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)

    @classmethod
    def load(cls, path: Path) -> Measurements:
        z = np.load(path, allow_pickle=False)
        steps = len(z["semantic"])
        return cls(semantic=z["semantic"], structure=z["structure"], guidance_tv=z["guidance_tv"],
                   relevance=[z[f"relevance/{k}"] for k in range(steps)],
                   input_cov={k[4:]: z[k] for k in z.files if k.startswith("cov/")},
                   effective_rank=dict(zip(z["erank_keys"].tolist(), z["erank_values"].tolist())),
                   final_images=z["final_images"], tokens=[z[f"tokens/{k}"] for k in range(steps)])


def cache_key(model, classes: Sequence[int], seeds: Sequence[int], settings: SamplingSettings,
              weights_sha256: str, judge: str | None = None, prompts: str | None = None) -> str:
    spec = model.spec()
    blob = json.dumps({"model": spec.identity(), "grids": spec.grids, "weights": weights_sha256,
                       "classes": list(classes), "prompts": prompts, "seeds": list(seeds),
                       "settings": settings.__dict__, "judge": judge, "version": 5,
                       "device": model.device.type, "dtype": str(model.dtype)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def effective_rank(cov: np.ndarray, energy: float = 0.99) -> float:
    """Smallest number of principal directions that hold `energy` of the input's second moment."""
    ev = np.clip(np.linalg.eigvalsh(cov)[::-1], 0, None)
    if ev.sum() <= 0:
        return 0.0
    return float(np.searchsorted(np.cumsum(ev) / ev.sum(), energy) + 1)


FACTORIZED = "ffn."             # the linears the search factorizes (`search.build_profile`)
COV_BUDGET = 2 * 2**30          # bytes of float64 input statistics a measurement may hold
MAX_COV_DIM = 4096              # wider inputs (Infinity-2B's fc2: 8192, 512 MiB a matrix) are not recorded


def watched(model, budget: int = COV_BUDGET) -> set[tuple[int, str]]:
    """The (step, layer) input statistics that are kept: the searched layers up to MAX_COV_DIM
    inputs, from the latest step back (the refine steps, the only ones factorized), the narrower
    layer first, while they fit the budget. A small model keeps them all; a wide one the late
    steps, so that measuring never holds tens of GB."""
    layers = sorted((n for n in model.factor_slots(0)
                     if n.startswith(FACTORIZED) and model.linear_shape(n)[0] <= MAX_COV_DIM),
                    key=lambda n: model.linear_shape(n)[0])
    keep, used = set(), 0
    for k in reversed(range(model.num_steps)):
        for name in layers:
            size = model.depth * 8 * model.linear_shape(name)[0] ** 2
            if used + size <= budget:
                keep.add((k, name))
                used += size
    return keep


class _InputRecorder:
    """Accumulates E[x x^T] of the searched linears' inputs, per step, while it is open: the
    statistics the whitened factorization truncates by (see `watched` for which)."""

    def __init__(self, model):
        self.keep = watched(model)
        self.step_of = {model.tokens_at(k): k for k in range(model.num_steps)}    # token count -> step
        self.names = {id(getattr(owner, short)): (i, name) for i in range(model.depth)
                      for name, (owner, short) in model.factor_slots(i).items()}
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self._watch = observing(self._observe)
        self._watch.__enter__()

    def _observe(self, layer: torch.nn.Linear, x: torch.Tensor) -> None:
        where = self.names.get(id(layer))
        step = self.step_of.get(x.shape[1])
        if where is None or (step, where[1]) not in self.keep:
            return
        k = f"{step}/{where[0]}/{where[1]}"
        x = x.detach().reshape(-1, x.shape[-1]).double()
        self.sums[k] = self.sums.get(k, 0) + x.T @ x
        self.counts[k] = self.counts.get(k, 0) + x.shape[0]

    def covariances(self) -> dict[str, np.ndarray]:
        return {k: (v / self.counts[k]).float().cpu().numpy() for k, v in self.sums.items()}

    def close(self) -> None:
        self._watch.__exit__(None, None, None)


def _semantic_vector(model, f_hat: torch.Tensor, images: np.ndarray,
                     judge: Callable[[np.ndarray], np.ndarray] | None) -> np.ndarray:
    if judge is not None:
        return judge(images)
    return model.content(model.num_steps // 2, f_hat).flatten(1).cpu().numpy()


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


@torch.no_grad()
def measure(model, classes: Sequence[int], seeds: Sequence[int], settings: SamplingSettings,
            judge: Callable[[np.ndarray], np.ndarray] | None = None, batch_size: int = 16,
            progress: Callable[[int], None] | None = None, bank=None) -> Measurements:
    """Run the baseline over every (class, seed) pair with instrumentation; see the module docstring.

    It is the model's own step loop (`generate_batch`), eager, watched step by step; image i of
    the prompt list draws its noise as (its seed, i), which the search reuses. `classes` are class
    labels, or with `bank` (a text model's prompt set) rows of it."""
    prompts = [(c, s) for s in seeds for c in classes]
    steps = model.num_steps
    device = model.device
    recorder = _InputRecorder(model)
    partial_imgs: list[list[np.ndarray]] = [[] for _ in range(steps)]
    partial_fhat: list[list[torch.Tensor]] = [[] for _ in range(steps)]
    tv = np.zeros(steps)
    rel = [np.zeros(model.tokens_at(k)) for k in range(steps)]
    tokens: list[list[np.ndarray]] = [[] for _ in range(steps)]
    previous: dict[int, torch.Tensor] = {}

    def watch(k: int, state, out) -> None:
        b = state.f_hat.shape[0]
        tv[k] += model.guidance_gap(k, out.logits, settings).sum().item()
        if k > 0:
            (h, w), (hs, ws), c = model.grid(k), model.grid(k - 1), out.hidden.shape[-1]
            up = resample(previous[k - 1].transpose(1, 2).reshape(-1, c, hs, ws), (h, w), "bicubic")
            err = (out.hidden - up.flatten(2).transpose(1, 2)).norm(dim=-1) / out.hidden.norm(dim=-1).clamp_min(1e-6)
            rel[k] += err[:b].sum(0).cpu().numpy()
        previous[k] = out.hidden
        tokens[k].append(out.tokens.cpu().numpy())
        partial_fhat[k].append(state.f_hat.clone())
        partial_imgs[k].append(model.pixels(state.f_hat).cpu().numpy())

    try:
        for lo in range(0, len(prompts), batch_size):
            chunk = prompts[lo:lo + batch_size]
            ids = [c for c, _ in chunk]
            inputs = torch.tensor(ids, device=device) if bank is None else bank.rows(ids)
            keys = [(s, lo + j) for j, (_, s) in enumerate(chunk)]
            generate_batch(model, inputs, settings, keys, on_step=watch)
            if progress is not None:
                progress(len(chunk))
    finally:
        recorder.close()
    n = len(prompts)
    imgs = [np.concatenate(p) for p in partial_imgs]
    fhats = [torch.cat(p) for p in partial_fhat]
    final_sem = _semantic_vector(model, fhats[-1], imgs[-1], judge)
    semantic = np.array([_cosine(_semantic_vector(model, fhats[k], imgs[k], judge), final_sem).mean()
                         for k in range(steps)])
    structure = np.array([ssim(imgs[k], imgs[-1]).mean() for k in range(steps)])
    covs = recorder.covariances()
    return Measurements(semantic=semantic, structure=structure, guidance_tv=tv / n,
                        relevance=[r / n for r in rel], input_cov=covs,
                        effective_rank={k: effective_rank(v) for k, v in covs.items()},
                        final_images=imgs[-1], tokens=[np.concatenate(t) for t in tokens])
