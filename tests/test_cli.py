"""The `fastervar` CLI: generate works, and every bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from fastervar import __version__
from fastervar.cli import main


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def assert_bad_input(result, fragment: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output)
    # progress bars may precede it; the message itself is exactly one line
    lines = [ln.split("\r")[-1] for ln in result.stderr.splitlines()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert errors[0] == lines[-1] or not any(ln.strip() for ln in lines[lines.index(errors[0]) + 1:])
    assert fragment in errors[0]
    assert "Traceback" not in result.output


def test_version_and_help():
    assert __version__ in run("--version").output
    out = run("generate", "--help").output
    for opt in ("--var-checkpoint", "--classes", "--sampler", "--more-smooth", "--batch-size", "--device"):
        assert opt in out


def test_generate_writes_numbered_pngs_in_class_order(tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("2, 5\n# comment\n9\n")
    out = tmp_path / "imgs"
    r = run("generate", "--model", "tiny", "--random-weights", "--class", "1", "--classes", str(classes),
            "--seed", "3", "--batch-size", "2", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["0000.png", "0001.png", "0002.png", "0003.png"]
    img = np.asarray(Image.open(out / "0000.png"))
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    # image 0 is class 1 whatever the batch size (portable sampler)
    out1 = tmp_path / "single"
    assert run("generate", "--model", "tiny", "--random-weights", "--class", "1", "--seed", "3",
               "--out", str(out1)).exit_code == 0
    assert np.array_equal(np.asarray(Image.open(out1 / "0000.png")), img)


def test_generate_from_checkpoint_files(tmp_path, tiny_files):
    r = run("generate", "--var-checkpoint", str(tiny_files[0]), "--vae-checkpoint", str(tiny_files[1]),
            "--model", "tiny", "--class", "4", "--sampler", "official", "--more-smooth", "--out", str(tmp_path / "o"))
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o" / "0000.png").exists()


def test_missing_checkpoint(tmp_path, tiny_files):
    r = run("generate", "--var-checkpoint", str(tmp_path / "none.pth"), "--vae-checkpoint", str(tiny_files[1]),
            "--class", "1", "--out", str(tmp_path / "o"))
    assert_bad_input(r, "checkpoint not found")
    assert not (tmp_path / "o").exists()


def test_corrupt_checkpoint(tmp_path, tiny_files):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(tiny_files[0].read_bytes()[:500])
    r = run("generate", "--var-checkpoint", str(bad), "--vae-checkpoint", str(tiny_files[1]),
            "--class", "1", "--out", str(tmp_path / "o"))
    assert_bad_input(r, "corrupt or truncated")
    assert not (tmp_path / "o").exists()


def test_state_dict_of_another_model(tmp_path, tiny_files):
    r = run("generate", "--model", "tiny-saln", "--var-checkpoint", str(tiny_files[0]), "--vae-checkpoint",
            str(tiny_files[1]), "--class", "1", "--out", str(tmp_path / "o"))
    assert_bad_input(r, "VAR checkpoint is missing key 'shared_ada_lin.1.weight'")


def test_swapped_files(tmp_path, tiny_files):
    r = run("generate", "--var-checkpoint", str(tiny_files[1]), "--vae-checkpoint", str(tiny_files[0]),
            "--class", "1", "--out", str(tmp_path / "o"))
    assert_bad_input(r, "looks like a VAE checkpoint but was given as --var-checkpoint")


def test_class_out_of_range(tmp_path):
    r = run("generate", "--model", "tiny", "--random-weights", "--class", "10", "--out", str(tmp_path / "o"))
    assert_bad_input(r, "class index 10 is out of range")
    assert not (tmp_path / "o").exists()


def test_unwritable_out(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run("generate", "--model", "tiny", "--random-weights", "--class", "1", "--out", str(blocker / "sub"))
    assert_bad_input(r, f"cannot write {blocker / 'sub'}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu(tmp_path):
    r = run("generate", "--model", "tiny", "--random-weights", "--class", "1", "--device", "cuda",
            "--out", str(tmp_path / "o"))
    assert_bad_input(r, "no CUDA GPU is available")


def test_unknown_model(tmp_path):
    r = run("generate", "--model", "d17", "--random-weights", "--class", "1", "--out", str(tmp_path / "o"))
    assert_bad_input(r, "unknown model 'd17'; known models:")


def test_bad_arguments_are_usage_errors(tmp_path):
    r = run("generate", "--model", "tiny", "--random-weights", "--class", "x", "--out", str(tmp_path))
    assert r.exit_code == 2 and "Traceback" not in r.output
    r = run("generate", "--model", "tiny", "--random-weights", "--out", str(tmp_path / "o"))
    assert_bad_input(r, "no classes given")
    r = run("generate", "--model", "tiny", "--random-weights", "--class", "1", "--more-smooth", "--out", str(tmp_path / "o"))
    assert_bad_input(r, "it needs --sampler official")
    assert not (tmp_path / "o").exists()


def test_real_process_prints_one_line_and_exits_2(tmp_path):
    p = subprocess.run([sys.executable, "-m", "fastervar.cli", "generate", "--var-checkpoint",
                        str(tmp_path / "missing.pth"), "--vae-checkpoint", str(tmp_path / "v.pth"),
                        "--class", "1", "--out", str(tmp_path / "o")], capture_output=True, text=True,
                       check=False)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and p.stderr.startswith("error: checkpoint not found")
