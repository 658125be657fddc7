"""Infinity's schedules against upstream's, recorded by scripts/record_infinity_schedules.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastervar.errors import FastervarError
from fastervar.models.infinity import schedules as S

RECORDED = json.loads((Path(__file__).parent / "data" / "infinity_schedules.json").read_text())


def test_every_template_and_budget_matches_upstream():
    ours = S.templates()
    assert sorted(f"{r:.3f}" for r in ours) == sorted(RECORDED)
    for key, by_pn in RECORDED.items():
        for pn, want in by_pn.items():
            assert [list(g) for g in S.schedule(float(key), pn)] == want["scales"], (key, pn)
            assert list(S.image_size(float(key), pn)) == want["pixels"], (key, pn)


def test_aspects_snap_to_the_nearest_template_and_bad_ones_are_one_line():
    assert S.parse_aspect("1:2") == 0.5 and S.parse_aspect("0.75") == 0.75
    assert S.image_size(S.parse_aspect("1:2"), "1M") == (720, 1440)          # wide: height 720, width 1440
    assert S.nearest_template(0.67) == 0.666 and S.nearest_template(1.9) == 2.0
    assert S.schedule(1.0, "0.06M")[-1] == (16, 16) and len(S.schedule(1.0, "1M")) == 13
    for bad in ("wide", "1:0", "-1"):
        with pytest.raises(FastervarError, match="--aspect"):
            S.parse_aspect(bad)
    with pytest.raises(FastervarError, match="--pn '2M' is unknown"):
        S.schedule(1.0, "2M")
