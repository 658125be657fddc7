"""What judging with CLIP costs: images per second and peak memory to CLIP-score N images.

A ViT-B/32-shaped CLIP (OpenAI's clip-vit-base-patch32 architecture: 12-layer 768-wide vision
tower on 32-px patches of 224-px crops, 12-layer 512-wide text tower, 512-d projections) with
seeded random weights is written as a Hugging Face folder (config.json, model.safetensors,
preprocessor_config.json, a byte-level BPE vocabulary), then loaded and used exactly as
`fastervar clip-score` and `evaluate/calibrate/bench --clip` use it: `load_clip`, then
`ClipFeatures` (batched, cached per image) and `clip_scores` over N random 256x256 images and
their prompts. Random weights: speed and memory only.

    python benchmarks/clip_speed.py --images 1000 --json benchmarks/results/clip_speed_cpu.json
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import write_result

from fastervar.evaluate.clip_metrics import ClipFeatures, clip_scores
from fastervar.models.clip.config import read_config
from fastervar.models.clip.loading import load_clip
from fastervar.models.clip.towers import CLIP

VIT_B32 = {"model_type": "clip", "architectures": ["CLIPModel"], "projection_dim": 512,
           "text_config": {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
                           "num_attention_heads": 8, "vocab_size": 49408, "hidden_act": "quick_gelu"},
           "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                             "num_attention_heads": 12, "patch_size": 32, "image_size": 224,
                             "hidden_act": "quick_gelu"}}


def write_folder(folder: Path) -> None:
    from safetensors.torch import save_file
    from tokenizers.pre_tokenizers import ByteLevel
    (folder / "config.json").write_text(json.dumps(VIT_B32))
    torch.manual_seed(0)
    model = CLIP(read_config(folder))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    chars = sorted(ByteLevel.alphabet())
    vocab = {**{c: i for i, c in enumerate(chars)}, **{c + "</w>": 256 + i for i, c in enumerate(chars)}}
    vocab.update({"<|startoftext|>": 512, "<|endoftext|>": 513})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}, "resample": 3,
        "rescale_factor": 1 / 255, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711]}))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--size", type=int, default=256, help="side of the generated images before CLIP's resize")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(args.images)]
    prompts = [f"a photo of a thing number {i % 50}" for i in range(args.images)]
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        write_folder(folder)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        judge = load_clip(folder)
        loaded = time.perf_counter() - t0
        feats = ClipFeatures(judge, args.batch_size)
        t0 = time.perf_counter()
        scores = clip_scores(feats, images, prompts)
        seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        clip_scores(feats, images, prompts)                 # the same images again: from the per-image cache
        cached = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    params = sum(p.numel() for p in judge.model.parameters())
    print(f"ViT-B/32-shaped CLIP ({params / 1e6:.0f}M parameters, random weights), {args.images} images of "
          f"{args.size}px, batch {args.batch_size}, torch threads {torch.get_num_threads()}")
    print(f"loaded in {loaded:.2f} s; scored in {seconds:.1f} s: {args.images / seconds:.1f} images/s "
          f"(again, cached: {cached:.2f} s); peak RSS {peak / 2**30:.2f} GiB (the images alone "
          f"{sum(im.nbytes for im in images) / 2**30:.2f} GiB; {rss0 * 1024 / 2**30:.2f} GiB before loading)")
    result = {"model": "ViT-B/32-shaped CLIP, seeded random weights", "parameters": params, "images": args.images,
              "image_size": args.size, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
              "load_seconds": loaded, "seconds": seconds, "images_per_second": args.images / seconds,
              "cached_seconds": cached, "peak_rss_bytes": peak, "rss_before_load_bytes": rss0 * 1024,
              "mean_clip_score": float(scores.mean()),
              "command": "python benchmarks/clip_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    write_result(args.json, result)
    return result


if __name__ == "__main__":
    main()
