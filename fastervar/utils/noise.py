"""The portable sampler's noise: one seeded uniform per sampled token, the same for every backend.

Each (seed, image, step) triple gets its own counter-based stream, so an image's noise depends only
on its seed and its index in the request: not on batch size, batch composition, or which steps a
profile skips. A step needs one number per token (the sampler inverts the filtered distribution's
CDF at it), so the noise never grows with the vocabulary: 680 floats per VAR-256 image. The torch
reference, the accelerated path and the runtime all read noise from here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NoiseKey = tuple[int, int]          # (seed, image index)


def step_uniform(seed: int, image_index: int, step: int, tokens: int) -> np.ndarray:
    """Uniform [0, 1) float32 noise of shape (tokens,) for one image at one step."""
    seq = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(image_index), int(step)))
    return np.random.Generator(np.random.PCG64(seq)).random(tokens, dtype=np.float32)


def image_keys(seed: int, indices: Sequence[int]) -> list[NoiseKey]:
    """The keys of images `indices` of one request made with `seed`."""
    return [(int(seed), int(i)) for i in indices]


def batch_uniform(keys: Sequence[NoiseKey], step: int, tokens: int) -> np.ndarray:
    """`step_uniform` for each (seed, image index) of a batch: (B, tokens)."""
    return np.stack([step_uniform(seed, index, step, tokens) for seed, index in keys])
