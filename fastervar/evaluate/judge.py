"""Which classifier judges a model's images, and against which real images.

The shipped judge knows Fashion-MNIST only. `train-tiny --out DIR` writes a judge for whatever data
it trained on (DIR/classifier/ and DIR/fashion_mnist_test_1000.npz, named for the default data
set whatever the data), and `--judge DIR` points evaluate, calibrate and bench at it, so a model
trained on, say, MNIST is not scored by a Fashion-MNIST classifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..assets import ROOT
from ..errors import FastervarError

if TYPE_CHECKING:
    from ..models.var.family import VARModel

CLASSIFIER = Path("classifier") / "classifier.safetensors"
STATS = Path("classifier") / "fashion_test_stats.npz"
REAL_IMAGES = Path("fashion_mnist_test_1000.npz")


@dataclass(frozen=True)
class JudgeFiles:
    """The classifier, its real-test statistics and a real-image subset, from one folder."""

    root: Path
    shipped: bool

    @property
    def classifier(self) -> Path:
        return self.root / CLASSIFIER

    @property
    def stats(self) -> Path:
        return self.root / STATS

    @property
    def real_images(self) -> Path:
        return self.root / REAL_IMAGES

    @property
    def name(self) -> str:
        return "shipped Fashion-MNIST judge" if self.shipped else f"judge in {self.root}"


def shipped_judge() -> JudgeFiles:
    return JudgeFiles(ROOT, shipped=True)


def judge_from_dir(path: str | Path) -> JudgeFiles:
    """A folder written by `train-tiny --out`, refused with one line naming what it lacks."""
    root = Path(path)
    if not root.is_dir():
        raise FastervarError(f"--judge {root}: not a folder (give the folder `train-tiny --out` wrote)")
    files = JudgeFiles(root, shipped=False)
    for need in (files.classifier, files.stats, files.real_images):
        if not need.is_file():
            raise FastervarError(f"--judge {root}: missing {need.relative_to(root)} "
                                 f"(a folder written by `fastervar train-tiny --out` has it)")
    return files


def load_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Arrays from a judge file, never unpickling; a damaged file is one line."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise FastervarError(f"{path}: not a judge file (no {missing[0]!r} array)")
            return {k: z[k] for k in keys}
    except (OSError, ValueError) as exc:
        raise FastervarError(f"cannot read {path}: {exc}") from None


def check_domain(model: VARModel) -> None:
    """A judge reads 32 px images of 10 classes: distribution metrics and class accuracy mean
    something only for models of that shape, such as the shipped ones."""
    if model.cfg.var.num_classes != 10 or model.cfg.resolution != 32:
        raise FastervarError(f"the judge scores 32 px images of 10 classes; {model.cfg.name} is "
                             f"{model.cfg.resolution} px with {model.cfg.var.num_classes} classes")


def _in_domain(model: VARModel) -> bool:
    try:
        check_domain(model)
    except FastervarError:
        return False
    return True


NOT_SHIPPED = ("the default judge knows only Fashion-MNIST and these are not the shipped weights; "
               "pass --judge DIR (the folder `fastervar train-tiny --out DIR` wrote) to judge with your data's classifier")


def pick_judge(model: VARModel, judge_dir: str | Path | None, fall_back: bool) -> tuple[JudgeFiles | None, str | None]:
    """The judge for a model, and a warning when there is doubt: `--judge DIR` if given; the shipped
    judge for shipped weights; for other weights of the judge's shape, the shipped judge only if
    `fall_back` (evaluate must score with something), with a warning either way."""
    if judge_dir is not None or fall_back:
        check_domain(model)
    if judge_dir is not None:
        return judge_from_dir(judge_dir), None
    if not _in_domain(model):
        return None, None
    if getattr(model, "weights_origin", None) == "shipped":
        return shipped_judge(), None
    return (shipped_judge() if fall_back else None), NOT_SHIPPED
