"""What text-to-image users measure with CLIP: CLIP score against the prompt, paired CLIP image
similarity against the baseline's image for the same prompt and noise, and CLIP-FD (the Frechet
distance of `metrics.frechet_distance` on CLIP image embeddings). Embeddings are computed in
batches and remembered per image within a run, so an image scored twice is encoded once."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from .metrics import frechet_distance, gaussian_stats


class ClipFeatures:
    """Normalized CLIP embeddings of images and prompts, cached by content."""

    def __init__(self, judge, batch: int = 64):
        self.judge, self.batch = judge, batch
        self._images: dict[str, np.ndarray] = {}
        self._texts: dict[str, np.ndarray] = {}

    @staticmethod
    def _key(image: np.ndarray) -> str:
        a = np.ascontiguousarray(image)
        return hashlib.sha256(repr((a.shape, a.dtype.str)).encode() + a.tobytes()).hexdigest()

    def images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(N, P) float64 unit vectors for uint8 images (H, W, 3) or (H, W)."""
        keys = [self._key(im) for im in images]
        todo = list(dict.fromkeys(k for k in keys if k not in self._images))
        first = {k: i for i, k in reversed(list(enumerate(keys)))}
        for lo in range(0, len(todo), self.batch):
            chunk = todo[lo:lo + self.batch]
            feats = _unit(self.judge.encode_images([images[first[k]] for k in chunk]))
            self._images.update(zip(chunk, feats))
        return np.stack([self._images[k] for k in keys]) if keys else np.zeros((0, 0))

    def texts(self, prompts: Sequence[str]) -> np.ndarray:
        todo = list(dict.fromkeys(p for p in prompts if p not in self._texts))
        for lo in range(0, len(todo), self.batch):
            chunk = todo[lo:lo + self.batch]
            self._texts.update(zip(chunk, _unit(self.judge.encode_text(chunk))))
        return np.stack([self._texts[p] for p in prompts]) if prompts else np.zeros((0, 0))


def _unit(x: torch.Tensor) -> np.ndarray:
    x = x.detach().double().cpu().numpy()
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def clip_scores(feats: ClipFeatures, images: Sequence[np.ndarray], prompts: Sequence[str]) -> np.ndarray:
    """Per image, 100 * max(cos(image, its prompt), 0)."""
    cos = np.sum(feats.images(images) * feats.texts(prompts), axis=1)
    return 100.0 * np.maximum(cos, 0.0)


def paired_clip_similarity(feats: ClipFeatures, images: Sequence[np.ndarray],
                           baseline: Sequence[np.ndarray]) -> np.ndarray:
    """Per pair, the cosine between a variant's image and the baseline's for the same key."""
    return np.sum(feats.images(images) * feats.images(baseline), axis=1)


def clip_fd(feats: ClipFeatures, images: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    """Frechet distance between the two sets' CLIP image embeddings."""
    return frechet_distance(*gaussian_stats(feats.images(reference)), *gaussian_stats(feats.images(images)))


def paired_clip_figures(feats: ClipFeatures, baseline: Sequence[np.ndarray], variant: Sequence[np.ndarray],
                        prompts: Sequence[str] | None = None) -> dict:
    """A variant against its baseline on the same keys: mean paired CLIP image similarity, CLIP-FD
    between the two sets, and with the prompts' text each side's CLIP score."""
    out = {"paired_clip_similarity": float(paired_clip_similarity(feats, variant, baseline).mean()),
           "clip_fd": clip_fd(feats, variant, baseline) if len(variant) > 1 else None}
    if prompts:
        out["clip_score_baseline"] = float(clip_scores(feats, baseline, prompts).mean())
        out["clip_score"] = float(clip_scores(feats, variant, prompts).mean())
    return out


def class_prompts(model, classes: Sequence[int]) -> list[str] | None:
    """CLIP prompts for a class-conditional model's labels, "a photo of a {name}" (ImageNet's names
    as pytorch/hub lists them, assets/imagenet_classes.txt, for the released VAR models); None when
    the model does not say what its classes are."""
    names = model.class_names()
    return None if names is None else [f"a photo of a {names[c]}" for c in classes]
