"""Shared by the benchmark scripts: write a result as JSON, atomically, and say where."""

from __future__ import annotations

import json
from pathlib import Path

from fastervar.runtime.atomic import atomic_path


def write_result(path: Path | None, result: dict) -> None:
    if path is None:
        return
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
