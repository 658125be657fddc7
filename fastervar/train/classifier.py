"""Training the evaluation classifier and computing the real-test-set reference statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..evaluate.classifier import FashionClassifier, prepare
from ..evaluate.features import ClassifierFeatures
from ..evaluate.metrics import gaussian_stats
from ..utils.images import grey_to_rgb
from . import loop
from .data import load_split


def _shift(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random +-2 px translation, so the judge is not fooled by a generator's slight offsets."""
    dx, dy = rng.integers(-2, 3, 2)
    return torch.roll(x, shifts=(int(dy), int(dx)), dims=(2, 3))


def train_classifier(work: Path, seed: int, data_dir: str | None, steps: int = 1800,
                     batch: int = 128) -> FashionClassifier:
    images, labels = load_split("train", data_dir)
    x_all = prepare(grey_to_rgb(images))
    y_all = torch.from_numpy(labels)
    torch.manual_seed(seed)
    net = FashionClassifier()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)

    def step_fn(step: int) -> dict[str, float]:
        net.train()
        for g in opt.param_groups:
            g["lr"] = loop.cosine_lr(step, steps, 2e-3, 50)
        sel = loop.batch_indices(seed + 3, step, len(x_all), batch)
        x = _shift(x_all[sel], np.random.default_rng([seed, 5, step]))
        logits = net(x)
        loss = F.cross_entropy(logits, y_all[sel])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item(), "acc": (logits.argmax(1) == y_all[sel]).float().mean().item()}

    loop.run("classifier", work / "classifier.ckpt", steps, step_fn, {"net": net, "opt": opt})
    return net.eval()


def test_accuracy(ext: ClassifierFeatures, data_dir: str | None) -> float:
    images, labels = load_split("test", data_dir)
    return float((ext.predict(grey_to_rgb(images)) == labels).mean())


def reference_stats(ext: ClassifierFeatures, data_dir: str | None, kid_samples: int = 2000) -> dict[str, np.ndarray]:
    """Gaussian statistics of all 10k real test images, plus a feature sample for KID."""
    images, _ = load_split("test", data_dir)
    feats = ext.features(grey_to_rgb(images))
    mu, sigma = gaussian_stats(feats)
    pick = np.random.default_rng(0).choice(len(feats), kid_samples, replace=False)
    return {"mu": mu, "sigma": sigma, "kid_features": feats[pick].astype(np.float32),
            "test_accuracy": np.array(test_accuracy(ext, data_dir))}


def real_test_subset(data_dir: str | None, n: int = 1000) -> dict[str, np.ndarray]:
    """The first n test images (balanced enough: 100 per class on average), shipped for offline use."""
    images, labels = load_split("test", data_dir)
    return {"images": images[:n], "labels": labels[:n]}


def build_eval_assets(work: Path, out: Path, seed: int, data_dir: str | None) -> dict[str, float]:
    """Train the classifier and write it, the reference statistics and the real-image subset."""
    from safetensors.torch import save_file

    from ..utils.atomic import atomic_path

    net = train_classifier(work, seed, data_dir)
    ext = ClassifierFeatures(net.cpu())
    stats = reference_stats(ext, data_dir)
    (out / "classifier").mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "classifier" / "classifier.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
    with atomic_path(out / "classifier" / "fashion_test_stats.npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **stats)
    with atomic_path(out / "fashion_mnist_test_1000.npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **real_test_subset(data_dir))
    return {"classifier_test_accuracy": float(stats["test_accuracy"])}
