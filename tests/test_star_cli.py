"""`fastervar generate` on STAR: files in upstream's own layout reproduce upstream's images, text
from SD-2.1's encoder folder, and every kind of bad input is one line with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from fastervar.cli import main
from fastervar.models.star.checkpoint import random_star
from fastervar.models.star.text import StarTextEncoder, read_star_embeddings

DATA = Path(__file__).parent / "data"
META = json.loads((DATA / "star_reference.json").read_text())


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def upstream_files(tmp_path_factory):
    """The tiny STAR as upstream's trainer writes it (`["trainer"]["var_wo_ddp"]`), VAR's VQVAE
    as a plain state dict, and the reference's text as an embeddings file."""
    d = tmp_path_factory.mktemp("star")
    model = random_star("star-tiny")
    torch.save({"trainer": {"var_wo_ddp": model.star.state_dict()}, "epoch": 1}, d / "ar-ckpt-last.pth")
    torch.save(model.vae.state_dict(), d / "vae.pth")
    with np.load(DATA / "star_tiny_reference.npz") as refs:
        text = {k[len("text/"):]: refs[k] for k in refs.files if k.startswith("text/")}
        want = refs["sampler_b2/42/images"]
    np.savez(d / "prompts.npz", **text)
    return d, want


def test_generate_from_upstream_files_reproduces_upstream_images(upstream_files, tmp_path, one_thread):
    d, want = upstream_files
    case = META["cases"]["sampler_b2"]
    out = tmp_path / "imgs"
    r = cli("generate", "--model", "star-tiny", "--checkpoint", d / "ar-ckpt-last.pth", "--vae-checkpoint", d / "vae.pth",
            "--text-embeddings", d / "prompts.npz", "--sampler", "official", "--seed", 42, "--cfg", case["cfg"],
            "--top-k", case["top_k"], "--top-p", case["top_p"], "--batch-size", 2, "--out", out)
    assert r.exit_code == 0, r.output
    got = np.stack([np.asarray(Image.open(out / f"{i:04d}.png").convert("RGB")) for i in range(2)])
    assert np.array_equal(got, want)


def test_random_weights_generate_portable(tmp_path, upstream_files):
    d, _ = upstream_files
    r = cli("generate", "--model", "star-tiny-plain", "--random-weights", "--text-embeddings", d / "prompts.npz",
            "--top-k", 40, "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["0000.png", "0001.png"]


def sd21_layout(tmp_path) -> Path:
    """SD-2.1's folder layout with a tiny CLIP text model: text_encoder/ and tokenizer/ apart."""
    from tests.test_clip import _bpe_files, _folder
    folder, _ = _folder(tmp_path, "gelu", True, text_only=True)
    root = tmp_path / "sd21"
    (root / "tokenizer").mkdir(parents=True)
    _bpe_files(root / "tokenizer")
    (root / "text_encoder").mkdir()
    for f in folder.iterdir():
        if f.name not in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                          "special_tokens_map.json"):
            (root / "text_encoder" / f.name).write_bytes(f.read_bytes())
    return root


