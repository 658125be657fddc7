"""`fastervar train-tiny`: train an embedded-size model and its judge on Fashion-MNIST (or MNIST)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import FastervarError
from .app import main


@main.command("train-tiny")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="Fashion-MNIST directory (default: the Debian package's /usr/share/datasets/fashion-mnist).")
@click.option("--work-dir", type=click.Path(file_okay=False), default=None,
              help="Resumable checkpoints and the token cache [default: runs/MODEL].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Model folder to write (weights, config, judge) [default: WORK_DIR/out].")
@click.option("--replace-shipped", is_flag=True,
              help="Write into the package's own assets instead, replacing the shipped model (for maintainers).")
@click.option("--model", "model_name", type=click.Choice(["fashion-tiny", "fashion-16"]), default="fashion-tiny",
              show_default=True, help="Which embedded model to train.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--vae-steps", type=click.IntRange(min=1), default=None,
              help="VQVAE steps [default: 900 for fashion-tiny, 1000 for fashion-16].")
@click.option("--var-steps", type=click.IntRange(min=1), default=None,
              help="VAR steps [default: 3600 for fashion-tiny, 2400 for fashion-16].")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
def train_tiny(data_dir, work_dir, out_dir, replace_shipped, model_name, seed, vae_steps, var_steps, device) -> None:
    """Train an embedded model (VQVAE, then VAR) and the evaluation classifier; resumes from --work-dir."""
    from ..assets import ROOT
    from ..models.loading import resolve_device
    from ..train.data import load_split
    from ..train.tiny import settings_for, train_all

    if out_dir and replace_shipped:
        raise FastervarError("--out and --replace-shipped contradict each other: give one")
    load_split("train", data_dir)
    resolve_device(device)
    work = Path(work_dir or f"runs/{model_name}")
    out = ROOT if replace_shipped else Path(out_dir) if out_dir else work / "out"
    settings = settings_for(model_name, seed=seed, vae_steps=vae_steps, var_steps=var_steps, device=device)
    summary = train_all(model_name, work, out, settings, data_dir)
    for k, v in summary.items():
        click.echo(f"{k:>28}: {v:.4g}")
    click.echo(f"wrote {out}" + ("" if replace_shipped else f" (use it with --model {out}; --judge {out})"))
