"""Image folders are written whole or not at all: a failure midway leaves the old folder as it was,
and a folder holding anything but generated images is never replaced."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fastervar.errors import FastervarError
from fastervar.utils.images import grey_to_rgb, image_folder, write_pngs

IMAGES = np.arange(4 * 8 * 8 * 3, dtype=np.uint8).reshape(4, 8, 8, 3)


def test_a_folder_appears_whole_and_replaces_an_older_one(tmp_path):
    out = tmp_path / "png"
    with image_folder(out) as stage:
        write_pngs(IMAGES, stage)
        assert not out.exists()                                      # nothing visible until the end
    assert sorted(p.name for p in out.iterdir()) == ["0000.png", "0001.png", "0002.png", "0003.png"]
    with image_folder(out) as stage:
        write_pngs(IMAGES[:2][::-1], stage)
    assert sorted(p.name for p in out.iterdir()) == ["0000.png", "0001.png"]
    assert np.array_equal(np.asarray(Image.open(out / "0000.png")), IMAGES[1])


def test_a_failure_midway_leaves_the_old_folder_untouched(tmp_path, monkeypatch):
    out = tmp_path / "png"
    with image_folder(out) as stage:
        write_pngs(IMAGES, stage)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    saved = []
    real_save = Image.Image.save

    def failing_save(self, path, *args, **kwargs):
        if len(saved) == 2:
            raise OSError(28, "No space left on device")
        saved.append(path)
        return real_save(self, path, *args, **kwargs)
    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(FastervarError, match="No space left on device"), image_folder(out) as stage:
        write_pngs(IMAGES[::-1], stage)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["png"]           # no staging folder left behind


def test_a_folder_holding_other_files_is_refused_before_any_work(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FastervarError, match="holds files that are not generated images"), image_folder(tmp_path):
        raise AssertionError("the work must not start")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_grey_digits_take_the_generated_layout():
    grey = np.full((2, 28, 28), 200, np.uint8)
    rgb = grey_to_rgb(grey)
    assert rgb.shape == (2, 32, 32, 3) and rgb[0, 0, 0].tolist() == [0, 0, 0] and rgb[1, 16, 16].tolist() == [200] * 3
