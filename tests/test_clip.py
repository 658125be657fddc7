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


def _pngs(folder, n: int, seed: int = 0) -> list[np.ndarray]:
    from PIL import Image
    folder.mkdir()
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (int(rng.integers(24, 60)), int(rng.integers(24, 60)), 3), dtype=np.uint8)
              for _ in range(n)]
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:04d}.png")
    return images


def test_clip_score_command_matches_transformers_per_image(tmp_path):
    """`fastervar clip-score` gives, per image, 100 * max(cos, 0) of transformers' own embeddings
    (its processor, its tokenizer, its model) within 1e-4."""
    from click.testing import CliRunner
    from PIL import Image
    from transformers import CLIPImageProcessor

    from fastervar.cli import main
    folder, ref = _folder(tmp_path, "quick_gelu", True)
    _pngs(tmp_path / "imgs", 6)
    prompts = PROMPTS[:6]
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n")
    r = CliRunner().invoke(main, ["clip-score", str(tmp_path / "imgs"), "--prompts", str(tmp_path / "p.txt"),
                                  "--clip", str(folder), "--json", str(tmp_path / "out" / "s.json"), "--batch-size", "4"])
    assert r.exit_code == 0, r.output
    got = json.loads((tmp_path / "out" / "s.json").read_text())
    proc, tok = CLIPImageProcessor.from_pretrained(folder), _tokenizer_oracle(folder)
    pixels = proc(images=[Image.open(p) for p in sorted((tmp_path / "imgs").iterdir())], return_tensors="pt")
    text = tok(prompts, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        img = ref.get_image_features(**pixels)
        txt = ref.get_text_features(**text)
    img, txt = (getattr(x, "pooler_output", x) for x in (img, txt))
    want = 100 * torch.clamp(torch.nn.functional.cosine_similarity(img, txt), min=0)
    assert np.allclose(got["per_image"], want.numpy(), atol=1e-4, rtol=0)
    assert got["clip_score"] == pytest.approx(float(np.mean(got["per_image"])))


def test_clip_score_bad_input_is_one_line(tmp_path):
    from click.testing import CliRunner

    from fastervar.cli import main

    from .test_cli import assert_bad_input
    folder, _ = _folder(tmp_path, "quick_gelu", True)
    _pngs(tmp_path / "imgs", 3)
    (tmp_path / "p.txt").write_text("one\ntwo\n")
    r = CliRunner().invoke(main, ["clip-score", str(tmp_path / "imgs"), "--prompts", str(tmp_path / "p.txt"),
                                  "--clip", str(folder)])
    assert_bad_input(r, "has 2 prompts but")
    (tmp_path / "p.txt").write_text("one\ntwo\nthree\n")
    (folder / "config.json").unlink()
    r = CliRunner().invoke(main, ["clip-score", str(tmp_path / "imgs"), "--prompts", str(tmp_path / "p.txt"),
                                  "--clip", str(folder)])
    assert_bad_input(r, "no config.json")


def test_metrics_cache_features_and_measure_what_they_say(tmp_path):
    from fastervar.evaluate.clip_metrics import ClipFeatures, clip_fd, paired_clip_similarity
    folder, _ = _folder(tmp_path, "gelu", True)
    judge = load_clip(folder)
    images = _pngs(tmp_path / "imgs", 12)
    calls = []
    encode = judge.encode_images
    judge.encode_images = lambda ims: calls.append(len(ims)) or encode(ims)
    feats = ClipFeatures(judge, batch=5)
    same = paired_clip_similarity(feats, images, images)
    assert np.allclose(same, 1.0) and sum(calls) == 12 and max(calls) <= 5      # each image encoded once
    assert clip_fd(feats, images, images) == pytest.approx(0.0, abs=1e-6)
    other = _pngs(tmp_path / "other", 12, seed=1)
    flat = [np.full_like(im, v) for im, v in zip(other, range(0, 240, 20))]      # plain colours, not noise
    assert clip_fd(feats, flat, images) > 2 * clip_fd(feats, other, images)


def test_class_prompts_name_what_each_label_depicts():
    from fastervar.evaluate.clip_metrics import class_prompts
    from fastervar.models.loading import random_model, shipped_model
    d16 = random_model("tiny")
    assert class_prompts(d16, [0]) is None                    # a model that does not say what its classes are
    d16.var.num_classes = 1000                                 # the released ImageNet models
    assert class_prompts(d16, [0, 207, 999]) == ["a photo of a tench", "a photo of a golden retriever",
                                                 "a photo of a toilet tissue"]
    assert len(d16.class_names()) == 1000
    assert class_prompts(shipped_model("fashion-16"), [0, 9]) == ["a photo of a T-shirt/top", "a photo of a Ankle boot"]


def test_evaluate_clip_on_the_embedded_model_scores_each_side(tmp_path):
    """`evaluate --clip --profile` on a class model: each side's CLIP score against "a photo of a
    {class name}" and CLIP-FD to the real images, and their paired similarity; a bad folder is one
    line before any sampling."""
    from click.testing import CliRunner

    from fastervar.cli import main

    from .test_cli import assert_bad_input
    clip, _ = _folder(tmp_path, "quick_gelu", True)
    r = CliRunner().invoke(main, ["evaluate", "--model", "fashion-tiny", "--samples-per-class", "2", "--profile",
                                  "fashion-tiny-calibrated", "--clip", str(clip), "--json", str(tmp_path / "e.json")])
    assert r.exit_code == 0, r.output
    ev = json.loads((tmp_path / "e.json").read_text())
    assert ev["clip_score"] == ev["baseline"]["clip_score"] and 0 <= ev["accelerated"]["clip_score"] <= 100
    assert ev["baseline"]["clip_fd"] > 0 and ev["accelerated"]["clip_fd"] > 0
    assert 0 < ev["paired_clip_similarity"] <= 1
    r = CliRunner().invoke(main, ["evaluate", "--model", "fashion-tiny", "--clip", str(tmp_path / "none")])
    assert_bad_input(r, "not a folder")


def _candidates(report) -> list[dict]:
    """The rows of a calibration report's candidate table."""
    lines = report.read_text().split("## Candidates tried")[1].splitlines()
    cols = [c.strip() for c in next(x for x in lines if x.startswith("| boundary")).strip("|").split("|")]
    return [dict(zip(cols, (c.strip() for c in x.strip("|").split("|")))) for x in lines
            if x.startswith("| ") and not x.startswith(("| boundary", "|---"))]


@pytest.mark.slow
def test_calibrate_keeps_the_clip_score_within_its_limit_on_the_embedded_model(tmp_path):
    """`calibrate --clip --max-clip-drop` on fashion-tiny with a tiny random CLIP: with a limit just
    above what the unconstrained choice loses, candidates that lose more are refused, the choice
    keeps the limit, and the profile and report show the figures."""
    from click.testing import CliRunner

    from fastervar.cli import main
    from fastervar.profile import load
    clip, _ = _folder(tmp_path, "quick_gelu", True)
    common = ["calibrate", "--model", "fashion-tiny", "--classes", "0,1,2,3,4,5,6,7,8,9", "--seeds", "0,1",
              "--target-speedup", "1.5", "--max-accuracy-drop", "1", "--batch-size", "20", "--cost-model", "flops",
              "--clip", str(clip), "--cache-dir", str(tmp_path / "cache"),
              "--holdout", "0", "--confidence", "0"]     # the limit itself; margins: test_confidence.py
    r = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "free.json")])
    assert r.exit_code == 0, r.output
    free = load(tmp_path / "free.json")
    assert free.measured["feature_shift_from"] == "CLIP image embeddings"
    base, limit = free.calibration["baseline_clip_score"], round(max(free.measured["clip_score_drop"], 0) + 1e-3, 4)
    r = CliRunner().invoke(main, [*common, "--max-clip-drop", str(limit), "--out", str(tmp_path / "kept.json")])
    assert r.exit_code == 0, r.output
    kept = load(tmp_path / "kept.json")
    assert kept.measured["clip_score_drop"] <= limit and kept.calibration["target"]["max_clip_drop"] == limit
    was = {tuple(v for k, v in row.items() if k != "meets_target"): row["meets_target"]
           for row in _candidates(tmp_path / "free-report" / "report.md")}
    refused = [row for row in _candidates(tmp_path / "kept-report" / "report.md")
               if row["meets_target"] == "False" and was.get(tuple(v for k, v in row.items() if k != "meets_target")) == "True"]
    assert refused and all(float(row["clip_score"]) < base - limit for row in refused)
    report = (tmp_path / "kept-report" / "report.md").read_text()
    assert "CLIP score may drop by at most" in report and "chosen CLIP score" in report
    assert f"CLIP score {kept.measured['clip_score']:.3f}" in r.output


