"""Infinity's BSQ VAE: the released layouts, config inference, strict loading, and the latent
helpers the sampler chains (bits -> codes -> summed latent -> next input / image)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fastervar.errors import FastervarError
from fastervar.models.infinity.bsq import (
    BSQVAE,
    accumulate,
    bits_to_codes,
    infer_bsq_config,
    load_bsq,
    next_scale_input,
    scale_codes,
)
from fastervar.models.infinity.configs import BSQ_CONFIGS, BSQConfig

# Key names, shapes and dtypes of upstream's AutoEncoder for the two released VAEs, dumped from
# its own classes on meta tensors, with their parameter counts.
LAYOUT = json.loads((Path(__file__).parent / "data" / "infinity_layout.json").read_text())
RELEASED = [("d32", "vae_d32"), ("d14-f8-patchify", "vae_d14_f8_patchify")]
TINY = BSQConfig(codebook_dim=4, ch=32, ch_mult=(1, 2), num_res_blocks=1)


def _plain(key: str) -> str:
    """Upstream's unwrapped name for a key: `conv_in.conv.weight` -> `conv_in.weight`."""
    for wrap in (".conv.", ".norm."):
        stem, sep, leaf = key.rpartition(wrap)
        if sep and "." not in leaf:
            return f"{stem}.{leaf}"
    return key


@pytest.fixture(scope="module")
def tiny() -> BSQVAE:
    torch.manual_seed(0)
    return BSQVAE(TINY).eval()


@pytest.mark.parametrize("name, rec", RELEASED)
def test_layout_equals_release(name, rec):
    with torch.device("meta"):
        m = BSQVAE(BSQ_CONFIGS[name])
    ours = [[k, list(v.shape), str(v.dtype)] for k, v in m.state_dict().items()]
    assert ours == LAYOUT[rec]
    assert sum(p.numel() for p in m.parameters()) == LAYOUT[f"params_{rec}"]


@pytest.mark.parametrize("name, rec", RELEASED)
@pytest.mark.parametrize("names", ["wrapped", "plain"])
def test_infer_config_from_layout(name, rec, names):
    rename = _plain if names == "plain" else str
    sd = {rename(k): torch.empty(shape, device="meta") for k, shape, _ in LAYOUT[rec]}
    assert infer_bsq_config(sd) == BSQ_CONFIGS[name]


def test_infer_config_refusals(tiny):
    with pytest.raises(FastervarError, match="cannot infer the BSQ VAE configuration.*encoder.conv_in"):
        infer_bsq_config({"decoder.conv_in.conv.weight": torch.empty(1)})
    with pytest.raises(FastervarError, match="stride-2 BSQ VAE has no upstream token patch"):
        infer_bsq_config(tiny.state_dict())
    assert infer_bsq_config(tiny.state_dict(), patch_size=1) == TINY


def test_quantizer_buffer_is_aliased_as_upstream(tiny):
    sd = tiny.state_dict()
    assert sd["quantizer.lfq.mask"].tolist() == sd["quantize.lfq.mask"].tolist() == [8, 4, 2, 1]


@pytest.mark.parametrize("form", ["pth", "pth-vae-plain", "safetensors"])
def test_load_forms(tiny, tmp_path, form):
    sd = {k: v.clone() for k, v in tiny.state_dict().items()}
    path = tmp_path / f"vae.{form.split('-')[0]}"
    if form == "pth":
        torch.save(sd, path)
    elif form == "pth-vae-plain":
        torch.save({"vae": {_plain(k): v for k, v in sd.items()}}, path)
    else:
        save_file(sd, str(path))
    loaded = load_bsq(path, TINY)
    assert all(torch.equal(v, sd[k]) for k, v in loaded.state_dict().items())
    assert not loaded.training


def test_load_fails_naming_the_key(tiny, tmp_path):
    sd = tiny.state_dict()
    key = "decoder.up.1.block.0.conv1.conv.weight"
    renamed = {("decoder.up.1.block.0.conv_1.conv.weight" if k == key else k): v for k, v in sd.items()}
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(FastervarError, match=rf"renamed\.pth: BSQ VAE checkpoint is missing key '{key}'"):
        load_bsq(tmp_path / "renamed.pth", TINY)
    reshaped = dict(sd, **{key: torch.zeros(64, 32, 1, 1)})
    torch.save({"vae": reshaped}, tmp_path / "reshaped.pth")
    with pytest.raises(FastervarError, match=rf"at key '{key}': file has shape \(64, 32, 1, 1\), "
                                             r"model expects \(64, 64, 3, 3\)"):
        load_bsq(tmp_path / "reshaped.pth", TINY)
    torch.save(dict(sd, extra=torch.zeros(1)), tmp_path / "extra.pth")
    with pytest.raises(FastervarError, match="unexpected key 'extra'"):
        load_bsq(tmp_path / "extra.pth", TINY)
    torch.save({"vae": 3}, tmp_path / "junk.pth")
    with pytest.raises(FastervarError, match="junk.pth: not a state dict"):
        load_bsq(tmp_path / "junk.pth", TINY)


