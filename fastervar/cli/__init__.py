"""The `fastervar` command line: parse, call, report.

One module per group of commands, each a thin layer over the package: `app` (the group and its
error handling), `options` (options and argument parsing shared by the commands), then the
toolchain commands (`generate`, `evaluate`, `calibrate`, `export`, `bench`, `train`) and the
torch-free ones (`deploy`: run, serve, generate-batch; `profiles`). Toolchain modules, which need
torch, are imported inside the command bodies, so `fastervar --help` and the torch-free commands
work on hosts without torch. Every FastervarError becomes a one-line message with exit code 2.
"""

from . import bench, calibrate, clip, deploy, evaluate, export, generate, profiles, train  # noqa: F401 -- registers the commands
from .app import EXIT_BAD_INPUT, main

__all__ = ["EXIT_BAD_INPUT", "main"]
