"""Pin upstream Infinity's outputs on a tiny random configuration into tests/data, so our clean-room
Infinity is checked bit-exactly against upstream without a clone or weights.

    pip install einops pytz pillow safetensors
    python scripts/record_infinity_reference.py /path/to/Infinity [--commit SHA]

The argument is a clone (or an exported tree, then pass --commit) of FoundationVision/Infinity. The
model and VAE are built with tools/run_infinity.py's constructor arguments at tiny sizes, every
parameter is overwritten from `seeded_parameters` (keyed by name, so ours regenerates the same
weights), and `autoregressive_infer_cfg` runs as run_infinity calls it, on CPU with one thread.
Upstream's CUDA-only imports are stubbed and one line is patched at runtime (both in
`fastervar/bench/upstream_infinity.py`): the bf16 cast of cross-attention inputs, which fp32
references cannot have. The clone itself is never edited.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"        # before torch loads: references depend on thread count
os.environ["TORCHDYNAMO_DISABLE"] = "1"    # upstream's fused norm is torch.compile'd; run it eagerly

import argparse
import contextlib
import hashlib
import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from fastervar.bench.upstream_infinity import drop_bf16_cast, install_stubs
from fastervar.models.loading import seeded_parameters

THREADS = 1
SEEDS = {"transformer": 1, "vae": 2, "text": 3, "vae_latent": 4, "sampling": 0}
TEXT_LENS, TEXT_WIDTH = [5, 9], 256
ASPECTS = {"a1x1_": 1.0, "a1x2_": 0.5}     # h/w templates of dynamic_resolution_h_w
PN = "0.06M"
D = 8                                      # BSQ codebook dim: bits per token
VAE_LATENT_SHAPE = (1, D, 4, 6)            # decoder-only check: small, random-weight outputs don't compress
# run_infinity.load_infinity's constructor arguments, with the 2B's flags from scripts/infer.sh and a
# tiny width/depth (bf16=0: casting blocks to bf16 cannot run on CPU).
INFINITY_KWARGS: dict[str, Any] = {
    "text_channels": TEXT_WIDTH, "text_maxlen": 512, "shared_aln": True, "raw_scale_schedule": None,
    "checkpointing": "full-block", "customized_flash_attn": False, "fused_norm": True, "pad_to_multiplier": 128,
    "use_flex_attn": False, "add_lvl_embeding_only_first_block": 1, "use_bit_label": 1,
    "rope2d_each_sa_layer": 1, "rope2d_normalized_by_hw": 2, "pn": PN, "apply_spatial_patchify": 0,
    "inference_mode": True, "train_h_div_w_list": [1.0],
    "depth": 4, "embed_dim": 128, "num_heads": 2, "drop_path_rate": 0.1, "mlp_ratio": 4, "block_chunks": 2}
# run_infinity.load_visual_tokenizer's vae_model call (no checkpoint) ...
VAE_KWARGS: dict[str, Any] = {
    "schedule_mode": "dynamic", "codebook_dim": D, "codebook_size": 2 ** D, "patch_size": 16,
    "encoder_ch_mult": [1, 2, 4, 4, 4], "decoder_ch_mult": [1, 2, 4, 4, 4], "test_mode": True}
# ... with vae_model's fixed base_ch=128, num_res_blocks=2 shrunk: 32 is the least width GroupNorm(32) allows.
VAE_OVERRIDES: dict[str, Any] = {"base_ch": 32, "num_res_blocks": 1}
# gen_one_img's autoregressive_infer_cfg arguments as run_infinity's main passes them (2B: cfg 3, tau 0.5),
# but with both prompts in one batch.
SAMPLING_KWARGS: dict[str, Any] = {
    "B": len(TEXT_LENS), "g_seed": SEEDS["sampling"], "negative_label_B_or_BLT": None, "force_gt_Bhw": None,
    "cfg_sc": 3, "cfg_list": [3.0] * 7, "tau_list": [0.5] * 7, "top_k": 900, "top_p": 0.97, "returns_vemb": 1,
    "ratio_Bl1": None, "gumbel": 0, "norm_cfg": False, "cfg_exp_k": 0.0, "cfg_insertion_layer": [0],
    "vae_type": D, "softmax_merge_topk": -1, "ret_img": True, "trunk_scale": 1000, "gt_leak": 0,
    "gt_ls_Bl": None, "inference_mode": True, "sampling_per_bits": 1}


@torch.no_grad()
def load_seeded(module: nn.Module, seed: int) -> None:
    """Overwrite every parameter (buffers stay upstream's) with our name-keyed seeded values."""
    params = dict(module.named_parameters())
    values = seeded_parameters([(name, tuple(p.shape)) for name, p in params.items()], seed)
    for name, p in params.items():
        p.copy_(values[name])
    assert all(torch.equal(p, values[name]) for name, p in module.named_parameters(remove_duplicate=False))


def layout(module: nn.Module) -> list[list[Any]]:
    """Every state_dict key as [name, shape, "param" or "buffer"]."""
    params = {name for name, _ in module.named_parameters(remove_duplicate=False)}
    return [[k, list(v.shape), "param" if k in params else "buffer"] for k, v in module.state_dict().items()]


def text_condition() -> tuple[torch.Tensor, list[int], torch.Tensor, int]:
    """Random stand-in T5 features, compacted as run_infinity.encode_prompt does."""
    feats = np.random.default_rng(SEEDS["text"]).standard_normal((2, max(TEXT_LENS), TEXT_WIDTH), dtype=np.float32)
    for row, n in zip(feats, TEXT_LENS):
        row[n:] = 0
    kv_compact = torch.cat([torch.from_numpy(row[:n]) for row, n in zip(feats, TEXT_LENS)])
    cu_seqlens_k = F.pad(torch.tensor(TEXT_LENS, dtype=torch.int32).cumsum_(0), (1, 0))
    return kv_compact, list(TEXT_LENS), cu_seqlens_k, max(TEXT_LENS)


@contextlib.contextmanager
def spy(obj: Any, name: str, store: list[torch.Tensor], pick: Callable[[tuple, Any], torch.Tensor]):
    """Shadow obj.name with a pass-through that keeps a copy of pick(args, result) in store."""
    fn = getattr(obj, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        store.append(pick(args, result).detach().clone())
        return result

    setattr(obj, name, wrapper)
    try:
        yield
    finally:
        delattr(obj, name)


def sample(model: nn.Module, vae: nn.Module, schedule: list[tuple[int, int, int]]) -> dict[str, np.ndarray]:
    """One batched autoregressive_infer_cfg call, with its raw logits and sampled bits captured."""
    logits: list[torch.Tensor] = []
    bits: list[torch.Tensor] = []
    with spy(model, "get_logits", logits, lambda args, out: out), \
            spy(vae.quantizer.lfq, "indices_to_codes", bits, lambda args, out: args[0]):
        _, _, img = model.autoregressive_infer_cfg(vae=vae, scale_schedule=schedule,
                                                   label_B_or_BLT=text_condition(), **SAMPLING_KWARGS)
    assert len(logits) == len(bits) == len(schedule)
    B = SAMPLING_KWARGS["B"]
    bits_BLd = torch.cat([b.reshape(B, -1, D) for b in bits], 1).numpy().astype(np.uint8)  # (B,1,h,w,d) each
    assert set(np.unique(bits_BLd)) <= {0, 1}
    return {"schedule": np.array([(h, w) for _, h, w in schedule], dtype=np.int64),
            "bits": np.packbits(bits_BLd.reshape(-1)), "bits_shape": np.array(bits_BLd.shape, dtype=np.int64),
            "logits": torch.cat(logits, 1).numpy().astype(np.float32),
            **image_digest(np.ascontiguousarray(img.numpy()[..., ::-1]))}   # upstream returns BGR


def image_digest(rgb: np.ndarray) -> dict[str, np.ndarray]:
    """Random-weight images are noise and do not compress: pin their sha256 and shape, plus every
    4th pixel so a mismatch can be located."""
    return {"image_sha256": np.array(hashlib.sha256(rgb.tobytes()).hexdigest()),
            "image_shape": np.array(rgb.shape, dtype=np.int64), "image_strided": rgb[:, ::4, ::4].copy()}


def upstream_commit(clone: Path, given: str | None) -> str:
    """The commit the references come from, recorded so a later re-run can be compared."""
    if given:
        return given
    run = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    if run.returncode:
        raise SystemExit(f"{clone} is not a git clone; pass --commit SHA")
    return run.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clone", type=Path, help="FoundationVision/Infinity source tree")
    parser.add_argument("--commit", help="upstream commit, when the tree is not a git clone")
    args = parser.parse_args()
    clone = args.clone.resolve()
    commit = upstream_commit(clone, args.commit)
    torch.set_num_threads(THREADS)
    install_stubs()
    sys.path.insert(0, str(clone))
    from infinity.models import basic
    from infinity.models.bsq_vae import vae as vae_mod
    from infinity.models.infinity import Infinity
    from infinity.utils.dynamic_resolution import dynamic_resolution_h_w
    drop_bf16_cast(basic)

    real_autoencoder = vae_mod.AutoEncoder
    vae_mod.AutoEncoder = lambda a: real_autoencoder(argparse.Namespace(**{**vars(a), **VAE_OVERRIDES}))
    with contextlib.redirect_stdout(io.StringIO()):            # upstream's constructors are chatty
        vae = vae_mod.vae_model(None, **VAE_KWARGS)
        model = Infinity(vae_local=vae, **INFINITY_KWARGS).eval().requires_grad_(False)
    vae_mod.AutoEncoder = real_autoencoder
    assert all(b.fused_norm_func is not None for b in model.unregistered_blocks), "unfused norm drops rope offsets"
    load_seeded(model, SEEDS["transformer"])
    load_seeded(vae, SEEDS["vae"])

    arrays: dict[str, np.ndarray] = {}
    aspects: dict[str, Any] = {}
    for prefix, ratio in ASPECTS.items():
        schedule = [(1, h, w) for _, h, w in dynamic_resolution_h_w[ratio][PN]["scales"]]
        with contextlib.redirect_stdout(io.StringIO()):
            arrays.update({prefix + k: v for k, v in sample(model, vae, schedule).items()})
        aspects[prefix] = {"h_div_w_template": ratio, "pn": PN, "schedule": [[h, w] for _, h, w in schedule],
                           "image_hw": [int(x) for x in arrays[prefix + "image_shape"][1:3]]}
        print(f"{prefix}: {len(schedule)} scales, image {aspects[prefix]['image_hw']}")

    latent = np.random.default_rng(SEEDS["vae_latent"]).standard_normal(VAE_LATENT_SHAPE, dtype=np.float32)
    with torch.no_grad():   # channels-last, as the (B, 1, h, w, d) bits leave the sampled latent
        decoded = vae.decode(torch.from_numpy(latent).to(memory_format=torch.channels_last))
    arrays["vae_latent"], arrays["vae_decoded"] = latent, decoded.numpy().astype(np.float32)

    dest = ROOT / "tests" / "data"
    np.savez_compressed(dest / "infinity_tiny_reference.npz", **arrays)
    meta = {
        "upstream": "FoundationVision/Infinity", "upstream_commit": commit, "torch": torch.__version__,
        "numpy": np.__version__, "threads": THREADS, "seeds": SEEDS,
        "infinity_kwargs": INFINITY_KWARGS, "vae_model_kwargs": VAE_KWARGS, "vae_args_overrides": VAE_OVERRIDES,
        "text": {"lens": TEXT_LENS, "width": TEXT_WIDTH,
                 "values": "default_rng(seeds.text).standard_normal((2, 9, 256), float32), rows >= len zeroed"},
        "sampling_kwargs": SAMPLING_KWARGS, "aspects": aspects,
        "arrays": {
            "schedule": "(S, 2) int64 (h, w) per scale",
            "bits": "np.packbits of (B, L, d) uint8 flattened, shape in bits_shape; L runs over scales, "
                    "then rows, then columns; bits[b, l, j] is bit j (index passed to indices_to_codes)",
            "logits": "(2B, L, 2d) float32 get_logits output before tau/CFG; rows: cond b0..b(B-1), then "
                      "uncond; last axis (d, 2): logits of bit j = 0 at 2j and = 1 at 2j+1",
            "image_sha256": "sha256 of the (B, H, W, 3) uint8 RGB images (shape in image_shape): upstream's "
                            "((vae.decode(latent) + 1) / 2).permute(0, 2, 3, 1).mul_(255).to(uint8) (truncating), "
                            "with its BGR flip undone; image_strided holds [:, ::4, ::4] of them",
            "vae_latent": "(1, d, h, w) float32 default_rng(seeds.vae_latent) normal",
            "vae_decoded": "vae.decode(torch.from_numpy(vae_latent).to(memory_format=torch.channels_last)), "
                           "(1, 3, H, W) float32, clamped to [-1, 1]"},
        "transformer_layout": layout(model), "vae_layout": layout(vae),
    }
    (dest / "infinity_tiny.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {dest}/infinity_tiny_reference.npz and infinity_tiny.json")


if __name__ == "__main__":
    main()
