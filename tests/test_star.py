"""STAR against upstream's own code: layouts of the published models, and bit-exact sampling of
both published paths on a tiny random model (references from scripts/record_star_reference.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fastervar.errors import FastervarError
from fastervar.models.sampler import generate, generate_batch
from fastervar.models.sampling import SamplingSettings
from fastervar.models.star.checkpoint import load_star, random_star
from fastervar.models.star.configs import STAR_MODELS
from fastervar.models.star.text import StarText
from fastervar.models.star.transformer import Star
from fastervar.utils.noise import image_keys

DATA = Path(__file__).parent / "data"
META = json.loads((DATA / "star_reference.json").read_text())


@pytest.fixture(scope="module")
def refs():
    with np.load(DATA / "star_tiny_reference.npz") as data:
        return {k: data[k] for k in data.files}


def text_of(refs) -> StarText:
    return StarText(**{k: torch.from_numpy(refs[f"text/{k}"]) for k in
                       ("embeddings", "pooled", "mask", "null_embeddings", "null_pooled", "null_mask")})


@pytest.mark.parametrize("name", [n for n in STAR_MODELS if "tiny" not in n])
def test_published_layouts_match_upstream(name):
    want = META["layouts"][name]
    pair = STAR_MODELS[name]
    with torch.device("meta"):
        star = Star(pair.star, pair.vae.z_channels, pair.vae.vocab_size)
    got = {k: list(v.shape) for k, v in star.state_dict().items()}
    assert got == want["transformer"]
    assert sum(p.numel() for p in star.parameters()) == want["transformer_parameters"]
    assert [len(pair.star.patch_nums), pair.vae.vocab_size] == want["vae_ema_vocab_hit_SV"]


def run_official(model, text: StarText, case: dict, seed: int):
    """Upstream's calls: `prompts_per_call` prompts per call, each seeded with `seed`."""
    settings = SamplingSettings(cfg=case["cfg"], top_k=case["top_k"], top_p=case["top_p"], sampler="official")
    subs: dict[str, list[np.ndarray]] = {}

    def trace(step, sub, idx, mask):
        subs.setdefault(f"sub_{step}_{sub}", []).append(idx.numpy())
        subs.setdefault(f"mask_{step}_{sub}", []).append(mask.numpy().astype(np.uint8))

    model.trace = trace
    images, tokens = [], []
    per = case["prompts_per_call"]
    for lo in range(0, len(text), per):
        rows = list(range(lo, min(lo + per, len(text))))
        gen = torch.Generator().manual_seed(seed)
        out = generate_batch(model, text.rows(rows), settings, image_keys(seed, rows), gen)
        images.append(out.images.numpy())
        tokens.append(out.tokens)
    model.trace = None
    return np.concatenate(images), tokens, {k: np.concatenate(v) for k, v in subs.items()}


@pytest.mark.parametrize("case_name", ["sampler_b2", "plain_b1"])
def test_official_sampler_reproduces_upstream(refs, case_name, one_thread):
    """Identical tokens at every scale and sub-step, identical masks, identical uint8 images."""
    case = META["cases"][case_name]
    model = random_star(case["model"])
    for seed in case["seeds"]:
        images, tokens, subs = run_official(model, text_of(refs), case, seed)
        prefix = f"{case_name}/{seed}/"
        stable_from = model.stable_from()
        for si in range(stable_from):
            want = refs[prefix + f"tokens_{si}"]
            got = np.concatenate([t[si].numpy() for t in tokens])
            assert np.array_equal(got, want), f"seed {seed}: scale {si} tokens differ"
        expected_subs = sorted(k[len(prefix):] for k in refs
                               if k.startswith(prefix) and k[len(prefix):].startswith(("sub_", "mask_")))
        assert sorted(subs) == expected_subs
        for key in expected_subs:
            assert np.array_equal(subs[key], refs[prefix + key]), f"seed {seed}: {key} differs"
        assert np.array_equal(images, refs[prefix + "images"]), \
            f"seed {seed}: images differ by up to {np.abs(images.astype(int) - refs[prefix + 'images']).max()}"


