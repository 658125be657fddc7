"""The package's layering, read from its own imports: the runtime is only the bundle runner, the
neutral utilities import nothing of ours, no two toolchain packages import each other, the bundle's
tensor names live in the contract alone, and the command modules stay small."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fastervar"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every fastervar module `path` imports, at any depth of the file (lazy imports included)."""
    here = _module(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("fastervar")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            if base.startswith("fastervar"):
                out |= {base} | {f"{base}.{a.name}" for a in node.names}
    return out


GRAPH = {_module(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _importers(prefix: str) -> set[str]:
    return {m for m, deps in GRAPH.items() if any(d == prefix or d.startswith(prefix + ".") for d in deps)}


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("layer", ["fastervar.models", "fastervar.profile", "fastervar.calibrate",
                                   "fastervar.train", "fastervar.timing", "fastervar.evaluate"])
def test_the_toolchain_does_not_use_the_runtime_as_a_utilities_package(layer):
    users = sorted(m for m in _importers("fastervar.runtime") if _in(m, layer))
    assert not users, f"{users} import fastervar.runtime"


def test_utils_import_nothing_of_ours_but_errors():
    for module, deps in GRAPH.items():
        if _in(module, "fastervar.utils"):
            ours = {d for d in deps if not _in(d, "fastervar.utils") and d != "fastervar.errors"
                    and not d.startswith("fastervar.errors.")}
            assert not ours, f"{module} imports {sorted(ours)}"


@pytest.mark.parametrize("a, b", [("fastervar.evaluate", "fastervar.train"), ("fastervar.calibrate", "fastervar.bench"),
                                  ("fastervar.export", "fastervar.bench"), ("fastervar.runtime", "fastervar.export")])
def test_no_cycle_between_packages(a, b):
    a_uses_b = any(_in(m, a) for m in _importers(b))
    b_uses_a = any(_in(m, b) for m in _importers(a))
    assert not (a_uses_b and b_uses_a), f"{a} and {b} import each other"


def test_the_bundle_contract_is_torch_free_and_export_and_runtime_read_it():
    assert not any(d.startswith("fastervar.models") for d in GRAPH["fastervar.bundle_contract"])
    assert any(_in(m, "fastervar.export") for m in _importers("fastervar.bundle_contract"))
    assert any(_in(m, "fastervar.runtime") for m in _importers("fastervar.bundle_contract"))


def test_tensor_names_are_spelled_only_in_the_contract():
    pattern = re.compile(r'"out\.|"noise\.|"tokens\.')
    found = [f"{p.relative_to(PACKAGE)}:{i}" for p in PACKAGE.rglob("*.py")
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert found and all(f.startswith("bundle_contract.py:") for f in found), found


def test_command_modules_stay_small():
    sizes = {p.name: len(p.read_text().splitlines()) for p in (PACKAGE / "cli").glob("*.py")}
    assert max(sizes.values()) <= 300, sizes


def test_the_torch_free_commands_import_no_toolchain_module():
    toolchain = ("fastervar.models", "fastervar.accel.accelerated", "fastervar.calibrate", "fastervar.export",
                 "fastervar.bench", "fastervar.evaluate", "fastervar.train", "fastervar.timing")
    for module in ("fastervar.cli.deploy", "fastervar.runtime.pipeline", "fastervar.runtime.sessions",
                   "fastervar.serve"):
        bad = sorted(d for d in GRAPH[module] if any(_in(d, t) for t in toolchain))
        assert not bad, f"{module} imports {bad}"
