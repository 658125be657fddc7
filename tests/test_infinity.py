"""Infinity: the released layouts, strict loading, and bit-exact parity with upstream.

The references in tests/data were recorded from upstream's own code by
scripts/record_infinity_reference.py (tiny configuration, weights from `seeded_parameters`, one
intra-op thread); these tests read only tests/data.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import save_file

from fastervar.cli import main
from fastervar.errors import FastervarError
from fastervar.models.infinity.checkpoint import (
    INFINITY_CONFIGS,
    infer_infinity_config,
    load_infinity_model,
    load_infinity_transformer,
    random_infinity,
)
from fastervar.models.infinity.family import DEFAULT_SETTINGS, sample_bits
from fastervar.models.infinity.transformer import Infinity
from fastervar.models.sampler import batch_generator, generate_batch
from fastervar.models.sampling import SamplingSettings
from fastervar.models.text.prompts import TextBatch, read_text_embeddings
from fastervar.utils.noise import image_keys

DATA = Path(__file__).parent / "data"
LAYOUT = json.loads((DATA / "infinity_layout.json").read_text())
TINY_META = json.loads((DATA / "infinity_tiny.json").read_text())
REF = np.load(DATA / "infinity_tiny_reference.npz")
ASPECTS = {prefix: meta["h_div_w_template"] for prefix, meta in TINY_META["aspects"].items()}


@pytest.fixture
def one_thread():
    """Upstream's decoder output depends on the intra-op thread count; compare at the recorded one."""
    before = torch.get_num_threads()
    torch.set_num_threads(TINY_META["threads"])
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    return random_infinity("infinity-tiny", seed=0, pn="0.06M")


def reference_text() -> TextBatch:
    lens = TINY_META["text"]["lens"]
    emb = np.random.default_rng(TINY_META["seeds"]["text"]).standard_normal(
        (len(lens), max(lens), TINY_META["text"]["width"]), dtype=np.float32)
    for i, n in enumerate(lens):
        emb[i, n:] = 0
    return TextBatch(torch.from_numpy(emb), torch.tensor(lens))


def official() -> SamplingSettings:
    kw = TINY_META["sampling_kwargs"]
    return SamplingSettings(cfg=kw["cfg_list"][0], tau=kw["tau_list"][0], top_k=kw["top_k"], top_p=kw["top_p"],
                            sampler="official")


def run(model, text: TextBatch, settings: SamplingSettings, seed: int = 0, indices=None, on_step=None):
    indices = list(range(len(text))) if indices is None else indices
    with torch.no_grad():
        return generate_batch(model, text, settings, image_keys(seed, indices),
                              batch_generator(settings, model.device, seed), on_step=on_step)


# -- layout ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, rec", [("infinity-2b", "infinity_2b"), ("infinity-8b", "infinity_8b")])
def test_layout_equals_upstream(name, rec):
    with torch.device("meta"):
        model = Infinity(INFINITY_CONFIGS[name][0])
    ours = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert sorted(ours) == sorted([k, s] for k, s, _ in LAYOUT[rec])
    assert sum(p.numel() for p in model.parameters()) == LAYOUT[f"params_{rec}"]
    assert infer_infinity_config(model.state_dict(), name) == INFINITY_CONFIGS[name][0]


def test_tiny_layout_equals_the_recorded_upstream_one(tiny):
    for part, key in ((tiny.infinity, "transformer_layout"), (tiny.vae, "vae_layout")):
        assert [[k, list(v.shape)] for k, v in part.state_dict().items()] == \
            [[k, s] for k, s, _ in TINY_META[key]]


