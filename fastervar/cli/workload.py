"""What a sampling command runs on: the model, its prompts and the sampling settings.

A class-conditional model (VAR) takes class labels; a text-to-image model (Infinity) takes a prompt
set, encoded once, and a batch's labels are rows of it. The commands share this so that each
accepts both kinds and says clearly when an option belongs to the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ..errors import FastervarError

TEXT_FLAGS = {"prompts": "--prompt", "prompts_file": "--prompts", "text_encoder": "--text-encoder",
              "text_embeddings": "--text-embeddings", "aspect": "--aspect", "pn": "--pn", "tau": "--tau"}


@dataclass
class TextArgs:
    """The text-to-image options as given on the command line."""

    prompts: tuple[str, ...] = ()
    prompts_file: str | None = None
    text_encoder: str | None = None
    text_embeddings: str | None = None
    aspects: tuple[str, ...] = ("1:1",)
    pn: str = "1M"
    tau: float = 0.5


@dataclass
class Workload:
    """A model with what it is asked to draw: `labels` are class labels, or rows of `bank` (a text
    model's prompt set, whose texts are `texts` when they were given as text)."""

    model: Any
    settings: Any
    labels: list[int]
    bank: Any = None
    texts: list[str] | None = None

    @property
    def is_text(self) -> bool:
        return self.bank is not None


def text_flags_given() -> list[str]:
    """The text-to-image flags the user set on the command line."""
    source = click.get_current_context().get_parameter_source
    return [flag for name, flag in TEXT_FLAGS.items()
            if name in click.get_current_context().params and source(name) is not click.core.ParameterSource.DEFAULT]


def is_star_model(model_name: str | None, checkpoint: str | None) -> bool:
    """STAR when the model is named so, or when the checkpoint is STAR's (read off its key names)."""
    if model_name is not None:
        return model_name.startswith("star")
    if checkpoint is None or Path(checkpoint).is_dir():
        return False
    from ..models.star.checkpoint import is_star_file
    return is_star_file(checkpoint)


def refuse_star(model_name: str | None, checkpoint: str | None, command: str) -> None:
    """One line for a toolchain command that does not take STAR yet (only generate does)."""
    if is_star_model(model_name, checkpoint):
        raise FastervarError(f"{command} does not take STAR models yet (acceleration for STAR comes next); "
                             f"fastervar generate samples them")


def is_text_model(model_name: str | None, checkpoint: str | None, text_given: list[str]) -> bool:
    """Text-to-image when the model is named so, when the checkpoint is Infinity's, or, with no
    model named, when prompts are given (the loader then says if the files are not Infinity's)."""
    if model_name is not None:
        return model_name.startswith("infinity")
    if text_given:
        return True
    if checkpoint is None:
        return False
    from ..models.infinity.checkpoint import is_infinity_file
    return is_infinity_file(checkpoint)


def sampling(model, cfg: float | None, top_k: int | None, top_p: float | None, more_smooth: bool = False,
             sampler: str = "portable", tau: float | None = None):
    """The settings asked for, the family's published values where an option was left out."""
    from dataclasses import replace
    base = model.default_settings()
    return replace(base, cfg=base.cfg if cfg is None else cfg, top_k=base.top_k if top_k is None else top_k,
                   top_p=base.top_p if top_p is None else top_p,
                   more_smooth=more_smooth, sampler=sampler, tau=base.tau if tau is None else tau)


def load_text_models(model_name: str | None, checkpoint: str | None, vae_checkpoint: str | None,
                     random_weights: bool, device: str, text: TextArgs) -> list:
    """The text-to-image model at each asked aspect of the budget (one set of weights, shared)."""
    from ..models.infinity.checkpoint import resolve_infinity
    from ..models.infinity.schedules import nearest_template, parse_aspect
    from ..models.loading import resolve_device
    ratios = []
    for a in text.aspects:
        r = nearest_template(parse_aspect(a))
        if r not in ratios:
            ratios.append(r)
    first = resolve_infinity(model_name, checkpoint, vae_checkpoint, random_weights, resolve_device(device),
                             ratios[0], text.pn)
    return [first] + [first.at_aspect(r) for r in ratios[1:]]


def prompt_set(text: TextArgs):
    """(bank, texts): the prompts encoded (or read as embeddings), and their texts if given."""
    from ..models.text.prompts import text_batch
    from ..utils.tokens import read_prompts
    texts = read_prompts(text.prompts, text.prompts_file)
    return text_batch(texts, text.text_encoder, text.text_embeddings), (texts or None)


def reject_other_kind(text: bool, text_given: list[str], class_flags: list[str]) -> None:
    """Refuse the options of the other kind of model, naming the first one given."""
    if text and class_flags:
        raise FastervarError(f"class options ({', '.join(class_flags)}) are for class-conditional VAR models; a "
                             f"text-to-image model takes --prompt/--prompts or --text-embeddings")
    if not text and text_given:
        raise FastervarError(f"{text_given[0]} is for text-to-image models (--model infinity-*); "
                             f"this is a class-conditional VAR model, which takes classes")
