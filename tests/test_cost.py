"""The analytic cost model agrees with hand arithmetic and responds to every profile knob."""

from __future__ import annotations

import pytest

from fastervar import profile as P
from fastervar.accel.cost import decoder_flops, predicted_speedup, step_costs
from fastervar.models.var.configs import get_config


def test_var_d16_matches_the_published_arithmetic():
    cfg = get_config("d16")
    costs = step_costs(cfg, P.identity(cfg), batch=1)
    assert sum(c.flops_linear for c in costs) / 1e12 == pytest.approx(0.55, abs=0.01)
    assert sum(c.flops_attention for c in costs) / 1e12 == pytest.approx(0.04, abs=0.005)
    assert decoder_flops(cfg) / 1e12 == pytest.approx(0.39, abs=0.01)
    assert costs[-1].flops / sum(c.flops for c in costs) == pytest.approx(0.39, abs=0.01)
    assert costs[-1].kv_len == 680 and costs[-1].batch == 2


def test_each_knob_lowers_the_cost():
    cfg = get_config("fashion-tiny")
    base = P.identity(cfg)
    variants = {
        "no_cfg": P.StepPlan(mode="full", cfg=False),
        "reduce": P.StepPlan(mode="reduce", cfg=True, keep=16, selector="grid", restore_from=5),
        "rank": P.StepPlan(mode="full", cfg=True, ranks={"ffn.fc1": 8, "ffn.fc2": 8}),
        "skip": P.StepPlan(mode="skip", cfg=True),
    }
    total = sum(c.flops for c in step_costs(cfg, base, 4))
    for name, plan in variants.items():
        p = P.identity(cfg)
        p.steps[6] = plan
        cost = sum(c.flops for c in step_costs(cfg, p, 4))
        assert cost < total, name
        sp = predicted_speedup(cfg, base, p, 4)
        assert sp["transformer"] > sp["total"] > 1.0, name
    assert predicted_speedup(cfg, base, base, 4)["transformer"] == pytest.approx(1.0)


def test_cost_scales_with_batch():
    cfg = get_config("tiny")
    one = sum(c.flops for c in step_costs(cfg, P.identity(cfg), 1))
    four = sum(c.flops for c in step_costs(cfg, P.identity(cfg), 4))
    assert four == pytest.approx(4 * one)
