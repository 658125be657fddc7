"""Pin upstream STAR's outputs on a tiny random configuration, and the layouts of its published
models, into tests/data, so our clean-room STAR is checked against upstream without a clone or weights.

    pip install pyyaml huggingface_hub
    python scripts/record_star_reference.py /path/to/STAR-T2I [--commit SHA]

The argument is a clone (or an exported tree, then pass --commit) of Davinci-XLab/STAR-T2I. Harness
patches, none of which edits the clone:
- `timm` is stubbed (only `embed_rope.py` imports it, for names it never uses at inference);
- upstream's sampling helper and `torch.topk`, as seen from `models/var_drop.py`, are wrapped to
  record each draw's tokens and each sub-step's picked positions (they return what they returned);
- the layouts skip `init_weights` (values are not layout, and untouched pages cost no memory);
- the models are built with the demo's / `sample.py`'s constructor arguments at tiny sizes, and
  loaded with our seeded weights (`random_star`), so the same weights exist on both sides.
Each generation follows the demo: `torch.manual_seed(seed)` right before
`autoregressive_infer_cfg(..., g_seed=seed, w_mask=True, sample_version='1024')`, on CPU, fp32, one thread.
The uint8 images are converted as the demo and `sample.py` convert them (x255, truncated).
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before torch loads: references depend on thread count

import argparse
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fastervar.models.star.checkpoint import random_star
from fastervar.models.star.configs import STAR_MODELS

CASES = {
    # name: (model, prompts per call, seeds, cfg, top_k, top_p)
    "sampler_b2": ("star-tiny", 2, (42, 3), 4.0, 40, 0.8),
    "plain_b1": ("star-tiny-plain", 1, (1, 5), 4.5, 40, 0.8),
}
PROMPT_LENGTHS = (9, 4)  # two prompts of different lengths (tokens kept by the mask)
NULL_LENGTH = 2  # "" is <bos><eos>


def stub_timm() -> None:
    names = {
        "timm": {},
        "timm.models": {},
        "timm.models.vision_transformer": {"Mlp": None, "PatchEmbed": None, "_cfg": None},
        "timm.models.layers": {"DropPath": None, "to_2tuple": None, "trunc_normal_": None},
        "timm.models.registry": {"register_model": lambda f: f},
    }
    for name, attrs in names.items():
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod


def upstream(clone: Path):
    stub_timm()
    sys.path.insert(0, str(clone))
    from models import var_drop, vqvae

    return var_drop, vqvae


def text_inputs(channels: int, seed: int = 2024) -> dict[str, np.ndarray]:
    """Random stand-ins for CLIP's outputs: two prompts of different lengths and the empty prompt."""
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, lengths in (("", PROMPT_LENGTHS), ("null_", (NULL_LENGTH,))):
        n = len(lengths)
        out[prefix + "embeddings"] = rng.standard_normal((n, 77, channels), dtype=np.float32)
        out[prefix + "pooled"] = rng.standard_normal((n, channels), dtype=np.float32)
        mask = np.zeros((n, 77), dtype=np.int64)
        for i, k in enumerate(lengths):
            mask[i, :k] = 1
        out[prefix + "mask"] = mask
    return out


def build(var_drop, vqvae, name: str):
    ours = random_star(name)
    cfg, vae_cfg = ours.cfg, ours.pair.vae
    vae = vqvae.VQVAE(
        vocab_size=vae_cfg.vocab_size,
        z_channels=vae_cfg.z_channels,
        ch=vae_cfg.ch,
        test_mode=True,
        share_quant_resi=4,
        v_patch_nums=cfg.patch_nums,
    )
    var = var_drop.VAR(
        vae_local=vae,
        depth=cfg.depth,
        embed_dim=cfg.width,
        num_heads=cfg.heads,
        norm_eps=1e-6,
        shared_aln=False,
        attn_l2_norm=True,
        enable_cross=True,
        in_dim_cross=cfg.text_channels,
        patch_nums=cfg.patch_nums,
        flash_if_available=False,
        fused_if_available=True,
        rotary_pos_emb=True,
        absolute_lvl_emb=True,
        rope_theta=10000,
        rope_norm=64.0,
        enable_logit_norm=cfg.logit_norm,
        enable_adaptive_norm=cfg.sampler_head,
        train_mode="none",
        sample_from_idx=cfg.sampler_from,
    )
    var.load_state_dict(ours.star.state_dict(), strict=True)
    vae.load_state_dict(ours.vae.state_dict(), strict=True)
    return var.eval(), vae.eval(), ours


