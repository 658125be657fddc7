"""The candidate search: knobs that build the same steps run once, and both starting points are explored."""

from __future__ import annotations

import numpy as np

from fastervar.calibrate.measure import measure
from fastervar.calibrate.run import verify_speed
from fastervar.calibrate.search import (
    KEEP_RATIOS,
    Candidate,
    Knobs,
    Searcher,
    _unmet_message,
    build_profile,
    closest,
    meets,
    reachable_boundary,
    search,
    stage_split,
)
from fastervar.models.loading import random_model
from fastervar.models.sampling import SamplingSettings


def test_search_shares_equal_plans_and_explores_skipping_the_last_step():
    model = random_model("tiny")
    settings = SamplingSettings()
    m = measure(model, [0, 3], [0], settings, judge=None, batch_size=2)
    runs = []
    s = Searcher(model, m, stage_split(m), [0, 3], [0], settings, 2, None, on_candidate=runs.append)
    last = model.num_steps - 1
    a = s.evaluate(Knobs(boundary=last, keep=0.3, selector="relevance", skip_last=True))
    b = s.evaluate(Knobs(boundary=last, keep=0.8, selector="grid", skip_last=True, drop_cfg=False))
    assert a is b and len(runs) == 1              # only the last step is touched, and it is skipped: one plan
    assert a.profile.steps[last].mode == "skip" and a.speedup > 1
    chosen, tried = search(s, target_speedup=1.05, max_drop=None)
    assert chosen.meets and chosen.speedup >= 1.05
    assert len(tried) == len(runs)                # every distinct plan is listed once
    assert any(c.knobs.skip_last and c.knobs.boundary == last for c in tried)
    assert any(not c.knobs.skip_last for c in tried)


def test_keeping_every_token_only_drops_guidance():
    model = random_model("tiny")
    settings = SamplingSettings()
    m = measure(model, [0, 3], [0], settings, judge=None, batch_size=2)
    s = Searcher(model, m, stage_split(m), [0, 3], [0], settings, 2, None)
    last = model.num_steps - 1
    c = s.evaluate(Knobs(boundary=last - 2, keep=1.0, selector="grid"))
    assert [(p.mode, p.cfg) for p in c.profile.steps[last - 2:]] == [("full", False)] * 3
    assert all(p.mode == "full" and p.cfg for p in c.profile.steps[:last - 2])
    assert c.speedup > 1 and 0 < c.ssim < 1          # one batch branch fewer, and other images


def _cand(speed: float, ssim: float, acc: float | None) -> Candidate:
    return Candidate(None, None, speed, speed, ssim, 20.0, acc)


def test_an_unmet_target_names_the_nearest_candidate_on_each_side():
    tried = [_cand(1.5, 0.76, 0.75), _cand(1.8, 0.79, 0.65), _cand(2.0, 0.70, 0.55), _cand(1.1, 0.93, 0.86)]
    msg = _unmet_message(tried, 1.6, None, 0.93, 0.23)
    assert msg.startswith("no candidate meets the target (speedup 1.6x with class accuracy >= 0.700); ")
    assert "fastest within the accuracy limit: predicted speedup 1.50x at paired SSIM 0.760, class accuracy 0.750" in msg
    assert "most accurate at >= 1.6x: predicted speedup 1.80x" in msg
    # without a judge there is only one side
    plain = [_cand(c.speedup, c.ssim, None) for c in tried]
    assert _unmet_message(plain, 40, None, None, 0.02).endswith("closest: predicted speedup 2.00x at paired SSIM 0.700")


def test_a_target_beyond_the_measured_refine_steps_moves_the_boundary_earlier():
    model = random_model("tiny")
    settings = SamplingSettings()
    m = measure(model, [0, 3], [0], settings, judge=None, batch_size=2)
    last = model.num_steps - 1
    stages = {"semantic": list(range(last)), "refine": [last]}     # the split leaves one refine step
    s = Searcher(model, m, stages, [0, 3], [0], settings, 2, None)

    def fastest(b: int) -> float:
        k = Knobs(boundary=b, keep=KEEP_RATIOS[0], selector="grid")
        return s.predict(build_profile(model, m, stages, k, "probe"))[0]["transformer"]

    target = (fastest(last - 1) + fastest(2)) / 2
    b = reachable_boundary(s, last - 1, target)
    assert 2 <= b < last - 1
    assert fastest(b) >= target > fastest(b + 1)
    chosen, _ = search(s, target_speedup=target, max_drop=None)
    assert chosen.meets and chosen.speedup >= target           # out of reach from the measured split alone


