"""Where the files shipped inside the package live. No torch import."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent / "assets"
EMBEDDED_MODEL_DIR = ROOT / "fashion-tiny"
CLASSIFIER_FILE = ROOT / "classifier" / "classifier.safetensors"
REFERENCE_STATS_FILE = ROOT / "classifier" / "fashion_test_stats.npz"
REAL_TEST_IMAGES_FILE = ROOT / "fashion_mnist_test_1000.npz"
PROFILES_DIR = ROOT / "profiles"
EMBEDDED_MODEL_NAME = "fashion-tiny"
