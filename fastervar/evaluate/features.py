"""Feature extractors for the distribution metrics, pluggable for users who have Inception weights.

An extractor is any object with a `name`, a `dim` and `features(images) -> (N, dim)` that takes
(N, H, W, 3) uint8 images. `--features module:factory` loads a user's own.
"""

from __future__ import annotations

import importlib
from typing import Protocol

import numpy as np
import torch

from ..errors import FastervarError
from .classifier import FashionClassifier, prepare
from .judge import JudgeFiles


class FeatureExtractor(Protocol):
    name: str
    dim: int

    def features(self, images: np.ndarray) -> np.ndarray: ...


class ClassifierFeatures:
    """A judge's classifier (the shipped Fashion-MNIST one, or one `train-tiny` trained on the
    user's data): features and class predictions."""

    name = "fashion-classifier"
    dim = FashionClassifier.feature_dim

    def __init__(self, net: FashionClassifier):
        self.net = net.eval()

    @classmethod
    def load(cls, judge: JudgeFiles) -> ClassifierFeatures:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        if not judge.classifier.exists():
            raise FastervarError(f"the {judge.name} has no classifier: {judge.classifier} is missing")
        net = FashionClassifier()
        try:
            net.load_state_dict(load_file(str(judge.classifier)))
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise FastervarError(f"{judge.classifier} is not a judge classifier: {str(exc).splitlines()[0]}") from None
        return cls(net)

    @torch.no_grad()
    def features_and_classes(self, images: np.ndarray, chunk: int = 500) -> tuple[np.ndarray, np.ndarray]:
        """Both from one pass of the classifier."""
        feats, preds = [], []
        for lo in range(0, len(images), chunk):
            f = self.net.features(prepare(images[lo:lo + chunk]))
            feats.append(f.numpy())
            preds.append(self.net.out(f).argmax(1).numpy())
        return np.concatenate(feats), np.concatenate(preds)

    def features(self, images: np.ndarray) -> np.ndarray:
        return self.features_and_classes(images)[0]

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.features_and_classes(images)[1]


def load_extractor(spec: str | None, judge: JudgeFiles) -> FeatureExtractor:
    """The judge's classifier by default, or `module:factory` returning a FeatureExtractor."""
    if not spec:
        return ClassifierFeatures.load(judge)
    mod_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
        ext = factory()
    except (ImportError, AttributeError, ValueError) as exc:
        raise FastervarError(f"cannot load feature extractor {spec!r}: {exc}") from None
    if not all(hasattr(ext, a) for a in ("name", "dim", "features")):
        raise FastervarError(f"feature extractor {spec!r} lacks name, dim or features()")
    return ext