# -- parity with upstream ----------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", sorted(ASPECTS))
def test_official_sampler_reproduces_upstream(tiny, one_thread, prefix):
    tiny.use_schedule(ASPECTS[prefix], "0.06M")
    assert [list(s) for s in tiny.schedule] == REF[prefix + "schedule"].tolist()
    logits = []
    g = run(tiny, reference_text(), official(), on_step=lambda k, state, out: logits.append(out.logits))
    shape = tuple(REF[prefix + "bits_shape"])
    want_bits = np.unpackbits(REF[prefix + "bits"])[:np.prod(shape)].reshape(shape)
    got_bits = torch.cat(g.tokens, dim=1).numpy().reshape(shape)
    assert (got_bits == want_bits).all(), f"{(got_bits != want_bits).sum()} of {got_bits.size} bits differ"
    np.testing.assert_allclose(torch.cat(logits, dim=1).numpy(), REF[prefix + "logits"], atol=1e-4, rtol=0)
    images = g.images.numpy()
    assert list(images.shape) == REF[prefix + "image_shape"].tolist()
    assert (images[:, ::4, ::4] == REF[prefix + "image_strided"]).all()
    assert hashlib.sha256(images.tobytes()).hexdigest() == str(REF[prefix + "image_sha256"])


def test_vae_decoder_equals_upstream(tiny, one_thread):
    with torch.no_grad():
        out = tiny.vae.decode(torch.from_numpy(REF["vae_latent"]))
    np.testing.assert_array_equal(out.numpy(), REF["vae_decoded"])



def test_portable_bits_are_u_below_p1_after_top_p():
    # logit pairs (bit 0, bit 1): p(1) = 0.5, 0.73, and 0.018 (<= 1 - top_p: forced to 0)
    pairs = torch.tensor([[[0.0, 0.0], [0.0, 1.0], [2.0, -2.0]]])
    s = replace(DEFAULT_SETTINGS, top_p=0.97)
    assert sample_bits(pairs, torch.tensor([[0.49, 0.72, 0.001]]), s).tolist() == [[1, 1, 0]]
    assert sample_bits(pairs, torch.tensor([[0.51, 0.74, 0.0]]), s).tolist() == [[0, 0, 0]]
    assert sample_bits(pairs, torch.tensor([[0.0, 0.0, 0.01]]), replace(DEFAULT_SETTINGS, top_p=0.0)).tolist() == [[1, 1, 1]]


def test_portable_images_do_not_depend_on_their_batch(tiny):
    tiny.use_schedule(1.0, "0.06M")
    text = reference_text()
    both = run(tiny, text, DEFAULT_SETTINGS)
    alone = run(tiny, text.rows([1]), DEFAULT_SETTINGS, indices=[1])
    for k in range(tiny.num_steps):
        assert torch.equal(both.tokens[k][1], alone.tokens[k][0])


