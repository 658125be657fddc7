"""Pin what FastVAR's and SkipVAR's own Infinity code generate on the tiny random Infinity at the 1M
schedule (1:1, 13 scales up to 64x64, where their width- and index-keyed branches trigger) into
tests/data, so our `infinity-fastvar` and `infinity-skipvar-*` profiles are checked against them
bit for bit without a clone.

    git --git-dir=<mirror of csguoh/FastVAR> archive HEAD Infinity | tar -x -C /tmp/fastvar
    git --git-dir=<mirror of fakerone-li/SkipVAR> archive HEAD | tar -x -C /tmp/skipvar
    python scripts/record_infinity_peers.py /tmp/fastvar/Infinity /tmp/skipvar \\
        --fastvar-commit SHA --skipvar-commit SHA

The model, the VAE, the stand-in T5 features and the sampling settings are those of
`record_infinity_reference.py` (its constructor arguments, seeded weights, stubs and one thread),
except the schedule: 1M at 1:1. Each prompt runs alone (B=1): FastVAR's self-attention hard-codes
a batch of 2, a prompt and its guidance twin, and SkipVAR's decision reads `.item()`.

Harness patches, none of them in the clones: flash_attn through SDPA, timm/torchvision/imageio/cv2
stubs (unused at inference), the bf16 cast of cross-attention inputs dropped (fp32 references),
and, for SkipVAR, `joblib.load` answered by stand-ins built from the plain numbers in
research/skipvar_decision.json (nothing is unpickled): a StandardScaler (x - mean) / scale and a
multinomial LogisticRegression argmax(coef @ z + intercept); for its static points, stand-ins that
always pick that point. The scaler stand-in records the two features SkipVAR computed.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"        # before torch loads: references depend on thread count
os.environ["TORCHDYNAMO_DISABLE"] = "1"

import argparse
import contextlib
import importlib.util
import io
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
spec = importlib.util.spec_from_file_location("record_infinity_reference", HERE / "record_infinity_reference.py")
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)

PN, RATIO = "1M", 1.0
PROMPTS = (0, 1)                                  # rows of the reference's stand-in text (5 and 9 tokens)
SKIPVAR_POINTS = {"skip2": (2, None), "uncond2": (0, 2)}   # forced (skip class, uncond class)
DECISION_FOLDER = "decision_model_ssim_84"        # SkipVAR's default
SAMPLING = {**ref.SAMPLING_KWARGS, "B": 1, "cfg_list": [3.0] * 13, "tau_list": [0.5] * 13}


def text_row(i: int) -> tuple[torch.Tensor, list[int], torch.Tensor, int]:
    """Prompt i of the reference's stand-in T5 features, compacted for a batch of one."""
    kv, lens, _, _ = ref.text_condition()
    start = sum(lens[:i])
    n = lens[i]
    return kv[start:start + n], [n], torch.tensor([0, n], dtype=torch.int32), n


def purge() -> None:
    """Forget a clone's `infinity` package, so the next clone's imports are its own."""
    for name in [m for m in sys.modules if m == "infinity" or m.startswith("infinity.")]:
        del sys.modules[name]


def build(clone: Path, basics: list[str]) -> tuple[Any, Any, list]:
    """The tiny model and VAE from a clone, seeded as the reference's, and the 1M 1:1 schedule."""
    sys.path.insert(0, str(clone))
    for name in basics:
        ref.drop_bf16_cast(importlib.import_module(name))
    from infinity.models.bsq_vae import vae as vae_mod
    from infinity.models.infinity import Infinity
    from infinity.utils.dynamic_resolution import dynamic_resolution_h_w
    real = vae_mod.AutoEncoder
    vae_mod.AutoEncoder = lambda a: real(argparse.Namespace(**{**vars(a), **ref.VAE_OVERRIDES}))
    with contextlib.redirect_stdout(io.StringIO()):
        vae = vae_mod.vae_model(None, **ref.VAE_KWARGS)
        model = Infinity(vae_local=vae, **{**ref.INFINITY_KWARGS, "pn": PN}).eval().requires_grad_(False)
    vae_mod.AutoEncoder = real
    ref.load_seeded(model, ref.SEEDS["transformer"])
    ref.load_seeded(vae, ref.SEEDS["vae"])
    schedule = [(1, h, w) for _, h, w in dynamic_resolution_h_w[RATIO][PN]["scales"]]
    sys.path.remove(str(clone))
    return model, vae, schedule


def run(model: Any, vae: Any, schedule: list, method: str, prompt: int) -> dict[str, np.ndarray]:
    """One call of the clone's sampler for one prompt, its sampled bits per executed scale captured."""
    bits: list[torch.Tensor] = []
    call = getattr(model, method)
    with ref.spy(vae.quantizer.lfq, "indices_to_codes", bits, lambda args, out: args[0]), \
            contextlib.redirect_stdout(io.StringIO()):
        _, _, img = call(vae=vae, scale_schedule=schedule, label_B_or_BLT=text_row(prompt), **SAMPLING)
    flat = torch.cat([b.reshape(1, -1) for b in bits], 1).numpy().astype(np.uint8)
    rgb = np.ascontiguousarray(img.numpy()[..., ::-1])                      # upstream returns BGR
    return {"scales": np.array([b.shape[2] * b.shape[3] for b in bits], dtype=np.int64),
            "bits": np.packbits(flat.reshape(-1)), "bits_count": np.array(flat.size, dtype=np.int64),
            **ref.image_digest(rgb), "image_strided": rgb[:, ::16, ::16].copy()}


