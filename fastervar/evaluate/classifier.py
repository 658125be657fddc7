"""The small Fashion-MNIST classifier that stands in for Inception on the embedded model.

Its penultimate activations are the feature space for the Frechet distance and KID; its argmax is
the class-accuracy judge. It reads the same 3-channel 32x32 uint8 images the generator writes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class FashionClassifier(nn.Module):
    feature_dim = 128

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        self.bn1, self.bn2, self.bn3 = nn.BatchNorm2d(32), nn.BatchNorm2d(64), nn.BatchNorm2d(128)
        self.fc = nn.Linear(128 * 4 * 4, self.feature_dim)
        self.out = nn.Linear(self.feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 32, 32) in [-1, 1] to (N, 128) penultimate features."""
        h = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        h = F.max_pool2d(F.relu(self.bn2(self.conv2(h))), 2)
        h = F.max_pool2d(F.relu(self.bn3(self.conv3(h))), 2)
        return F.relu(self.fc(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


def prepare(images: np.ndarray) -> torch.Tensor:
    """(N, 32, 32, 3) uint8 RGB to the classifier's (N, 1, 32, 32) grey input in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().mean(-1, keepdim=True)
    return (x / 127.5 - 1).permute(0, 3, 1, 2).contiguous()
