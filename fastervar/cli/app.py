"""The `fastervar` command group: every FastervarError is one line on stderr and exit code 2."""

from __future__ import annotations

import sys

import click

from .. import __version__
from ..errors import FastervarError

EXIT_BAD_INPUT = 2


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FastervarError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            click.echo("interrupted; nothing was written", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fastervar")
def main() -> None:
    """Training-free acceleration and compiled deployment for VAR-family image generators."""