def test_the_sampler_model_takes_the_stable_path_and_the_plain_one_does_not(refs):
    """The path is read off the weights: only the model with the sampler head runs sub-steps."""
    assert any(k.startswith("sampler_b2/42/sub_9_") for k in refs)
    assert not any("/sub_" in k for k in refs if k.startswith("plain_b1/"))
    assert random_star("star-tiny").stable_from() == 9
    assert random_star("star-tiny-plain").stable_from() == 14


def test_row0_cross_attention_quirk_is_upstreams(refs):
    """Official: batch row 0's cross-attention reaches every row, so another prompt's token
    embeddings change nothing; portable gives each image its own prompt (upstream at batch 1)."""
    model = random_star("star-tiny-plain")
    text = text_of(refs)
    other = StarText(text.embeddings.clone(), text.pooled, text.mask, text.null_embeddings, text.null_pooled,
                     text.null_mask)
    other.embeddings[1] += 1.0
    for sampler, same in (("official", True), ("portable", False)):
        settings = SamplingSettings(cfg=4.5, top_k=40, top_p=0.8, sampler=sampler)
        a = generate(model, text, settings, seed=1, batch_size=2)
        b = generate(model, other, settings, seed=1, batch_size=2)
        assert torch.equal(a.images[0], b.images[0])
        assert torch.equal(a.images[1], b.images[1]) is same, sampler


def test_portable_sampler_is_batch_invariant(refs):
    """An image's tokens depend only on its own (seed, index) key and prompt, not on its batch."""
    model = random_star("star-tiny")
    text = text_of(refs)
    settings = SamplingSettings(cfg=4.0, top_k=40, top_p=0.8, sampler="portable")
    both = generate_batch(model, text, settings, image_keys(7, [0, 1]))
    alone = generate_batch(model, text.rows([1]), settings, image_keys(7, [1]))
    for k, (a, b) in enumerate(zip(both.tokens, alone.tokens)):
        assert torch.equal(a[1:], b), f"scale {k}"


def test_strict_loading_names_the_changed_key(tmp_path):
    model = random_star("star-tiny")
    sd = {k: v.clone() for k, v in model.star.state_dict().items()}
    torch.save({"trainer": {"var_wo_ddp": sd}}, tmp_path / "star.pth")
    torch.save(model.vae.state_dict(), tmp_path / "vae.pth")
    loaded = load_star(tmp_path / "star.pth", tmp_path / "vae.pth", "star-tiny")
    assert all(torch.equal(a, b) for a, b in zip(loaded.star.state_dict().values(), sd.values()))
    sd["blocks.1.cross_attn.mat_q.weight"] = sd["blocks.1.cross_attn.mat_q.weight"][:, :-1]
    torch.save({"trainer": {"var_wo_ddp": sd}}, tmp_path / "star.pth")
    with pytest.raises(FastervarError, match=r"blocks\.1\.cross_attn\.mat_q\.weight.*\(64, 63\).*\(64, 64\)"):
        load_star(tmp_path / "star.pth", tmp_path / "vae.pth", "star-tiny")


@pytest.mark.parametrize("name,expected", [("star-256-d16", "star-256-d16"), ("star-256-d30", "star-256-d30"),
                                           ("star-1024", "star-1024"), ("star-1024-sampler", "star-1024-sampler"),
                                           ("star-512", "star-256-d30")])
def test_the_architecture_and_path_are_read_off_the_files(name, expected):
    """Upstream's key layout alone names the model (a 10-scale file is taken as 256 px: the 512 px
    file needs --model star-512), and the sampler head decides the path."""
    from fastervar.models.star.checkpoint import infer_star_config
    from fastervar.models.star.configs import pair_for
    from fastervar.models.var.configs import OFFICIAL_VAE
    sd = {k: torch.empty(shape, device="meta") for k, shape in META["layouts"][name]["transformer"].items()}
    pair = pair_for(infer_star_config(sd, Path(f"{name}.pth")), OFFICIAL_VAE)
    assert pair.name == expected
    assert pair.star.sampler_head == name.endswith("sampler")