def record_case(
    var_drop, var, ours, per_call: int, seed: int, cfg: float, top_k: int, top_p: float, text: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    events: list[tuple[str, torch.Tensor]] = []
    sample, topk = var_drop.sample_with_top_k_top_p_, torch.topk

    def sample_hook(*args, **kwargs):
        out = sample(*args, **kwargs)
        events.append(("sample", (out[0] if isinstance(out, tuple) else out).clone()))
        return out

    def topk_hook(*args, **kwargs):
        out = topk(*args, **kwargs)
        events.append(("topk", out[1].clone()))
        return out

    images = []
    n = len(text["embeddings"])
    for lo in range(0, n, per_call):
        rows = list(range(lo, min(lo + per_call, n)))
        b = len(rows)
        emb = torch.from_numpy(np.concatenate([text["embeddings"][rows]] + [text["null_embeddings"]] * b))
        pooled = torch.from_numpy(np.concatenate([text["pooled"][rows]] + [text["null_pooled"]] * b))
        mask = torch.from_numpy(np.concatenate([text["mask"][rows]] + [text["null_mask"]] * b))
        var_drop.sample_with_top_k_top_p_, var_drop.torch.topk = sample_hook, topk_hook
        try:
            with torch.no_grad():
                torch.manual_seed(seed)
                img = var.autoregressive_infer_cfg(
                    B=b,
                    label_B=None,
                    encoder_hidden_states=emb,
                    encoder_attention_mask=mask,
                    encoder_pool_feat=pooled,
                    cfg=cfg,
                    top_k=top_k,
                    top_p=top_p,
                    g_seed=seed,
                    more_smooth=False,
                    w_mask=True,
                    sample_version="1024",
                )
        finally:
            var_drop.sample_with_top_k_top_p_, var_drop.torch.topk = sample, topk
        images.append((img.permute(0, 2, 3, 1).numpy() * 255.0).astype(np.uint8))
    return {"images": np.concatenate(images), **split_events(events, ours, per_call, n)}


def split_events(events, ours, per_call: int, n: int) -> dict[str, np.ndarray]:
    """Per call: each plain scale's tokens; each stable sub-step's tokens and mask afterwards."""
    from fastervar.models.star.stable import substeps

    out: dict[str, list[np.ndarray]] = {}
    it = iter(events)
    pending = None
    for _ in range(0, n, per_call):
        for si, pn in enumerate(ours.patch_nums):
            if si < ours.stable_from():
                kind, idx = pending or next(it)
                pending = None
                assert kind == "sample"
                out.setdefault(f"tokens_{si}", []).append(idx.numpy())
                continue
            mask = np.zeros((idx.shape[0], pn * pn), dtype=np.uint8)
            for sub in range(substeps(si)):
                kind, idx = pending or next(it)
                pending = None
                assert kind == "sample"
                for kind, picked in it:
                    if kind != "topk":
                        pending = (kind, picked)
                        break
                    np.put_along_axis(mask, picked.numpy(), 1, axis=1)
                out.setdefault(f"sub_{si}_{sub}", []).append(idx.numpy())
                out.setdefault(f"mask_{si}_{sub}", []).append(mask.copy())
    return {k: np.concatenate(v) for k, v in out.items()}


def layouts(var_drop) -> dict:
    """Keys and shapes of the published transformers as upstream's builder makes them (sample.py's
    arguments; the demo's for the sampler model), with parameter counts."""
    from models import build_vae_var

    init = var_drop.VAR.init_weights
    var_drop.VAR.init_weights = lambda self, **kwargs: None  # values are not layout: leave the pages untouched
    out = {}
    for name, pair in STAR_MODELS.items():
        if "tiny" in name:
            continue
        cfg = pair.star
        vae, var = build_vae_var(
            V=4096,
            Cvae=32,
            ch=160,
            share_quant_resi=4,
            device="cpu",
            patch_nums=cfg.patch_nums,
            depth=cfg.depth,
            shared_aln=False,
            attn_l2_norm=True,
            enable_cross=True,
            in_dim_cross=1024,
            flash_if_available=False,
            fused_if_available=True,
            init_adaln=0.5,
            init_adaln_gamma=5e-5,
            init_head=0.02,
            init_std=-1,
            rope_emb=True,
            lvl_emb=True,
            enable_logit_norm=cfg.logit_norm,
            enable_adaptive_norm=cfg.sampler_head,
            train_mode="none",
            rope_theta=10000,
            rope_norm=64.0,
            sample_from_idx=9,
        )
        out[name] = {
            "transformer": {k: list(v.shape) for k, v in var.state_dict().items()},
            "transformer_parameters": sum(p.numel() for p in var.parameters()),
            "vae_ema_vocab_hit_SV": list(vae.quantize.ema_vocab_hit_SV.shape),
        }
    var_drop.VAR.init_weights = init
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("clone", type=Path)
    ap.add_argument("--commit", help="the upstream commit, when the tree is not a git clone")
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "data")
    args = ap.parse_args()
    torch.set_num_threads(1)
    commit = (
        args.commit
        or subprocess.run(
            ["git", "-C", str(args.clone), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    var_drop, vqvae = upstream(args.clone)
    arrays: dict[str, np.ndarray] = {}
    meta = {"upstream": "Davinci-XLab/STAR-T2I", "commit": commit, "torch": torch.__version__, "cases": {}}
    for case, (name, per_call, seeds, cfg, top_k, top_p) in CASES.items():
        var, _, ours = build(var_drop, vqvae, name)
        text = text_inputs(ours.cfg.text_channels)
        arrays.update({f"text/{k}": v for k, v in text.items()})
        for seed in seeds:
            got = record_case(var_drop, var, ours, per_call, seed, cfg, top_k, top_p, text)
            arrays.update({f"{case}/{seed}/{k}": v for k, v in got.items()})
        meta["cases"][case] = {
            "model": name,
            "prompts_per_call": per_call,
            "seeds": list(seeds),
            "cfg": cfg,
            "top_k": top_k,
            "top_p": top_p,
        }
    meta["layouts"] = layouts(var_drop)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / "star_tiny_reference.npz", **arrays)
    (args.out / "star_reference.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {args.out / 'star_tiny_reference.npz'} and {args.out / 'star_reference.json'}")


if __name__ == "__main__":
    main()
