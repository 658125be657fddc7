"""The package, the runtime and the CLI entry point import on a host without torch."""

from __future__ import annotations

import subprocess
import sys

BLOCK_TORCH = "import sys; sys.modules['torch'] = None; "


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + code], capture_output=True, text=True, check=False)


def test_package_and_runtime_import_without_torch():
    p = _run("import fastervar, fastervar.runtime, fastervar.runtime.pipeline, fastervar.bundle_contract, "
             "fastervar.utils.noise, fastervar.utils.images, fastervar.utils.atomic, fastervar.utils.machine, "
             "fastervar.models.var.configs, fastervar.cli; print('ok')")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "ok"


def test_cli_help_without_torch():
    p = _run("from fastervar.cli import main; main(['--help'])")
    assert "generate" in p.stdout, p.stderr


def test_noise_is_one_uniform_per_token_keyed_by_seed_image_and_step():
    from fastervar.utils.noise import batch_uniform, image_keys, step_uniform
    a = step_uniform(1, 2, 3, 256)
    assert a.shape == (256,) and a.dtype.name == "float32" and (a >= 0).all() and (a < 1).all()
    assert (batch_uniform(image_keys(1, [7, 2]), 3, 256)[1] == a).all()
    assert (batch_uniform([(5, 0), (1, 2)], 3, 256)[1] == a).all()       # per-image seeds mix in one batch
    assert not (step_uniform(1, 2, 4, 256) == a).all()
    assert not (step_uniform(2, 2, 3, 256) == a).all()
