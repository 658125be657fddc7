"""The portable sampler's noise: seeded numpy draws that every backend consumes identically.

Each (seed, image, step) triple gets its own counter-based stream, so an image's noise depends only
on its seed and its index in the request: not on batch size, batch composition, or which steps a
profile skips. The torch reference, the accelerated path and the runtime all read noise from here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def step_uniform(seed: int, image_index: int, step: int, tokens: int, vocab: int) -> np.ndarray:
    """Uniform [0, 1) float32 noise of shape (tokens, vocab) for one image at one step."""
    seq = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(image_index), int(step)))
    return np.random.Generator(np.random.PCG64(seq)).random((tokens, vocab), dtype=np.float32)


def batch_uniform(seed: int, image_indices: Sequence[int], step: int, tokens: int,
                  vocab: int) -> np.ndarray:
    """Stack of `step_uniform` for a batch of image indices: (B, tokens, vocab)."""
    return np.stack([step_uniform(seed, i, step, tokens, vocab) for i in image_indices])
