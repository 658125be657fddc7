"""The candidate search: knobs that build the same steps run once, and both starting points are explored."""

from __future__ import annotations

from fastervar.calibrate.measure import measure
from fastervar.calibrate.search import Knobs, Searcher, search, stage_split
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
