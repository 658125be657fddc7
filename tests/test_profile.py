"""The profile schema: round trips, field-naming errors, and a fuzzed validator that never crashes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastervar import profile as P
from fastervar.errors import FastervarError
from fastervar.models.var.configs import get_config

CFG = get_config("fashion-tiny")      # 7 steps (1, 2, 3, 4, 5, 6, 8), width 96


def paper_split() -> P.Profile:
    p = P.identity(CFG, "paper-split")
    p.stages = {"semantic": [0, 1, 2], "structure": [3, 4], "refine": [5, 6]}
    p.steps[5] = P.StepPlan(mode="reduce", cfg=False, keep=12, selector="pivotal", restore_from=4)
    p.steps[6] = P.StepPlan(mode="reduce", cfg=False, keep=16, selector="grid", restore_from=4,
                            restore_level="layer", ranks={"ffn.fc1": 32})
    return p


def test_round_trip(tmp_path):
    p = paper_split()
    p.save(tmp_path / "p.json")
    q = P.load(tmp_path / "p.json")
    assert q.to_dict() == p.to_dict()
    P.check_against(q, CFG)
    assert not q.is_identity() and P.identity(CFG).is_identity()


def _bad(mutate, match: str) -> None:
    d = paper_split().to_dict()
    mutate(d)
    with pytest.raises(P.ProfileError, match=match):
        p = P.from_dict(json.loads(json.dumps(d)))
        P.check_against(p, CFG)


def test_malformed_json(tmp_path):
    f = tmp_path / "p.json"
    f.write_text('{"format": "fastervar-profile/1",')
    with pytest.raises(FastervarError, match="malformed JSON at line 1"):
        P.load(f)


def test_errors_name_the_field():
    _bad(lambda d: d["steps"][5].update(mode="prune"), r"steps\[5\]\.mode: unknown mode 'prune'")
    _bad(lambda d: d["steps"][5].update(selector="magic"), r"steps\[5\]\.selector: unknown selector 'magic'")
    _bad(lambda d: d["steps"][5].update(keep=37), r"steps\[5\]\.keep = 37 must be between 1 and the step's 36 tokens")
    _bad(lambda d: d["steps"][6]["ranks"].update({"ffn.fc1": 96}), r"steps\[6\]\.ranks\.ffn\.fc1 = 96 must be below")
    _bad(lambda d: d["model"].update(patch_nums=[1, 2, 3, 4, 5, 6, 8, 10]), r"steps has 7 entries but the schedule has 8")
    _bad(lambda d: d.update(format="fastervar-profile/0"), r"format: expected")
    _bad(lambda d: d["steps"][5].update(restore_from=5), r"steps\[5\]\.restore_from = 5 must be an earlier step")
    _bad(lambda d: d["steps"][6].update(cfg=True), r"steps\[5\]\.cfg: once guidance is dropped")
    _bad(lambda d: d["steps"][0].update(mode="skip"), r"steps\[0\]\.mode: the first step must run in full")
    _bad(lambda d: d["stages"].update(refine=[6]), r"stages must assign every step")


def test_profile_for_another_model_is_refused():
    p = paper_split()
    with pytest.raises(P.ProfileError, match="does not match the model's schedule"):
        P.check_against(p, get_config("d16"))
    with pytest.raises(P.ProfileError, match="model.config is 'fashion-tiny', but the model is 'tiny'"):
        P.check_against(p, get_config("tiny"))
    p.model["weights_sha256"] = "a" * 64
    with pytest.raises(P.ProfileError, match="calibrated on other weights"):
        P.check_against(p, CFG, "b" * 64)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-100, 100) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_validator_never_crashes_on_arbitrary_json(value):
    try:
        P.from_dict(value)
    except P.ProfileError:
        pass


step_fields = st.fixed_dictionaries({}, optional={
    "mode": st.sampled_from(["full", "reduce", "skip", "other"]), "cfg": st.booleans() | st.integers(0, 1),
    "keep": st.integers(-2, 80), "selector": st.sampled_from(list(P.SELECTORS) + ["x"]),
    "restore_from": st.integers(-1, 7), "restore_level": st.sampled_from(["block", "layer", "bad"]),
    "ranks": st.dictionaries(st.sampled_from(list(CFG.spec().linears) + ["head"]), st.integers(-1, 400), max_size=2),
    "relevance": st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=40)})


@settings(max_examples=300, deadline=None)
@given(st.lists(step_fields, min_size=7, max_size=7))
def test_validator_accepts_only_applicable_profiles(steps):
    d = paper_split().to_dict()
    d["steps"] = steps
    try:
        p = P.from_dict(d)
        P.check_against(p, CFG)
    except P.ProfileError as exc:
        assert "profile field" in str(exc)
        return
    for i, s in enumerate(p.steps):     # whatever passes is something the accelerator can run
        assert s.mode in P.MODES
        if s.mode == "reduce":
            assert 1 <= s.keep <= CFG.var.patch_nums[i] ** 2 and 0 <= s.restore_from < i
        for r in s.ranks.values():
            assert 1 <= r < CFG.var.embed_dim