def test_text_encoder_folder_encodes_as_transformers_does(tmp_path):
    """Each prompt's last hidden state, mask and pooled end token, and the empty prompt as the null row."""
    transformers = pytest.importorskip("transformers", reason="transformers is the CLIP oracle")
    root = sd21_layout(tmp_path)
    prompts = ["a photo of a cat", "two dogs"]
    got = StarTextEncoder(root / "text_encoder").encode(prompts)
    tok = transformers.CLIPTokenizer.from_pretrained(str(root / "tokenizer"))
    ref = transformers.CLIPTextModel.from_pretrained(str(root / "text_encoder")).eval()
    inputs = tok(prompts + [""], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = ref(**inputs)
    assert torch.equal(torch.cat([got.mask, got.null_mask]), inputs.attention_mask)
    assert torch.allclose(torch.cat([got.embeddings, got.null_embeddings]), out.last_hidden_state, atol=1e-5)
    assert torch.allclose(torch.cat([got.pooled, got.null_pooled]), out.pooler_output, atol=1e-5)


def test_generate_with_prompts_through_the_text_encoder(tmp_path):
    pytest.importorskip("transformers", reason="builds the tiny CLIP folder")
    root = sd21_layout(tmp_path)
    r = cli("generate", "--model", "star-tiny-plain", "--random-weights", "--text-encoder", root / "text_encoder",
            "--prompt", "a cat", "--prompt", "a much longer prompt about two dogs", "--top-k", 40,
            "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "o").iterdir())) == 2


def test_bad_input_is_one_line(tmp_path, upstream_files, tiny_files):
    d, _ = upstream_files
    ckpt, vae = d / "ar-ckpt-last.pth", d / "vae.pth"
    base = ("generate", "--model", "star-tiny", "--vae-checkpoint", vae, "--out", tmp_path / "o")
    # a truncated transformer file
    (tmp_path / "cut.pth").write_bytes(ckpt.read_bytes()[:5000])
    one_line_error(cli(*base, "--checkpoint", tmp_path / "cut.pth", "--text-embeddings", d / "prompts.npz"),
                   "cut.pth", "corrupt or truncated")
    # the wrong family either way round
    var_ckpt, var_vae = tiny_files
    one_line_error(cli(*base, "--checkpoint", var_ckpt, "--text-embeddings", d / "prompts.npz"),
                   "class-conditional VAR", "--checkpoint")
    one_line_error(cli("calibrate", "--checkpoint", ckpt, "--vae-checkpoint", vae, "--target-speedup", 2,
                       "--out", tmp_path / "p.json"), "calibrate does not take STAR")
    np.savez(tmp_path / "t5.npz", embeddings=np.ones((1, 5, 32), np.float32), lengths=np.array([5]))
    one_line_error(cli("generate", "--model", "infinity-tiny", "--checkpoint", ckpt, "--vae-checkpoint", vae,
                       "--text-embeddings", tmp_path / "t5.npz", "--out", tmp_path / "o"), "STAR transformer")
    # embeddings without the null rows, and of the wrong width
    with np.load(d / "prompts.npz") as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(tmp_path / "nonull.npz", **{k: v for k, v in arrays.items() if not k.startswith("null_")})
    one_line_error(cli(*base, "--checkpoint", ckpt, "--text-embeddings", tmp_path / "nonull.npz"),
                   "null_embeddings", "missing")
    wide = {k: (np.concatenate([v, v], -1) if k.endswith(("embeddings", "pooled")) else v) for k, v in arrays.items()}
    np.savez(tmp_path / "wide.npz", **wide)
    one_line_error(cli(*base, "--checkpoint", ckpt, "--text-embeddings", tmp_path / "wide.npz"), "64 wide", "32")
    assert not (tmp_path / "o").exists()
    # options of the other families
    one_line_error(cli(*base, "--checkpoint", ckpt, "--text-embeddings", d / "prompts.npz", "--pn", "0.25M"), "--pn")
    one_line_error(cli(*base, "--checkpoint", ckpt, "--text-embeddings", d / "prompts.npz", "--class", 3), "--class")


def test_star_embeddings_file_is_checked(tmp_path, upstream_files):
    d, _ = upstream_files
    text = read_star_embeddings(d / "prompts.npz")
    assert len(text) == 2 and text.null_embeddings.shape == (1, 77, 32)
    with np.load(d / "prompts.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["mask"] = arrays["mask"] * 2
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(Exception, match="'mask' must be"):
        read_star_embeddings(tmp_path / "bad.npz")


# -- fuzzing the loaders of user files -------------------------------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fastervar.errors import FastervarError  # noqa: E402
from fastervar.models.star.checkpoint import load_star  # noqa: E402

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def npz_mutations(draw, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop, reshape, retype or refill some of the arrays of a good embeddings file."""
    out = dict(arrays)
    for key in draw(st.lists(st.sampled_from(sorted(arrays)), max_size=3, unique=True)):
        kind = draw(st.sampled_from(["drop", "shape", "dtype", "values", "empty"]))
        v = out[key]
        if kind == "drop":
            del out[key]
        elif kind == "shape":
            out[key] = v.reshape(-1) if draw(st.booleans()) else v[..., : max(1, v.shape[-1] // 2)]
        elif kind == "dtype":
            out[key] = v.astype(draw(st.sampled_from([np.float64, np.int8, np.bool_, np.complex64])))
        elif kind == "values":
            out[key] = np.full_like(v, draw(st.sampled_from([np.nan, -1, 2, 0, np.inf])))
        else:
            out[key] = v[:0]
    return out


@FUZZ
@given(data=st.data())
def test_fuzzed_embeddings_files_load_or_fail_in_one_line(upstream_files, tmp_path_factory, data):
    d, _ = upstream_files
    with np.load(d / "prompts.npz") as z:
        arrays = {k: z[k] for k in z.files}
    path = tmp_path_factory.mktemp("fuzz") / "p.npz"
    np.savez(path, **data.draw(npz_mutations(arrays)))
    if data.draw(st.booleans()):
        raw = path.read_bytes()
        path.write_bytes(raw[: data.draw(st.integers(0, len(raw)))])
    try:
        text = read_star_embeddings(path)
    except FastervarError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert text.embeddings.dtype == torch.float32 and text.mask.dtype == torch.int64
        assert text.embeddings.shape[1:] == text.null_embeddings.shape[1:]


@FUZZ
@given(cut=st.floats(0, 1), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=4))
def test_fuzzed_checkpoints_load_or_fail_in_one_line(upstream_files, tmp_path_factory, cut, flips):
    d, _ = upstream_files
    raw = bytearray((d / "ar-ckpt-last.pth").read_bytes())
    for where, value in flips:
        raw[int(where * (len(raw) - 1))] = value
    path = tmp_path_factory.mktemp("fuzz") / "star.pth"
    path.write_bytes(bytes(raw[: max(1, int(cut * len(raw)))] if cut < 1 else raw))
    try:
        load_star(path, d / "vae.pth", "star-tiny")
    except FastervarError as exc:
        assert str(exc) and "\n" not in str(exc)
