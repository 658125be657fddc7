"""Checkpoint loading: strict round-trips, inferred configurations, and every way a file can be wrong."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest
import torch

from fastervar.errors import FastervarError
from fastervar.models.checkpoint import read_state_dict
from fastervar.models.var.checkpoint import infer_var_config, load_model, load_model_dir, save_model_dir
from fastervar.models.var.configs import get_config
from fastervar.models.var.family import VARModel


def _equal_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_pth_round_trip_is_strict_and_exact(tiny_model, tiny_files):
    loaded = load_model(*tiny_files, get_config("tiny"))
    assert _equal_weights(loaded, tiny_model)


def test_safetensors_directory_round_trip(tmp_path, tiny_model):
    save_model_dir(tiny_model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "vae.safetensors", "var.safetensors"]
    assert _equal_weights(load_model_dir(tmp_path / "m"), tiny_model)


def _file_spans(path) -> list[tuple[int, int]]:
    """The address ranges this process maps from `path` (Linux's /proc/self/maps)."""
    want, spans = str(Path(path).resolve()), []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == want:
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            spans.append((lo, hi))
    return spans


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's mappings from Linux's /proc")
@pytest.mark.parametrize("layout", ["pth", "safetensors"])
def test_loaded_weights_are_the_files_pages_not_a_second_copy(tmp_path, tiny_model, tiny_files, layout):
    """Export of a large model must fit beside one copy of its weights: the loaded parameters are
    the checkpoint's memory-mapped pages, not copies of a state dict read whole."""
    if layout == "pth":
        loaded, files = load_model(*tiny_files, get_config("tiny")), tiny_files
    else:
        save_model_dir(tiny_model, tmp_path / "m")
        loaded, files = load_model_dir(tmp_path / "m"), (tmp_path / "m" / "var.safetensors",
                                                         tmp_path / "m" / "vae.safetensors")
    assert _equal_weights(loaded, tiny_model)
    for part, path in ((loaded.var, files[0]), (loaded.vae, files[1])):
        spans = _file_spans(path)
        for name, t in part.named_parameters():
            assert any(lo <= t.data_ptr() < hi for lo, hi in spans), f"{name} was copied out of {path.name}"


def test_official_shaped_files_infer_their_configuration(tmp_path):
    """A d16-shaped state dict (official key names) is recognised as d16 without being told."""
    with torch.device("meta"):
        meta = VARModel(get_config("d16"))
    cfg = infer_var_config(meta.var.state_dict(), tmp_path / "var_d16.pth")
    assert cfg == get_config("d16").var
    with torch.device("meta"):
        meta36 = VARModel(get_config("d36"))
    assert infer_var_config(meta36.var.state_dict(), tmp_path / "var_d36.pth") == get_config("d36").var


def test_missing_file(tmp_path, tiny_files):
    with pytest.raises(FastervarError, match="checkpoint not found"):
        load_model(tmp_path / "nope.pth", tiny_files[1])


def test_not_a_checkpoint(tmp_path, tiny_files):
    junk = tmp_path / "notes.pth"
    junk.write_text("these are not weights\n")
    with pytest.raises(FastervarError, match="not a readable checkpoint"):
        load_model(junk, tiny_files[1])


def test_truncated_checkpoint(tmp_path, tiny_files):
    data = tiny_files[0].read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(FastervarError, match="corrupt or truncated"):
        load_model(cut, tiny_files[1])


def test_truncated_safetensors(tmp_path, tiny_model):
    save_model_dir(tiny_model, tmp_path / "m")
    f = tmp_path / "m" / "var.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(FastervarError, match="not a readable safetensors file"):
        read_state_dict(f)


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_arbitrary_pickle_is_refused(tmp_path, tiny_files):
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as fh:
        pickle.dump({"blocks.0.x": _Payload()}, fh)
    with pytest.raises(FastervarError, match="refused to load"):
        load_model(evil, tiny_files[1])


def test_another_depth_names_first_key_and_both_shapes(tiny_files):
    deeper = dataclasses.replace(get_config("tiny"), var=dataclasses.replace(get_config("tiny").var, depth=3))
    with pytest.raises(FastervarError, match=r"missing key 'blocks\.2\.") as exc:
        load_model(*tiny_files, deeper)
    assert "model expects shape" in str(exc.value)
    wider = dataclasses.replace(get_config("tiny"), var=dataclasses.replace(get_config("tiny").var, embed_dim=128, num_heads=2))
    with pytest.raises(FastervarError, match=r"key 'pos_start': file has shape \(1, 1, 64\), model expects \(1, 1, 128\)"):
        load_model(*tiny_files, wider)


def test_missing_and_unexpected_keys(tmp_path, tiny_model, tiny_files):
    sd = tiny_model.var.state_dict()
    missing = dict(sd)
    del missing["blocks.1.ffn.fc2.bias"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(FastervarError, match=r"missing key 'blocks\.1\.ffn\.fc2\.bias' \(model expects shape \(64,\)\)"):
        load_model(tmp_path / "missing.pth", tiny_files[1], get_config("tiny"))
    extra = dict(sd, **{"blocks.0.attn.extra": torch.zeros(3, 2)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(FastervarError, match=r"unexpected key 'blocks\.0\.attn\.extra' \(shape \(3, 2\)\)"):
        load_model(tmp_path / "extra.pth", tiny_files[1], get_config("tiny"))


def test_files_swapped(tiny_files):
    var, vae = tiny_files
    with pytest.raises(FastervarError, match="looks like a VAE checkpoint but was given as --var-checkpoint"):
        load_model(vae, var)
    with pytest.raises(FastervarError, match="looks like a VAR checkpoint but was given as --vae-checkpoint"):
        load_model(var, var)
