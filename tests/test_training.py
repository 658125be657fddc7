"""The training loop is deterministic and resumes exactly; the dataset loader fails clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fastervar.errors import FastervarError
from fastervar.train import loop
from fastervar.train.data import load_split, to_model_space
from fastervar.utils.images import grey_to_rgb


def _train(tmp, total: int, stop_after: int | None = None) -> torch.Tensor:
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1)
    opt = torch.optim.AdamW(net.parameters(), lr=0.1)
    data = torch.from_numpy(np.random.default_rng(0).standard_normal((64, 5)).astype(np.float32))

    def step_fn(step: int) -> dict[str, float]:
        if stop_after is not None and step == stop_after:
            raise KeyboardInterrupt
        b = data[loop.batch_indices(1, step, len(data), 8)]
        loss = (net(b[:, :4]).squeeze(1) - b[:, 4]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    loop.run("t", tmp / "t.ckpt", total, step_fn, {"net": net, "opt": opt}, save_every=3)
    return net.weight.detach().clone()


def test_resume_continues_exactly(tmp_path):
    straight = _train(tmp_path / "a", 12)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "b", 12, stop_after=7)          # last checkpoint at step 6
    state = torch.load(tmp_path / "b" / "t.ckpt", weights_only=True)
    assert state["step"] == 6
    resumed = _train(tmp_path / "b", 12)
    assert torch.equal(straight, resumed)


def test_batches_are_epoch_permutations():
    seen = np.concatenate([loop.batch_indices(3, s, 40, 8) for s in range(5)])
    assert sorted(seen.tolist()) == list(range(40))
    assert not np.array_equal(loop.batch_indices(3, 0, 40, 8), loop.batch_indices(3, 5, 40, 8))


def test_missing_dataset_names_the_debian_package(tmp_path):
    with pytest.raises(FastervarError, match="install the Debian package dataset-fashion-mnist"):
        load_split("train", tmp_path)


def test_image_layouts():
    img = np.arange(28 * 28, dtype=np.uint8).reshape(1, 28, 28)
    x = to_model_space(img)
    assert x.shape == (1, 3, 32, 32) and x.min() >= -1 and x.max() <= 1 and x[0, :, 0, 0].tolist() == [-1] * 3
    rgb = grey_to_rgb(img)
    assert rgb.shape == (1, 32, 32, 3) and (rgb[0, 2:30, 2:30, 1] == img[0]).all()


@pytest.mark.parametrize("args, where", [((), "runs/fashion-tiny/out"), (("--work-dir", "w"), "w/out"),
                                         (("--out", "mine"), "mine"), (("--replace-shipped",), "SHIPPED")])
def test_train_tiny_never_replaces_the_shipped_model_unless_asked(tmp_path, monkeypatch, args, where):
    from click.testing import CliRunner

    from fastervar.assets import ROOT
    from fastervar.cli import main
    from fastervar.train import data, tiny

    seen = {}
    monkeypatch.setattr(data, "load_split", lambda split, root=None: None)
    monkeypatch.setattr(tiny, "train_all", lambda name, work, out, settings, data_dir: seen.update(out=out) or {})
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["train-tiny", *args])
    assert r.exit_code == 0, r.output
    assert seen["out"] == (ROOT if where == "SHIPPED" else Path(where))
    r = CliRunner().invoke(main, ["train-tiny", "--out", "x", "--replace-shipped"])
    assert r.exit_code == 2 and "contradict" in r.output