class _Scaler:
    def __init__(self, mean, scale, record):
        self.mean, self.scale, self.record = np.asarray(mean), np.asarray(scale), record

    def transform(self, x):
        self.record.append(np.asarray(x, dtype=np.float64)[0].copy())
        return (np.asarray(x, dtype=np.float64) - self.mean) / self.scale


class _Regression:
    def __init__(self, classes, coef, intercept, record, forced=None):
        self.classes, self.coef, self.intercept = np.asarray(classes), np.asarray(coef), np.asarray(intercept)
        self.record, self.forced = record, forced

    def predict(self, z):
        pick = self.forced if self.forced is not None else \
            self.classes[int(np.argmax(self.coef @ np.asarray(z)[0] + self.intercept))]
        self.record.append(int(pick))
        return np.array([pick])


def joblib_stub(decision: dict, features: list, classes: list, forced: tuple[int | None, int | None]) -> None:
    """`joblib.load` for SkipVAR's four files, from plain numbers; nothing is unpickled."""
    def load(path: str) -> Any:
        name = Path(path).stem
        d = decision[name]
        if name.endswith("scaler"):
            return _Scaler(d["mean"], d["scale"], features)
        return _Regression(d["classes"], d["coef"], d["intercept"], classes,
                           forced[0] if name.startswith("skip") else forced[1])
    sys.modules["joblib"] = types.ModuleType("joblib")
    sys.modules["joblib"].load = load


def record_fastvar(clone: Path) -> dict[str, np.ndarray]:
    model, vae, schedule = build(clone, ["infinity.models.basic", "infinity.models.fastvar_basic"])
    out = {}
    for p in PROMPTS:
        out.update({f"fastvar_p{p}_{k}": v for k, v in run(model, vae, schedule, "autoregressive_infer_cfg", p).items()})
        print(f"fastvar, prompt {p}: {len(out[f'fastvar_p{p}_scales'])} scales sampled")
    purge()
    return out


def record_skipvar(clone: Path, decision: dict) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for point, forced in [*SKIPVAR_POINTS.items(), ("decision", (None, None))]:
        features: list = []
        classes: list = []
        joblib_stub(decision, features, classes, forced)
        model, vae, schedule = build(clone, ["infinity.models.basic"])
        for p in PROMPTS:
            features.clear()
            classes.clear()
            got = run(model, vae, schedule, "autoregressive_infer_cfg_SkipVAR", p)
            out.update({f"skipvar_{point}_p{p}_{k}": v for k, v in got.items()})
            if point == "decision":
                out[f"skipvar_decision_p{p}_features"] = np.asarray(features[0])
                out[f"skipvar_decision_p{p}_classes"] = np.asarray(classes, dtype=np.int64)
            print(f"skipvar {point}, prompt {p}: {len(got['scales'])} scales sampled"
                  + (f", features {features[0]}, classes {classes}" if point == "decision" else ""))
        purge()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fastvar", type=Path, help="csguoh/FastVAR's Infinity/ folder")
    parser.add_argument("skipvar", type=Path, help="fakerone-li/SkipVAR's tree")
    parser.add_argument("--fastvar-commit", required=True)
    parser.add_argument("--skipvar-commit", required=True)
    args = parser.parse_args()
    torch.set_num_threads(ref.THREADS)
    ref.install_stubs()
    sys.modules.setdefault("cv2", types.ModuleType("cv2"))
    decision = json.loads((ROOT.parent / "shared" / "research" / "skipvar_decision.json").read_text())
    decision = decision["models"][DECISION_FOLDER]
    arrays = {**record_fastvar(args.fastvar.resolve()), **record_skipvar(args.skipvar.resolve(), decision)}
    dest = ROOT / "tests" / "data"
    np.savez_compressed(dest / "infinity_peers_reference.npz", **arrays)
    meta = {
        "fastvar": {"repo": "csguoh/FastVAR", "commit": args.fastvar_commit,
                    "call": "Infinity/infinity/models/infinity.py autoregressive_infer_cfg (FastVARCrossAttnBlock)"},
        "skipvar": {"repo": "fakerone-li/SkipVAR", "commit": args.skipvar_commit,
                    "call": "infinity/models/infinity.py autoregressive_infer_cfg_SkipVAR",
                    "decision_folder": DECISION_FOLDER, "forced_points": SKIPVAR_POINTS},
        "model": "record_infinity_reference.py's tiny Infinity and VAE, seeded the same way", "pn": PN,
        "h_div_w": RATIO, "prompts": list(PROMPTS), "threads": ref.THREADS, "torch": torch.__version__,
        "sampling_kwargs": SAMPLING,
        "patches": ["flash_attn through SDPA", "timm, torchvision, imageio, cv2 stubbed",
                    "CrossAttention's bf16 cast dropped (basic.py and fastvar_basic.py)",
                    "joblib.load answered from skipvar_decision.json (scaler and logistic regression as numbers)"],
        "arrays": {"{method}_p{i}_scales": "tokens of each scale the method sampled, in order",
                   "{method}_p{i}_bits": "np.packbits of every sampled bit, scale by scale, (h, w, d) within a scale",
                   "{method}_p{i}_image_sha256": "sha256 of the (1, H, W, 3) uint8 RGB image",
                   "{method}_p{i}_image_strided": "[:, ::16, ::16] of it",
                   "skipvar_decision_p{i}_features": "[diff_hf, high-frequency ratio] as SkipVAR computed them",
                   "skipvar_decision_p{i}_classes": "the skip model's class, then the uncond model's when skip is 0"},
    }
    (dest / "infinity_peers.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {dest}/infinity_peers_reference.npz and infinity_peers.json")


if __name__ == "__main__":
    main()
