"""The clean-room CLIP against transformers (the oracle), on tiny random configurations saved as
Hugging Face folders: embeddings, token ids, image preprocessing, and bad folders."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from fastervar.errors import FastervarError
from fastervar.models.clip.loading import load_clip

transformers = pytest.importorskip("transformers", reason="transformers is the CLIP oracle: pip install 'fastervar[test]'")

PROMPTS = [
    "a photo of a cat", "A PHOTO OF A DOG.", "Two dogs, three cats & a bird!", "   spaced    out\tprompt\n",
    "it's the cat's toy; they'll play", "numbers 12345 and 3.14", "émigré café naïve", "hyphen-ated words—dashes",
    "UPPER lower MiXeD", "", "?!", "a", "the the the the", "repeat " * 60, "a very long prompt " * 30,
    "<|startoftext|> inside", "emoji 🐱 cat", "tab\tand\nnewline", "quotes \"double\" 'single'", "x" * 200,
]


def _bpe_files(folder):
    """A tiny CLIP-format BPE vocabulary: the 256 byte symbols, each with the end-of-word mark, a
    few merges, and the two special tokens."""
    from tokenizers.pre_tokenizers import ByteLevel
    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    merges = [("t", "h"), ("th", "e</w>"), ("a", "t</w>"), ("c", "at</w>"), ("d", "o"), ("do", "g</w>"),
              ("p", "h"), ("o", "t"), ("ph", "ot"), ("phot", "o</w>"), ("a", "n"), ("i", "n"), ("e", "r</w>"),
              ("r", "e"), ("o", "n</w>"), ("a", "s</w>")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    return len(vocab)


def _folder(tmp_path, act: str, safetensors: bool, text_only: bool = False):
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel
    folder = tmp_path / f"clip-{act}-{'st' if safetensors else 'bin'}{'-text' if text_only else ''}"
    folder.mkdir()
    vocab = _bpe_files(folder)
    text = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                hidden_act=act, bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1)
    torch.manual_seed(0)
    if text_only:
        model = CLIPTextModel(CLIPTextConfig(**text))
    else:
        model = CLIPModel(CLIPConfig(text_config=text, projection_dim=16, vision_config=dict(
            hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, image_size=32,
            patch_size=8, hidden_act=act, projection_dim=16)))
        from transformers import CLIPImageProcessor
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    with torch.no_grad():                      # spread the weights so that differences show
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.eval().save_pretrained(folder, safe_serialization=safetensors)
    return folder, model


def _tokenizer_oracle(folder):
    from transformers import CLIPTokenizer
    return CLIPTokenizer.from_pretrained(str(folder))


@pytest.mark.parametrize("act,safetensors", [("quick_gelu", True), ("gelu", False)])
def test_embeddings_equal_transformers(tmp_path, act, safetensors):
    folder, ref = _folder(tmp_path, act, safetensors)
    ours = load_clip(folder)
    ids, mask = ours.tokenizer(PROMPTS)
    with torch.no_grad():
        want = ref.get_text_features(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
        want = getattr(want, "pooler_output", want)
        got = ours.encode_text(PROMPTS)
        assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()
        pixels = torch.randn(3, 3, 32, 32)
        want_img = ref.get_image_features(pixel_values=pixels)
        want_img = getattr(want_img, "pooler_output", want_img)
        assert torch.allclose(ours.model.image_features(pixels), want_img, atol=1e-5, rtol=0)


def test_token_ids_equal_transformers_and_keep_the_end_token(tmp_path):
    folder = tmp_path / "tok"
    folder.mkdir()
    _bpe_files(folder)
    from fastervar.models.clip.tokenizer import CLIPTokenizer
    ours = CLIPTokenizer(folder)
    ids, mask = ours(PROMPTS)
    want = _tokenizer_oracle(folder)(PROMPTS, padding="max_length", truncation=True, max_length=77, return_tensors="np")
    assert np.array_equal(ids, want["input_ids"]) and np.array_equal(mask, want["attention_mask"])
    long = [i for i, p in enumerate(PROMPTS) if mask[i].all()]
    assert long and all(ids[i, -1] == ours.eos for i in long)      # cut at 77, the end token kept
    # the folder's tokenizer.json (as transformers writes it) gives the same ids
    _tokenizer_oracle(folder).save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "tokenizer.json").exists()
    (tmp_path / "saved" / "vocab.json").unlink(missing_ok=True)
    assert np.array_equal(CLIPTokenizer(tmp_path / "saved")(PROMPTS)[0], ids)


def test_text_only_folder_gives_last_hidden_state_and_pooled_output(tmp_path):
    folder, ref = _folder(tmp_path, "gelu", True, text_only=True)
    ours = load_clip(folder)
    assert ours.preprocess is None and not hasattr(ours.model, "vision_model")
    ids, mask = ours.tokenizer(PROMPTS[:6])
    with torch.no_grad():
        out = ref(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
        hidden, pooled = ours.model.text_model(torch.from_numpy(ids), torch.from_numpy(mask))
    assert torch.allclose(hidden, out.last_hidden_state, atol=1e-5, rtol=0)
    assert torch.allclose(pooled, out.pooler_output, atol=1e-5, rtol=0)
    with pytest.raises(FastervarError, match="text-only"):
        ours.encode_images([np.zeros((8, 8, 3), np.uint8)])


@pytest.mark.parametrize("size", [(40, 40), (37, 90), (120, 51)])
def test_pixels_equal_the_image_processor(tmp_path, size):
    from PIL import Image
    from transformers import CLIPImageProcessor
    folder, _ = _folder(tmp_path, "quick_gelu", True)
    ours = load_clip(folder).preprocess
    rgb = np.random.default_rng(sum(size)).integers(0, 256, (*size, 3), dtype=np.uint8)
    path = tmp_path / "im.png"
    Image.fromarray(rgb).save(path)
    want = CLIPImageProcessor.from_pretrained(folder)(images=Image.open(path), return_tensors="np")["pixel_values"][0]
    got = ours(np.asarray(Image.open(path)))
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-6


def test_bad_folders_are_one_line(tmp_path):
    folder, _ = _folder(tmp_path, "quick_gelu", True)
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "config.json").unlink()
    with pytest.raises(FastervarError, match="no config.json"):
        load_clip(broken)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["text_config"]["num_hidden_layers"] = 3
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FastervarError, match="missing key 'text_model.encoder.layers.2"):
        load_clip(broken)
    cfg["model_type"] = "t5"
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FastervarError, match="not a CLIP model"):
        load_clip(broken)
