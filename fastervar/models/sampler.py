"""The reference sampler: the baseline every accelerated path is compared against.

It chains the model's scale steps with full guidance. Batches are drawn in request order; in
`portable` mode image i's noise comes from (seed, i) alone, in `official` mode batch j reseeds one
torch.Generator with seed + j, exactly as one upstream `autoregressive_infer_cfg` call per batch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..runtime.noise import batch_uniform
from .family import StepState, VARModel, to_uint8
from .sampling import SamplingSettings


@dataclass
class Generation:
    images: torch.Tensor             # (N, H, W, 3) uint8
    tokens: list[torch.Tensor]       # per step, (N, p*p) int64; (N, 0) for a skipped step
    f_hat: torch.Tensor              # (N, Cvae, H', W') final latent
    step_seconds: list[float]        # wall time per scale step (noise draw included), summed over batches
    decode_seconds: float

    @property
    def seconds_transformer(self) -> float:
        """Time in the scale steps (transformer, guidance, sampling, f_hat update)."""
        return sum(self.step_seconds)

    @property
    def seconds_total(self) -> float:
        return self.seconds_transformer + self.decode_seconds


def step_noise(model: VARModel, settings: SamplingSettings, step: int, seed: int,
               indices: Sequence[int], generator: torch.Generator | None) -> torch.Tensor | torch.Generator:
    """The noise a step consumes: a uniform tensor (portable) or the shared generator (official)."""
    if settings.sampler == "official":
        assert generator is not None
        return generator
    u = batch_uniform(seed, indices, step, model.tokens_at(step), model.cfg.vae.vocab_size)
    return torch.from_numpy(u).to(model.var.head.weight.device)


@torch.no_grad()
def generate_batch(model: VARModel, labels: torch.Tensor, settings: SamplingSettings, seed: int,
                   indices: Sequence[int], generator: torch.Generator | None = None,
                   progress: bool = False) -> Generation:
    """Run every scale step for one batch and decode it.

    `model` is a VARModel or anything with its step protocol (the accelerator's AcceleratedModel);
    a step that returns no output was skipped.
    """
    clock = _clock(labels.device)
    cond = model.condition(labels, guided=True)
    state: StepState = model.init_state(labels.shape[0])
    tokens, seconds = [], []
    steps = range(model.num_steps)
    for k in tqdm(steps, desc="scale steps", leave=False, disable=not progress):
        t0 = clock()
        noise = step_noise(model, settings, k, seed, indices, generator)
        state, out = model.step(k, state, cond, noise, settings)
        seconds.append(clock() - t0)
        tokens.append(out.tokens if out is not None else labels.new_zeros(len(labels), 0))
    t0 = clock()
    images = to_uint8(model.decode(state.f_hat))
    return Generation(images, tokens, state.f_hat, seconds, clock() - t0)


def _clock(device: torch.device):
    """Wall clock that, on a GPU, first waits for queued work, so per-step times are the steps' own."""
    if device.type != "cuda":
        return time.perf_counter

    def synced() -> float:
        torch.cuda.synchronize(device)
        return time.perf_counter()
    return synced


def batch_generator(settings: SamplingSettings, device: torch.device, seed: int, batch_index: int
                    ) -> torch.Generator | None:
    """The official sampler's generator for batch j, seeded seed + j as one upstream call per batch."""
    if settings.sampler != "official":
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(seed + batch_index)
    return gen


@torch.no_grad()
def generate(model: VARModel, classes: Sequence[int], settings: SamplingSettings, seed: int = 0,
             batch_size: int = 16, progress: bool = False) -> Generation:
    """Generate one image per entry of `classes`, in order."""
    device = model.var.head.weight.device
    parts: list[Generation] = []
    starts = range(0, len(classes), batch_size)
    for j, lo in enumerate(tqdm(starts, desc="batches", disable=not progress or len(starts) < 2)):
        idx = list(range(lo, min(lo + batch_size, len(classes))))
        labels = torch.tensor([classes[i] for i in idx], device=device)
        parts.append(generate_batch(model, labels, settings, seed, idx, batch_generator(settings, device, seed, j),
                                    progress))
    return merge(parts)


def merge(parts: list[Generation]) -> Generation:
    """Concatenate the batches of one request, summing their timings."""
    steps = len(parts[0].tokens)
    return Generation(
        images=torch.cat([p.images for p in parts]),
        tokens=[torch.cat([p.tokens[k] for p in parts]) for k in range(steps)],
        f_hat=torch.cat([p.f_hat for p in parts]),
        step_seconds=[sum(p.step_seconds[k] for p in parts) for k in range(steps)],
        decode_seconds=sum(p.decode_seconds for p in parts),
    )
