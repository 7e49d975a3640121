"""The C fast path of RateLimiter (``Core.gcra``) against the reference step.

With the default clock, a shared-memory limiter runs each hit in C, reading
CLOCK_MONOTONIC there.  That clock is ``time.monotonic_ns``, so a hit's
``now`` is bracketed by reading it just before and after, and every output
must be the reference step's for some ``now`` in that bracket.
"""
from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import shmdict
from shmdict.ratelimit import RateLimiter, gcra_step


def test_default_clock_uses_the_core(name):
    limiter = RateLimiter(name, rate=1, burst=2)
    assert limiter._remote == limiter.table._core.gcra
    limiter.close()


@settings(max_examples=40, deadline=None)
@given(burst=st.integers(1, 5), rate=st.sampled_from([0.001, 1.0, 1000.0, 1e6]),
       costs=st.lists(st.integers(0, 5), min_size=1, max_size=12))
def test_core_step_matches_the_reference(burst, rate, costs):
    name = f"test.gcra.{time.monotonic_ns()}"
    limiter = RateLimiter(name, rate=rate, burst=burst)
    interval, tolerance = limiter.emission_interval_ns, limiter.tolerance_ns
    try:
        for cost in costs:
            cost = min(cost, burst)
            tat = limiter.table.read("k")[0]
            t0 = time.monotonic_ns()
            allowed, remaining, retry_ns, reset_ns = limiter._remote("k", interval, tolerance,
                                                                     cost)
            t1 = time.monotonic_ns()
            after = limiter.table.read("k")[0]
            t2 = time.monotonic_ns()
            candidates = [gcra_step(tat, now, interval, tolerance, cost)
                          for now in (t0, t1)]
            assert allowed in {c[1] for c in candidates}
            # The outputs are monotone in `now`: they lie between the two ends.
            for got, index in ((remaining, 2), (retry_ns, 3), (reset_ns, 4), (after, 0)):
                low, high = sorted(c[index] for c in candidates)
                if index == 0 and got == 0 and high <= t2:
                    continue        # the key expired (its TAT passed) before the read
                if allowed == candidates[0][1] == candidates[1][1]:
                    assert low <= got <= high, (index, got, low, high)
            if not allowed or cost == 0:
                # A refused hit or a peek spends nothing (the key may have
                # expired by the read, when its TAT had passed).
                assert after == tat or (after == 0 and tat <= t2)
    finally:
        limiter.unlink()


def test_core_step_burst_then_refusal(name):
    limiter = RateLimiter(name, rate=1, period=3600, burst=3)   # no refill during the test
    results = [limiter.hit("k") for _ in range(5)]
    assert [r.allowed for r in results] == [True, True, True, False, False]
    assert [r.remaining for r in results[:3]] == [2, 1, 0]
    assert results[3].retry_after > 3500
    assert limiter.allow("other") and limiter.peek("other").remaining == 2
    with pytest.raises(TypeError):
        limiter.hit(1.5)
    limiter.close()


def test_core_step_sweeps_a_full_table(name):
    limiter = RateLimiter(name, rate=1e9, burst=1, capacity=4)   # idle after 1 ns
    for i in range(4):
        assert limiter.hit(("client", i)).allowed
    time.sleep(0.001)
    assert limiter.hit("newcomer").allowed            # swept the idle ones to fit
    held = RateLimiter(name + ".held", rate=1, period=3600, burst=1, capacity=2)
    held.hit("a"), held.hit("b")
    with pytest.raises(shmdict.TableFull):
        held.hit("c")
    held.unlink()
    limiter.close()


def test_core_hit_validates_cost(name):
    limiter = RateLimiter(name, rate=1, period=3600, burst=3)
    with pytest.raises(ValueError, match="exceeds"):
        limiter.hit("k", 4)
    with pytest.raises(ValueError):
        limiter.hit("k", -1)
    with pytest.raises(TypeError):
        limiter.hit("k", 1.0)
    assert "k" not in limiter.table                  # nothing was spent or created
    assert limiter.hit("k", 3).allowed and not limiter.hit("k", 1).allowed
    limiter.close()
