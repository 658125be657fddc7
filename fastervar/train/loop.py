"""A small resumable training loop shared by the tiny-model trainers.

Batches are a pure function of (seed, step), so a run resumed from its last checkpoint sees exactly
the batches it would have seen uninterrupted. Checkpoints are written atomically and read back with
`weights_only=True`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import FastervarError
from ..utils.atomic import atomic_path


def batch_indices(seed: int, step: int, n: int, batch: int) -> np.ndarray:
    """Indices of the examples in batch `step`: epoch-wise permutations keyed by (seed, epoch)."""
    per_epoch = n // batch
    epoch, pos = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[pos * batch:(pos + 1) * batch]


def cosine_lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def save_atomic(obj: dict, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        torch.save(obj, tmp)


def run(name: str, ckpt: Path, total_steps: int, step_fn: Callable[[int], dict[str, float]],
        modules: dict[str, torch.nn.Module | torch.optim.Optimizer], save_every: int = 500,
        extra_state: Callable[[], dict] | None = None,
        load_extra: Callable[[dict], None] | None = None) -> dict[str, float]:
    """Run `step_fn` for steps [resume point, total_steps), checkpointing as it goes."""
    start = 0
    if ckpt.exists():
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is reported the same way
            raise FastervarError(f"cannot resume from {ckpt}: {exc}; delete it to start over") from None
        for key, mod in modules.items():
            mod.load_state_dict(state[key])
        if load_extra is not None:
            load_extra(state.get("extra", {}))
        start = int(state["step"])
        tqdm.write(f"[{name}] resuming at step {start}/{total_steps} from {ckpt}")

    def save(step: int) -> None:
        state = {key: mod.state_dict() for key, mod in modules.items()}
        state["step"] = step
        if extra_state is not None:
            state["extra"] = extra_state()
        save_atomic(state, ckpt)

    t0 = time.time()
    avg: dict[str, float] = {}
    bar = tqdm(range(start, total_steps), desc=name, initial=start, total=total_steps)
    for step in bar:
        metrics = step_fn(step)
        for k, v in metrics.items():
            avg[k] = v if k not in avg else 0.98 * avg[k] + 0.02 * v
        bar.set_postfix({k: f"{v:.4g}" for k, v in avg.items()})
        if (step + 1) % save_every == 0 or step + 1 == total_steps:
            save(step + 1)
    bar.close()
    summary = dict(avg, seconds=time.time() - t0, steps=total_steps - start)
    tqdm.write(f"[{name}] done: " + ", ".join(f"{k}={v:.4g}" for k, v in summary.items()))
    return summary
