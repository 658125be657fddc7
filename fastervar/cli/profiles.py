"""`fastervar profiles list|show`: the shipped acceleration profiles. Torch-free."""

from __future__ import annotations

import click

from .app import main


@main.group()
def profiles() -> None:
    """The shipped acceleration profiles."""


@profiles.command("list")
def profiles_list() -> None:
    """Name, model, calibrated or not, and predicted scale-step speedup of every shipped profile:
    by FLOPs for all (comparable across rows), and by the latency model where calibration fitted one
    (closer to what the machine it was calibrated on measures)."""
    from ..accel.cost import steps_flops
    from ..models.catalog import spec_for
    from ..profile import identity
    from ..profiles import resolve, shipped
    click.echo(f"{'profile':<32} {'model':<14} {'kind':<11} {'FLOPs':>7} {'latency':>8}  description")
    for name in shipped():
        p = resolve(name)
        spec = spec_for(p.model)
        flops = steps_flops(spec, identity(spec), 1) / steps_flops(spec, p, 1)      # no decoder: scale steps only
        lat = p.measured.get("predicted_speedup_transformer")
        lat_txt = f"{lat:.2f}x" if lat and str(p.measured.get("predicted_by", "")).startswith("latency") else ""
        click.echo(f"{name:<32} {spec.config:<14} {'calibrated' if p.calibrated else 'template':<11}"
                   f" {f'{flops:.2f}x':>7} {lat_txt:>8}  {p.description[:60]}")
    from ..accel.presets import TEMPLATES
    for name in TEMPLATES:                     # built for the model --profile NAME is given with
        click.echo(f"{name:<32} {'(any)':<14} {'template':<11} {'':>7} {'':>8}  built for the model at hand; "
                   f"prefix infinity- or var- to check the family")


@profiles.command("show")
@click.argument("name")
def profiles_show(name: str) -> None:
    """Print a profile (shipped name or file) as JSON."""
    import json

    from ..profiles import resolve
    click.echo(json.dumps(resolve(name).to_dict(), indent=2))
