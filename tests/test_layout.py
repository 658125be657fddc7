"""The official module layout: key names, shapes and parameter counts of the released files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fastervar.models.var.configs import get_config
from fastervar.models.var.family import VARModel
from fastervar.models.var.vqvae import phi_table

# Key names and shapes of upstream VAR's modules (var_d16, var_d36, the VQVAE), recorded once from
# the upstream classes on an empty device: the layout the released .pth files carry.
LAYOUT = json.loads((Path(__file__).parent / "data" / "official_layout.json").read_text())


def _meta(name: str) -> VARModel:
    with torch.device("meta"):
        return VARModel(get_config(name))


@pytest.mark.parametrize("depth, params", [(16, 310.3e6), (36, 2.354e9)])
def test_parameter_counts_match_release(depth, params):
    m = _meta(f"d{depth}")
    n = sum(p.numel() for p in m.var.parameters())
    assert n == LAYOUT[f"params_d{depth}"]
    assert round(n / (1e6 if depth == 16 else 1e9), 1 if depth == 16 else 3) == \
        (310.3 if depth == 16 else 2.354)


@pytest.mark.parametrize("depth", [16, 36])
def test_var_keys_and_shapes_match_release(depth):
    ours = [[k, list(v.shape)] for k, v in _meta(f"d{depth}").var.state_dict().items()]
    assert sorted(ours) == sorted(LAYOUT[f"var_d{depth}"])


def test_vae_keys_and_shapes_match_release():
    ours = [[k, list(v.shape)] for k, v in _meta("d16").vae.state_dict().items()]
    assert sorted(ours) == sorted(LAYOUT["vae"])
    assert len(ours) == 324


def test_phi_table_of_ten_step_schedule():
    assert phi_table(10, 4) == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]


def test_d36_uses_512_schedule_and_shared_adaln():
    cfg = get_config("d36")
    assert cfg.resolution == 512 and cfg.var.shared_aln and cfg.var.seq_len == 2240
    assert get_config("d16").resolution == 256 and get_config("d16").var.seq_len == 680