def test_calibrate_clip_bad_input_is_one_line(tmp_path):
    from click.testing import CliRunner

    from fastervar.cli import main

    from .test_cli import assert_bad_input
    r = CliRunner().invoke(main, ["calibrate", "--model", "fashion-tiny", "--target-speedup", "1.5", "--max-clip-drop",
                                  "1", "--out", str(tmp_path / "p.json")])
    assert_bad_input(r, "--max-clip-drop needs --clip")
    r = CliRunner().invoke(main, ["calibrate", "--model", "fashion-tiny", "--target-speedup", "1.5", "--clip",
                                  str(tmp_path), "--out", str(tmp_path / "p.json")])
    assert_bad_input(r, "no config.json")
    assert not (tmp_path / "p.json").exists()


@pytest.mark.slow
def test_bench_with_clip_adds_its_columns_and_weighs_clip_fd_at_equal_speed(tmp_path):
    """`bench --clip` on the embedded model: every variant gets a CLIP score ('a photo of a {class
    name}'), the others paired CLIP similarity and CLIP-FD, and the equal-speed table shows them."""
    from click.testing import CliRunner

    from fastervar.bench.report import equal_speed_table
    from fastervar.cli import main
    clip, _ = _folder(tmp_path, "quick_gelu", True)
    r = CliRunner().invoke(main, ["bench", "--model", "fashion-tiny", "--no-bundle", "--images", "20",
                                  "--batch-size", "20", "--clip", str(clip), "--out", str(tmp_path / "b"),
                                  "--json", str(tmp_path / "b.json")])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "b.json").read_text())
    rows = result["variants"]
    assert all(0 <= row["clip_score"] <= 100 for row in rows.values())
    assert "paired_clip_similarity" not in rows["baseline"]
    others = [row for name, row in rows.items() if name != "baseline"]
    assert others and all(0 < row["paired_clip_similarity"] <= 1 and row["clip_fd"] >= 0 for row in others)
    assert "CLIP-FD" in r.output and "CLIP-FD" in equal_speed_table(result["equal_speed"])
    r = CliRunner().invoke(main, ["bench", "--model", "fashion-tiny", "--no-bundle", "--clip", str(tmp_path / "none"),
                                  "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "not a folder" in r.output and not (tmp_path / "c").exists()