def test_prompts_of_different_lengths_condition_as_one_at_a_time(tiny):
    text = reference_text()
    with torch.no_grad():
        both = tiny.condition(text, guided=True)
        first = tiny.condition(text.rows([0]), guided=True)
    for got, want in ((both.pooled[[0, 2]], first.pooled), (both.gss[[0, 2]], first.gss)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


# -- loading and bad input -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def infinity_files(tiny, tmp_path_factory):
    d = tmp_path_factory.mktemp("infinity")
    torch.save(tiny.infinity.state_dict(), d / "infinity.pth")
    torch.save({"vae": tiny.vae.state_dict()}, d / "vae.pth")
    return d


def test_released_layout_files_load_and_infer_the_architecture(tiny, infinity_files):
    model = load_infinity_model(infinity_files / "infinity.pth", infinity_files / "vae.pth", pn="0.06M")
    assert model.infinity.cfg == INFINITY_CONFIGS["infinity-tiny"][0]
    assert model.vae.cfg == INFINITY_CONFIGS["infinity-tiny"][1]
    for a, b in zip(model.state_dict().values(), tiny.state_dict().values()):
        assert torch.equal(a, b)
    # the weights are the files' mapped pages, not a second copy (Infinity-2B is 8.8 GB in fp32)
    from .test_checkpoint import _file_spans
    for part, name in ((model.infinity, "infinity.pth"), (model.vae, "vae.pth")) if os.path.exists("/proc/self/maps") else ():
        spans = _file_spans(infinity_files / name)
        assert all(any(lo <= t.data_ptr() < hi for lo, hi in spans) for t in part.parameters()), name


def test_flash_shaped_temperatures_load(tiny, tmp_path):
    sd = {k: (v.reshape(1, 1, -1, 1) if k.endswith("scale_mul_1H11") else v)
          for k, v in tiny.infinity.state_dict().items()}
    torch.save(sd, tmp_path / "flash.pth")
    loaded = load_infinity_transformer(tmp_path / "flash.pth")
    assert torch.equal(loaded.blocks[0].sa.scale_mul_1H11, tiny.infinity.blocks[0].sa.scale_mul_1H11)


def test_sharded_folder_loads(tiny, tmp_path):
    sd = tiny.infinity.state_dict()
    keys = list(sd)
    shards = {"model-1.safetensors": keys[: len(keys) // 2], "model-2.safetensors": keys[len(keys) // 2:]}
    for name, part in shards.items():
        save_file({k: sd[k].contiguous() for k in part}, str(tmp_path / name))
    index = {"weight_map": {k: name for name, part in shards.items() for k in part}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert torch.equal(load_infinity_transformer(tmp_path).head.weight, tiny.infinity.head.weight)


def test_one_renamed_key_is_named(tiny, tmp_path):
    sd = dict(tiny.infinity.state_dict())
    sd["block_chunks.1.module.0.ca.proj.weightt"] = sd.pop("block_chunks.1.module.0.ca.proj.weight")
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(FastervarError, match=r"missing key 'block_chunks\.1\.module\.0\.ca\.proj\.weight'"):
        load_infinity_transformer(tmp_path / "bad.pth")


def test_wrong_families_and_truncated_files_are_refused(infinity_files, tmp_path, tiny_files):
    var_pth, _ = tiny_files
    with pytest.raises(FastervarError, match="not an Infinity transformer.*class-conditional VAR"):
        load_infinity_transformer(var_pth)
    with pytest.raises(FastervarError, match="not an Infinity transformer.*VAE"):
        load_infinity_transformer(infinity_files / "vae.pth")
    with pytest.raises(FastervarError, match="Infinity transformer, given as the VAE"):
        load_infinity_model(infinity_files / "infinity.pth", infinity_files / "infinity.pth")
    data = (infinity_files / "infinity.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(FastervarError, match="corrupt or truncated"):
        load_infinity_transformer(tmp_path / "cut.pth")


def test_text_embeddings_files_are_checked(tiny, tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, embeddings=np.zeros((2, 4, 256), np.float32), lengths=np.array([4, 2]))
    assert len(read_text_embeddings(good)) == 2
    np.savez(tmp_path / "wide.npz", embeddings=np.zeros((1, 4, 64), np.float32), lengths=np.array([4]))
    with pytest.raises(FastervarError, match="64 wide; this model takes 256"):
        tiny.condition(read_text_embeddings(tmp_path / "wide.npz"))
    np.savez(tmp_path / "nolen.npz", embeddings=np.zeros((1, 4, 256), np.float32))
    with pytest.raises(FastervarError, match="'lengths'"):
        read_text_embeddings(tmp_path / "nolen.npz")
    np.savez(tmp_path / "long.npz", embeddings=np.zeros((1, 4, 256), np.float32), lengths=np.array([5]))
    with pytest.raises(FastervarError, match="1..4"):
        read_text_embeddings(tmp_path / "long.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(FastervarError, match="not a readable .npz"):
        read_text_embeddings(tmp_path / "junk.npz")


@pytest.mark.parametrize("aspect, pn, message", [("1:1", "2M", "--pn '2M' is unknown"), ("1x1", "1M", "height:width")])
def test_unknown_aspect_or_pn_is_one_line(aspect, pn, message):
    from fastervar.models.infinity.schedules import parse_aspect, schedule
    with pytest.raises(FastervarError, match=message):
        schedule(parse_aspect(aspect), pn)


# -- the CLI, as a user with the released files runs it ----------------------------------------------
def cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("prefix", sorted(ASPECTS))
def test_generate_with_upstream_files_and_embeddings_reproduces_upstream(infinity_files, one_thread, tmp_path, prefix):
    text = reference_text()
    np.savez(tmp_path / "emb.npz", embeddings=text.embeddings.numpy(), lengths=text.lengths.numpy())
    aspect = "1:1" if ASPECTS[prefix] == 1.0 else "1:2"
    result = cli("generate", "--checkpoint", infinity_files / "infinity.pth", "--vae-checkpoint",
                 infinity_files / "vae.pth", "--text-embeddings", tmp_path / "emb.npz", "--aspect", aspect,
                 "--pn", "0.06M", "--sampler", "official", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    images = np.stack([np.array(Image.open(tmp_path / "out" / f"{i:04d}.png")) for i in range(len(text))])
    assert hashlib.sha256(images.tobytes()).hexdigest() == str(REF[prefix + "image_sha256"])


def test_generate_refuses_mixed_families_in_one_line(infinity_files, tiny_files, tmp_path):
    np.savez(tmp_path / "emb.npz", embeddings=np.zeros((1, 3, 256), np.float32), lengths=np.array([3]))
    var_pth, vae_pth = tiny_files
    cases = [
        (["--checkpoint", infinity_files / "infinity.pth", "--vae-checkpoint", infinity_files / "vae.pth",
          "--class", "1"], "are for class-conditional VAR models"),
        (["--model", "tiny", "--random-weights", "--prompt", "a cat"], "--prompt is for text-to-image models"),
        (["--checkpoint", var_pth, "--vae-checkpoint", vae_pth, "--text-embeddings", tmp_path / "emb.npz"],
         "not an Infinity transformer checkpoint (it looks like a class-conditional VAR)"),
        (["--model", "infinity-tiny", "--random-weights", "--prompt", "a cat"], "needs --text-encoder DIR"),
        (["--model", "infinity-tiny", "--random-weights", "--text-embeddings", tmp_path / "emb.npz", "--aspect", "wide"],
         "give height:width"),
    ]
    for args, message in cases:
        result = cli("generate", *args, "--out", tmp_path / "never")
        assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output, result.output
        assert not (tmp_path / "never").exists()


def test_prompt_strings_through_a_t5_folder_give_the_embeddings_images(tmp_path):
    pytest.importorskip("transformers", reason="transformers builds the tiny T5 folder")
    from fastervar.models.text.t5 import TextEncoder
    from tests.test_t5 import tiny_t5_folder
    tiny_t5_folder(tmp_path / "t5")
    prompts = ["a red cat on the grass", "the dog"]
    common = ["--model", "infinity-tiny", "--random-weights", "--pn", "0.06M"]
    r = cli("generate", *common, "--text-encoder", tmp_path / "t5", "--prompt", prompts[0], "--prompt", prompts[1],
            "--out", tmp_path / "a")
    assert r.exit_code == 0, r.output
    emb, lengths = TextEncoder.from_folder(tmp_path / "t5").encode(prompts)
    assert lengths.tolist() == [7, 3]                                   # words and </s>, at true length
    np.savez(tmp_path / "emb.npz", embeddings=emb, lengths=lengths)
    r = cli("generate", *common, "--text-embeddings", tmp_path / "emb.npz", "--out", tmp_path / "b")
    assert r.exit_code == 0, r.output
    for i in range(2):
        assert np.array_equal(np.array(Image.open(tmp_path / "a" / f"{i:04d}.png")),
                              np.array(Image.open(tmp_path / "b" / f"{i:04d}.png")))
