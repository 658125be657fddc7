"""The clean-room T5 encoder against transformers' (the test oracle), tokenization from
tokenizer.json, prompts at their true lengths, and the folders it refuses."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from fastervar.errors import FastervarError
from fastervar.models.text.t5 import TextEncoder, load_encoder

transformers = pytest.importorskip("transformers", reason="transformers is the T5 test oracle (pip install -e '.[test]')")
tokenizers = pytest.importorskip("tokenizers")

WORDS = ["a", "photo", "of", "cat", "dog", "red", "blue", "on", "the", "grass", "under", "sky", "big", "small"]


def _tokenizer() -> tokenizers.Tokenizer:
    """A word-level tokenizer that, like T5's, appends </s> to every prompt."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return tok


def tiny_t5_folder(dest):
    """A tiny Flan-T5-shaped encoder folder (transformers' layout, our word-level tokenizer) whose
    width, 256, is the tiny Infinity's text width."""
    import transformers
    torch.manual_seed(0)
    cfg = transformers.T5Config(vocab_size=17, d_model=256, d_kv=16, d_ff=64, num_layers=1, num_heads=2,
                                relative_attention_num_buckets=8, feed_forward_proj="gated-gelu")
    transformers.T5EncoderModel(cfg).eval().save_pretrained(dest)
    _tokenizer().save(str(dest / "tokenizer.json"))
    return dest


@pytest.fixture(scope="module", params=["gated-gelu", "relu"])
def folder(request, tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.T5Config(vocab_size=len(WORDS) + 3, d_model=32, d_kv=8, d_ff=48, num_layers=3, num_heads=4,
                                relative_attention_num_buckets=8, relative_attention_max_distance=12,
                                feed_forward_proj=request.param)
    model = transformers.T5EncoderModel(cfg).eval()
    d = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(d)
    _tokenizer().save(str(d / "tokenizer.json"))
    return d, model


def test_encoder_matches_transformers(folder):
    d, oracle = folder
    ours = load_encoder(d)
    ids = torch.randint(0, ours.cfg.vocab_size, (3, 23), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 15:] = False
    with torch.no_grad():
        want = oracle(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        got = ours(ids, mask)
    assert (got - want)[mask].abs().max() < 1e-5


def test_prompts_encode_at_true_length_and_alone_as_in_a_batch(folder):
    enc = TextEncoder.from_folder(folder[0])
    prompts = ["a photo of a cat", "a big red dog on the grass under the blue sky", "small"]
    emb, lengths = enc.encode(prompts)
    assert lengths.tolist() == [6, 12, 2]                    # words plus </s>
    assert emb.shape == (3, 12, 32) and not emb[0, 6:].any()
    for i, p in enumerate(prompts):
        alone, n = enc.encode([p])
        assert n[0] == lengths[i] and np.abs(alone[0, :n[0]] - emb[i, :n[0]]).max() < 1e-5


def test_bad_folders_are_refused_with_one_line(folder, tmp_path):
    d = tmp_path / "t5"
    shutil.copytree(folder[0], d)
    (d / "tokenizer.json").unlink()
    with pytest.raises(FastervarError, match="no tokenizer.json"):
        TextEncoder.from_folder(d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "d_ff": cfg["d_ff"] + 1}))
    with pytest.raises(FastervarError, match=r"layer.1.DenseReluDense.w\w+.weight has shape"):
        load_encoder(d)
    (d / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(FastervarError, match="cannot read the T5 weights"):
        load_encoder(d)


def _one_line(folder) -> str:
    with pytest.raises(FastervarError) as info:
        load_encoder(folder)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_every_load_failure_is_one_line(folder, tmp_path):
    d = tmp_path / "t5"
    shutil.copytree(folder[0], d)
    weights = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").unlink()
    torch.save({"encoder.x": torch.zeros(1)}, d / "pytorch_model.bin")
    good = (d / "pytorch_model.bin").read_bytes()
    (d / "pytorch_model.bin").write_bytes(good[: len(good) // 2])                # damaged
    assert "cannot read the T5 weights" in _one_line(d)
    import pickle
    (d / "pytorch_model.bin").write_bytes(pickle.dumps({"encoder.x": print}))    # not plain weights
    assert "not a plain weights file" in _one_line(d)
    (d / "pytorch_model.bin").unlink()
    (d / "model.safetensors.index.json").write_text('{"weight_map": {"a": "../elsewhere.safetensors"}}')
    assert "shard names must be files of the folder" in _one_line(d)
    (d / "model.safetensors.index.json").write_text("[1, 2]")
    assert "not a shard index" in _one_line(d)
    (d / "model.safetensors.index.json").unlink()
    (d / "model.safetensors").write_bytes(weights)
    (d / "config.json").write_text("[]")
    assert "not a T5 config" in _one_line(d)
    (d / "config.json").write_bytes(b"\xff\xfe")
    assert "malformed JSON" in _one_line(d)


def test_a_long_prompt_keeps_its_closing_token_and_warns_once(folder):
    enc = TextEncoder.from_folder(folder[0], max_length=8)
    long = " ".join(WORDS[:12])
    with pytest.warns(UserWarning, match="cut to its first 7 and </s>") as caught:
        ids = enc.token_ids([long, long, "a cat"])
    assert len(caught) == 1
    assert ids[0] == [WORDS.index(w) + 3 for w in WORDS[:7]] + [1] and ids[1] == ids[0]
    assert ids[2] == [WORDS.index("a") + 3, WORDS.index("cat") + 3, 1]
    emb, lengths = enc.encode([long])
    assert lengths.tolist() == [8]