def test_bits_to_codes_d2_is_unit_diagonal():
    bits = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    codes = bits_to_codes(bits)
    assert codes.dtype == torch.float32
    assert torch.allclose(codes, (2 * bits - 1) / math.sqrt(2), atol=1e-7, rtol=0)
    assert torch.equal(bits_to_codes(bits.bool()), codes) and torch.equal(bits_to_codes(bits.float()), codes)


def test_bits_to_codes_unit_norm_and_sign():
    bits = torch.randint(0, 2, (3, 5, 32), generator=torch.Generator().manual_seed(0))
    codes = bits_to_codes(bits)
    assert torch.allclose(codes.norm(dim=-1), torch.ones(3, 5), atol=1e-6)
    assert torch.equal(codes > 0, bits.bool())


def test_accumulate_constant_from_1x1_and_last_scale_as_is():
    codes = torch.arange(1.0, 5.0).reshape(1, 4, 1, 1)
    summed = accumulate(None, codes, (5, 7))
    assert summed.shape == (1, 4, 5, 7)
    # constant up to an ulp: the trilinear weights of a 1x1 source need not sum to exactly 1,
    # and upstream's latent carries that rounding too
    assert torch.allclose(summed, codes.expand(1, 4, 5, 7), atol=1e-6, rtol=0)
    last = torch.randn(1, 4, 5, 7)
    assert torch.equal(accumulate(summed, last, (5, 7)), summed + last)


def test_helpers_keep_upstreams_channels_last_latent():
    bits = torch.randint(0, 2, (2, 6, 4), generator=torch.Generator().manual_seed(0))
    summed = accumulate(None, scale_codes(bits, (2, 3)), (4, 6))
    assert summed.is_contiguous(memory_format=torch.channels_last) and not summed.is_contiguous()


def test_helpers_ignore_the_callers_memory_layout():
    """Trilinear rounds differently on NCHW; the helpers resample channels-last whatever they get."""
    g = torch.Generator().manual_seed(0)
    summed = torch.randn(2, 8, 45, 90, generator=g).contiguous(memory_format=torch.channels_last)
    codes = torch.randn(2, 8, 19, 38, generator=g).contiguous(memory_format=torch.channels_last)
    assert torch.equal(next_scale_input(summed, (19, 38)), next_scale_input(summed.contiguous(), (19, 38)))
    assert torch.equal(accumulate(summed, codes, (45, 90)), accumulate(summed.contiguous(), codes.contiguous(), (45, 90)))


def test_next_scale_input_downsamples_bilinearly():
    summed = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).reshape(1, 1, 2, 2)
    assert next_scale_input(summed, (1, 1)).tolist() == [[[1.5]]]     # trilinear down, not area's corner
    flat = torch.full((2, 3, 6, 8), 0.25)
    out = next_scale_input(flat, (3, 4))
    assert out.shape == (2, 12, 3) and torch.equal(out, torch.full_like(out, 0.25))


def test_patchified_tokens_round_trip():
    """Bits of token (i, j) channel c*4 + 2*dy + dx land on latent pixel (2i+dy, 2j+dx), and the
    next-input unshuffle at the same size gives every token its own bits back."""
    g = torch.Generator().manual_seed(0)
    bits = torch.randint(0, 2, (2, 6, 4 * 3), generator=g)
    codes = scale_codes(bits, (2, 3), patch_size=2)
    assert codes.shape == (2, 3, 4, 6)
    assert torch.equal(codes[0, 1, 3, 4] > 0, bits[0, 1 * 3 + 2, 1 * 4 + 2 * 1 + 0].bool())
    tokens = next_scale_input(codes, (2, 3), patch_size=2)
    assert tokens.shape == (2, 6, 12)
    assert torch.equal(tokens > 0, bits.bool())


@pytest.mark.parametrize("patch", [1, 2])
def test_decode_shape_and_range(patch):
    torch.manual_seed(0)
    cfg = BSQConfig(codebook_dim=4, ch=32, ch_mult=(1, 2), num_res_blocks=1, patch_size=patch)
    vae = BSQVAE(cfg).eval()
    with torch.no_grad():
        for p in vae.decoder.parameters():
            p.mul_(4)                  # drive some outputs past the clamp
    g = torch.Generator().manual_seed(1)
    full = (3 * patch, 4 * patch)
    summed = None
    for h, w in [(1, 1), (2, 2), (3, 4)]:
        bits = torch.randint(0, 2, (2, h * w, cfg.token_bits), generator=g)
        summed = accumulate(summed, scale_codes(bits, (h, w), patch), full)
    with torch.no_grad():
        img = vae.decode(summed)
        assert torch.equal(vae.decode(summed.contiguous()), img)
        assert img.shape == (2, 3, full[0] * cfg.stride, full[1] * cfg.stride)
        assert img.min() >= -1 and img.max() <= 1 and (img.abs() == 1).any()
        assert vae.encode(img).shape == (2, 4, *full)
