"""Feature extractors for the distribution metrics, pluggable for users who have Inception weights.

An extractor is any object with a `name`, a `dim` and `features(images) -> (N, dim)` that takes
(N, H, W, 3) uint8 images. `--features module:factory` loads a user's own.
"""

from __future__ import annotations

import importlib
from typing import Protocol

import numpy as np
import torch

from ..assets import CLASSIFIER_FILE
from ..errors import FastervarError
from .classifier import FashionClassifier, prepare


class FeatureExtractor(Protocol):
    name: str
    dim: int

    def features(self, images: np.ndarray) -> np.ndarray: ...


class ClassifierFeatures:
    """The shipped Fashion-MNIST classifier: features and class predictions."""

    name = "fashion-classifier"
    dim = FashionClassifier.feature_dim

    def __init__(self, net: FashionClassifier):
        self.net = net.eval()

    @classmethod
    def shipped(cls) -> ClassifierFeatures:
        from safetensors.torch import load_file
        if not CLASSIFIER_FILE.exists():
            raise FastervarError(f"the shipped classifier is missing: {CLASSIFIER_FILE}")
        net = FashionClassifier()
        net.load_state_dict(load_file(str(CLASSIFIER_FILE)))
        return cls(net)

    @torch.no_grad()
    def _run(self, images: np.ndarray, chunk: int = 500) -> tuple[np.ndarray, np.ndarray]:
        feats, preds = [], []
        for lo in range(0, len(images), chunk):
            f = self.net.features(prepare(images[lo:lo + chunk]))
            feats.append(f.numpy())
            preds.append(self.net.out(f).argmax(1).numpy())
        return np.concatenate(feats), np.concatenate(preds)

    def features(self, images: np.ndarray) -> np.ndarray:
        return self._run(images)[0]

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self._run(images)[1]


def load_extractor(spec: str | None) -> FeatureExtractor:
    """The shipped classifier by default, or `module:factory` returning a FeatureExtractor."""
    if not spec:
        return ClassifierFeatures.shipped()
    mod_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
        ext = factory()
    except (ImportError, AttributeError, ValueError) as exc:
        raise FastervarError(f"cannot load feature extractor {spec!r}: {exc}") from None
    if not all(hasattr(ext, a) for a in ("name", "dim", "features")):
        raise FastervarError(f"feature extractor {spec!r} lacks name, dim or features()")
    return ext
