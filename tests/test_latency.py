"""The latency model calibration prices candidates with: features, the fit, and its cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fastervar.accel.presets import fastvar, paper_split, skipvar
from fastervar.calibrate import latency as L
from fastervar.models.loading import random_model
from fastervar.models.var.configs import get_config
from fastervar.profile import identity
from fastervar.timing import clock_context

CFG = get_config("fashion-tiny")


def test_features_follow_the_plan():
    base = L.step_features(CFG, identity(CFG), 4)
    skip, unguided = L.step_features(CFG, skipvar(CFG, "skip1"), 4), L.step_features(CFG, skipvar(CFG, "uncond3"), 4)
    assert base.shape == (7, len(L.FEATURES))
    assert (skip[6] == 0).all() and unguided[5, 1] < base[5, 1]        # skipped; unguided halves the matmuls
    assert unguided[5, 3] == base[5, 3]                                # ...but every position is still sampled
    block, layer = L.step_features(CFG, paper_split(CFG), 4), L.step_features(CFG, fastvar(CFG), 4)
    assert block[4, 4] > 0 and base[4, 4] == 0                         # restoration only on reduce steps
    lo, hi = fastvar(CFG).steps[4].layers
    assert 0 < hi - lo < CFG.var.depth                                 # FastVAR leaves the outer blocks intact
    assert layer[4, 4] == pytest.approx(block[4, 4] * (hi - lo) * 2)   # per reduced block, guided (2 rows per image)


def test_fit_recovers_known_costs_and_prices_profiles():
    truth = np.array([0.01, 2e-11, 3e-11, 5e-8, 3e-8])
    obs = [(L.step_features(CFG, p, 16), L.step_features(CFG, p, 16) @ truth) for p in L.probes(CFG)]
    lm = L.fit(obs, 16, 0.1, "test")
    assert np.allclose(lm.coefficients, truth, rtol=1e-4) and lm.fit_error < 1e-6
    base = identity(CFG)
    assert lm.speedup(CFG, base, base) == {"transformer": pytest.approx(1.0), "total": pytest.approx(1.0)}
    sp = lm.speedup(CFG, base, skipvar(CFG, "skip2"))
    want = (L.step_features(CFG, base, 16) @ truth).sum() / (L.step_features(CFG, skipvar(CFG, "skip2"), 16) @ truth).sum()
    assert sp["transformer"] == pytest.approx(want) and 1 < sp["total"] < sp["transformer"]


@pytest.fixture(scope="module")
def model():
    return random_model("tiny")


def test_latency_is_measured_once_then_read_from_the_cache(tmp_path, monkeypatch, model, capsys):
    calls = []

    def fake(model, labels, settings):
        calls.append(labels)
        return L.LatencyModel(len(labels), [0.01, 0, 0, 0, 0], 0.1, 0.0, "test")
    monkeypatch.setattr(L, "measure_latency", fake)
    first, reused = L.cached_latency(model, [1, 2], None, tmp_path, "k")
    again, reused_again = L.cached_latency(model, [1, 2], None, tmp_path, "k")
    assert (reused, reused_again) == (False, True) and again == first and len(calls) == 1
    (cache,) = tmp_path.glob("latency-*.json")
    data = json.loads(cache.read_text())
    assert data["payload"]["features"] == list(L.FEATURES)
    assert data["context"] == clock_context(model, 2) and data["context"]["batch"] == 2
    L.cached_latency(model, [1, 2], None, tmp_path, "other prompts")   # another key: measured anew
    assert len(calls) == 2
    cache.write_text("{not json")                                    # a corrupt cache is measured again
    L.cached_latency(model, [1, 2], None, tmp_path, "k")
    assert len(calls) == 3 and "warning: ignoring unreadable cache" in capsys.readouterr().err


def _measure(calls):
    def measure(p):
        calls.append(p.name)
        return (2.0 + len(calls), 1.5)
    return measure


def test_the_clock_measures_each_plan_once_and_remembers_it_across_runs(tmp_path, model):
    cfg = get_config("tiny")
    calls = []
    measure, context = _measure(calls), clock_context(model, 16)
    a, b = identity(cfg, "a"), fastvar(cfg)
    clock = L.cached_clock(measure, tmp_path, "k", context)
    assert clock(a) == (3.0, 1.5) and clock(a) == (3.0, 1.5) and clock(b) == (4.0, 1.5)
    assert calls == ["a", fastvar(cfg).name]
    again = L.cached_clock(measure, tmp_path, "k", context)          # a rerun with the same cache: no new timing
    assert again(identity(cfg, "renamed")) == (3.0, 1.5) and len(calls) == 2
    assert L.cached_clock(measure, tmp_path, "other", context)(a) == (5.0, 1.5)   # another key measures afresh


def test_a_speed_cache_made_at_one_batch_size_is_not_used_at_another(tmp_path, model):
    cfg = get_config("tiny")
    calls = []
    measure = _measure(calls)
    at16 = L.cached_clock(measure, tmp_path, "k", clock_context(model, 16))
    assert at16(identity(cfg, "a")) == (3.0, 1.5)
    at64 = L.cached_clock(measure, tmp_path, "k", clock_context(model, 64))
    assert at64(identity(cfg, "a")) == (4.0, 1.5) and len(calls) == 2      # timed again at batch 64
    assert L.cached_clock(measure, tmp_path, "k", clock_context(model, 16))(identity(cfg, "a")) == (3.0, 1.5)
    # a cache file holding another context (say, copied from a GPU machine) is measured anew, with a warning
    (path16,) = [p for p in tmp_path.glob("speed-*.json") if json.loads(p.read_text())["context"]["batch"] == 16]
    foreign = json.loads(path16.read_text())
    foreign["context"]["device"] = "cuda: NVIDIA H100"
    path16.write_text(json.dumps(foreign))
    assert L.cached_clock(measure, tmp_path, "k", clock_context(model, 16))(identity(cfg, "a")) == (5.0, 1.5)


@pytest.mark.parametrize("damage", ["truncated", "wrong entries"])
def test_a_damaged_speed_cache_is_measured_again_with_a_warning(tmp_path, model, capsys, damage):
    cfg = get_config("tiny")
    calls = []
    context = clock_context(model, 16)
    L.cached_clock(_measure(calls), tmp_path, "k", context)(identity(cfg, "a"))
    (path,) = tmp_path.glob("speed-*.json")
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    else:
        data = json.loads(path.read_text())
        data["payload"] = {plan: "fast" for plan in data["payload"]}
        path.write_text(json.dumps(data))
    assert L.cached_clock(_measure(calls), tmp_path, "k", context)(identity(cfg, "a")) == (4.0, 1.5)
    err = capsys.readouterr().err
    assert len(calls) == 2 and "warning:" in err and len(err.strip().splitlines()) == 1
