"""The scale-step protocol every family implements, and the state that flows between steps.

    state_{k+1} = step_k(state_k, cond, noise_k);   image = decode(f_hat_S)

The step loop (`sampler.py`), the accelerator, the CUDA-graph runner, calibration, the bench and
export drive a model only through this protocol; nothing above `models/` names a family. A family
exposes its step as the pieces an accelerator replaces: the step's input tokens, the blocks (whole,
or one sublayer at a time), the logits, guidance and sampling, and the latent update.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from .sampling import SamplingSettings

KV = tuple[torch.Tensor, torch.Tensor]       # one block's keys and values, batch first
# How a step runs guidance: both halves combined ("cfg"), the conditional half alone ("cond-only",
# SkipVAR's move), the null half alone ("null-text", the paper's "CFG 0"), or an unguided batch.
GUIDANCE = ("cfg", "cond-only", "null-text", "none")


@dataclass
class StepState:
    """What flows between steps: the accumulated latent and each block's KV cache."""

    f_hat: torch.Tensor
    caches: list[KV] | None = None


@dataclass
class StepOutput:
    tokens: torch.Tensor                      # (B, tokens) indices, or (B, tokens * bits) bits
    logits: torch.Tensor | None               # (rows, tokens, V) raw logits before guidance
    hidden: torch.Tensor | None = None        # (rows, tokens, C) the last block's output


@dataclass(frozen=True)
class Sublayer:
    """One residual branch of a block: `x = x + branch(input(x), positions)`.

    `input` normalizes (and modulates) residual-stream rows; `branch` computes the branch output
    for those rows, with `positions` (rows, r) their token positions when only some are computed
    (for position-dependent branches: rope), and returns the new KV cache for self-attention."""

    name: str
    input: Callable[[torch.Tensor], torch.Tensor]
    branch: Callable[[torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, KV | None]]


class StepModel(Protocol):
    """The scale-step protocol the step loop drives: `VARModel`, `InfinityModel`, the
    accelerator's `AcceleratedModel` and the CUDA-graph `GraphedModel` implement it. `condition`
    takes what the family is conditioned on (class labels, or a `TextBatch`)."""

    num_steps: int

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def tokens_at(self, step: int) -> int: ...

    def noise_at(self, step: int) -> int: ...

    def runs_guidance(self, settings: SamplingSettings) -> bool: ...

    def condition(self, inputs, guided: bool = True): ...

    def init_state(self, batch: int) -> StepState: ...

    def step(self, step: int, state: StepState, cond: Any, noise: torch.Tensor | torch.Generator,
             settings: SamplingSettings) -> tuple[StepState, StepOutput | None]: ...

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor: ...

    def pixels(self, f_hat: torch.Tensor) -> torch.Tensor: ...

    def to_uint8(self, images: torch.Tensor) -> torch.Tensor: ...


class FamilyModel(StepModel, Protocol):
    """A family's model: the step protocol plus the pieces of a step, which the accelerator
    recombines. Rows are the batch doubled when guidance runs (conditional, then null)."""

    family: str
    depth: int
    INT8_LINEARS: str            # a regex over traced parameter names: the linears int8 bundles quantize

    def state_parts(self) -> tuple[torch.nn.Module, ...]: ...

    def spec(self) -> Any: ...

    def grid(self, step: int) -> tuple[int, int]: ...

    def is_guided(self, cond: Any, batch: int) -> bool: ...

    def drop_guidance(self, cond: Any, batch: int, guidance: str) -> Any: ...

    def step_input(self, step: int, f_hat: torch.Tensor, cond: Any) -> torch.Tensor: ...

    def block_context(self, step: int, cond: Any) -> Any: ...

    def blocks_forward(self, step: int, x: torch.Tensor, ctx: Any, caches: list[KV] | None,
                       positions: torch.Tensor | None = None) -> tuple[torch.Tensor, list[KV]]: ...

    def sublayers(self, block: int, ctx: Any, cache: KV | None) -> list[Sublayer]: ...

    def logits(self, hidden: torch.Tensor, cond: Any) -> torch.Tensor: ...

    def sample(self, step: int, logits: torch.Tensor, noise: torch.Tensor | torch.Generator,
               settings: SamplingSettings, guidance: str) -> tuple[torch.Tensor, torch.Tensor]: ...

    def update_f_hat(self, step: int, f_hat: torch.Tensor, codes: torch.Tensor,
                     kept: torch.Tensor | None = None) -> torch.Tensor: ...

    def content(self, step: int, f_hat: torch.Tensor) -> torch.Tensor: ...

    def factor_slots(self, block: int) -> dict[str, tuple[torch.nn.Module, str]]: ...

    def linear_shape(self, name: str) -> tuple[int, int]: ...

    # what a bundle's graphs take: the conditioning's kind and sizes, and `condition`'s input
    # built from the request tensors (class labels; or prompt embeddings and their lengths)
    def conditioning(self) -> dict[str, Any]: ...

    def condition_inputs(self, tensors: tuple[torch.Tensor, ...]) -> Any: ...

    def example_condition(self, batch: int, text_length: int) -> tuple[torch.Tensor, ...]: ...

    def describe(self) -> dict[str, Any]: ...


def slice_rows(t: torch.Tensor, batch: int, guidance: str) -> torch.Tensor:
    """A guided tensor's rows for an unguided step: the conditional half (cond-only) or the null
    half (null-text); for a guided step, or a tensor that already has `batch` rows, the tensor."""
    if t.shape[0] == batch or guidance not in ("cond-only", "null-text"):
        return t
    return t[batch:] if guidance == "null-text" else t[:batch]