class _ChannelJudge:
    """A stand-in judge: per-image channel means and spreads as features, every image class 0."""

    def features_and_classes(self, images):
        x = np.asarray(images, dtype=np.float64)
        return np.concatenate([x.mean((1, 2)), x.std((1, 2))], axis=1), np.zeros(len(x), dtype=int)


def test_with_a_judge_the_speed_target_weighs_ssim_and_feature_shift():
    model = random_model("tiny")
    settings = SamplingSettings()
    m = measure(model, [0, 3], [0], settings, judge=None, batch_size=2)
    s = Searcher(model, m, stage_split(m), [0, 3], [0], settings, 2, _ChannelJudge())
    chosen, tried = search(s, target_speedup=1.05, max_drop=None)
    meeting = [c for c in tried if c.meets]
    assert all(c.shift is not None and c.shift >= 0 for c in tried)
    assert chosen is closest(meeting)
    # nothing that meets the target is closer on both counts
    assert not any(c.ssim > chosen.ssim and c.shift < chosen.shift for c in meeting)
    identity_like = s.score(s.base_profile)
    assert identity_like.shift == 0.0 and identity_like.ssim == 1.0


def _judged(ssim: float, shift: float) -> Candidate:
    return Candidate(None, None, 2.0, 2.0, ssim, 20.0, 0.9, shift)


def test_closest_is_the_lowest_rank_sum_then_the_higher_ssim():
    a, b, c, x = _judged(0.90, 0.050), _judged(0.85, 0.010), _judged(0.89, 0.020), _judged(0.80, 0.040)
    # ranks (SSIM + shift): a 0+3, b 2+0, c 1+1, x 3+2; b and c tie, c has the higher SSIM
    assert closest([a, b, c, x]) is c
    d = _judged(0.95, 0.005)
    assert closest([a, b, c, x, d]) is d           # best on both
    e, f = _judged(0.90, 0.03), _judged(0.80, 0.01)
    assert closest([e, f]) is e                    # a tie in rank sums goes to SSIM
    assert closest([]) is None
    # without a judge, SSIM alone
    assert closest([_cand(2.0, 0.7, None), _cand(2.0, 0.8, None)]).ssim == 0.8


def _priced(speed: float, ssim: float, shift: float, meets: bool = True) -> Candidate:
    c = Candidate(None, f"p{speed}", speed, speed, ssim, 20.0, 0.9, shift)
    c.meets = meets
    return c


def test_a_choice_that_measures_short_of_the_target_is_replaced_by_a_faster_one():
    chosen = _priced(2.55, 0.84, 0.05)
    faster = _priced(2.80, 0.80, 0.05)
    too_slow = _priced(2.60, 0.83, 0.04)
    unmet = _priced(3.00, 0.90, 0.01, meets=False)            # fails the accuracy limit: never chosen
    tried = [chosen, faster, too_slow, unmet]
    clock = {"p2.55": (2.40, 2.2), "p2.8": (2.62, 2.4), "p2.6": (2.45, 2.25)}
    got, steps, total = verify_speed(lambda p: clock[p], chosen, tried, 2.5)
    # the model over-priced by 2.55/2.40, so it needs a candidate priced at >= 2.66x
    assert got is faster and (steps, total) == (2.62, 2.4)
    assert verify_speed(lambda p: clock[p], faster, tried, 2.5)[0] is faster     # measured fast enough: kept
    # nothing faster keeps the limits: the choice stands, measured as it is (and a warning says so)
    assert verify_speed(lambda p: clock[p], chosen, [chosen, too_slow, unmet], 2.5) == (chosen, 2.40, 2.2)


def test_matching_a_peer_requires_being_as_close_as_it_on_both_measures():
    rival = _priced(2.0, 0.85, 0.05)
    assert meets(_priced(2.0, 0.86, 0.04), 1.8, None, None, 0.02, rival)
    assert not meets(_priced(2.0, 0.84, 0.01), 1.8, None, None, 0.02, rival)     # worse SSIM
    assert not meets(_priced(2.0, 0.90, 0.06), 1.8, None, None, 0.02, rival)     # worse shift
    assert meets(_priced(2.0, 0.84, 0.01), 1.8, None, None, 0.02)                # no rival: speed decides
