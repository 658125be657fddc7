"""The one timing harness: every batch shape that will be timed runs once before the clock starts,
runners are interleaved batch by batch, and ratios are taken pass by pass."""

from __future__ import annotations

import numpy as np

from fastervar import timing


def _fake_clock(monkeypatch) -> dict:
    clock = {"t": 0.0, "reads": 0}

    def perf_counter() -> float:
        clock["reads"] += 1
        clock["t"] += 1.0
        return clock["t"]
    monkeypatch.setattr(timing.time, "perf_counter", perf_counter)
    return clock


def _runner(name: str, calls: list, clock: dict):
    def run(batch: timing.Batch) -> timing.Run:
        calls.append((name, len(batch.labels), clock["reads"]))
        return timing.Run(np.zeros((len(batch.labels), 1, 1, 3), np.uint8), [], [], 0.0)
    return run


def test_every_timed_batch_shape_is_warm_before_timing_starts(monkeypatch):
    clock = _fake_clock(monkeypatch)
    calls: list = []
    work = timing.batches(list(range(100)), seed=0, batch_size=16)      # six batches of 16, a ragged one of 4
    assert [len(b.labels) for b in work] == [16] * 6 + [4]
    timing.interleaved({"a": _runner("a", calls, clock), "b": _runner("b", calls, clock)}, work, progress=False)
    warm = [(name, size) for name, size, reads in calls if reads == 0]
    timed = [(name, size) for name, size, reads in calls if reads > 0]
    assert sorted(warm) == [("a", 4), ("a", 16), ("b", 4), ("b", 16)]    # each runner, each shape, once
    assert sorted(set(timed)) == sorted(warm) and len(timed) == 2 * len(work)
    # interleaved: batch by batch, every runner in turn
    assert [name for name, _ in timed] == ["a", "b"] * len(work)


def test_speedup_is_the_median_of_per_pass_ratios():
    def runs(*walls):
        return [[timing.Run(np.zeros((1, 1, 1, 3), np.uint8), [], [w], 0.0, wall_seconds=w)] for w in walls]
    assert timing.speedup(runs(4.0, 6.0, 100.0), runs(2.0, 2.0, 2.0)) == 3.0
    assert timing.speedup(runs(4.0, 6.0, 100.0), runs(2.0, 2.0, 2.0), "steps") == 3.0
