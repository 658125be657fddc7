"""Regenerate tests/data/official_refs.npz: pinned outputs of our official-mode sampler.

The faithfulness of `--sampler official` to upstream VAR was checked against the upstream code
(same tokens at every step, images within one uint8 level); these references pin that behaviour
so a refactor cannot drift from it unnoticed. Run only when the change in output is intended.
"""

from pathlib import Path

import numpy as np
import torch

from fastervar.models.loading import random_model
from fastervar.models.sampler import generate
from fastervar.models.sampling import SamplingSettings

CASES = {
    "tiny_plain": ("tiny", SamplingSettings(cfg=3.0, top_k=20, top_p=0.9, sampler="official")),
    "tiny_smooth": ("tiny", SamplingSettings(cfg=3.0, top_k=20, top_p=0.9, more_smooth=True, sampler="official")),
    "saln_plain": ("tiny-saln", SamplingSettings(cfg=1.5, top_k=0, top_p=0.0, sampler="official")),
}
CLASSES, SEED = [1, 4, 7], 3


def main() -> None:
    out = {}
    for key, (name, settings) in CASES.items():
        g = generate(random_model(name, seed=0), CLASSES, settings, seed=SEED, batch_size=3)
        out[f"{key}_tokens"] = torch.cat(g.tokens, dim=1).numpy()
        out[f"{key}_images"] = g.images.numpy()
    dest = Path(__file__).resolve().parent.parent / "tests" / "data" / "official_refs.npz"
    np.savez_compressed(dest, **out)
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
