"""The scale-step protocol every family implements, and the state that flows between steps.

    state_{k+1} = step_k(state_k, cond, noise_k);   image = decode(f_hat_S)

The step loop (`sampler.py`), the accelerator, the CUDA-graph runner, calibration, the bench and
export drive a model only through this protocol; nothing above `models/` names a family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .sampling import SamplingSettings

KV = tuple[torch.Tensor, torch.Tensor]       # one block's keys and values, batch first


@dataclass
class StepState:
    """What flows between steps: the accumulated latent and each block's KV cache."""

    f_hat: torch.Tensor
    caches: list[KV] | None = None


@dataclass
class StepOutput:
    tokens: torch.Tensor                      # (B, p*p) sampled indices
    logits: torch.Tensor                      # (2B or B, p*p, V) raw logits before guidance
    hidden: torch.Tensor | None = None        # (2B or B, p*p, C) the last block's output


class StepModel(Protocol):
    """The scale-step protocol the step loop drives: `VARModel`, the accelerator's
    `AcceleratedModel`, the CUDA-graph `GraphedModel` and Infinity's `InfinityModel` implement it.
    `condition` takes what the family is conditioned on (class labels, or a `TextBatch`)."""

    num_steps: int

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def tokens_at(self, step: int) -> int: ...

    def noise_at(self, step: int) -> int: ...

    def condition(self, inputs, guided: bool = True): ...

    def init_state(self, batch: int) -> StepState: ...

    def step(self, step: int, state: StepState, cond: torch.Tensor, noise: torch.Tensor | torch.Generator,
             settings: SamplingSettings) -> tuple[StepState, StepOutput | None]: ...

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor: ...

    def pixels(self, f_hat: torch.Tensor) -> torch.Tensor: ...

    def to_uint8(self, images: torch.Tensor) -> torch.Tensor: ...
