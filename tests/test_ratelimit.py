"""RateLimiter (GCRA), FixedWindowLimiter, SlidingWindowLimiter.

The algorithms run on a simulated clock, so every expectation is exact; the
multi-process tests use the real clock with limits so slow that nothing
refills during a test, so the number allowed is exact too.
"""
from __future__ import annotations

import multiprocessing
import time
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shmdict
from shmdict.ratelimit.limiters import SETTINGS_KEY
from shmdict import ratelimit
from shmdict.ratelimit import (
    NS,
    FixedWindowLimiter,
    RateLimiter,
    RateLimitResult,
    SimulatedClock,
    SlidingWindowLimiter,
    gcra_step,
)

HYPOTHESIS = settings(max_examples=60, deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def clock():
    return SimulatedClock()


# ------------------------------------------------------------ GCRA basics
def test_burst_then_one_per_interval(name, clock):
    limiter = RateLimiter(name, rate=10, period=1.0, burst=3, clock=clock)
    assert limiter.emission_interval_ns == 100_000_000
    results = [limiter.hit("k") for _ in range(4)]
    assert [r.allowed for r in results] == [True, True, True, False]
    assert [r.remaining for r in results] == [2, 1, 0, 0]
    assert results[0] == RateLimitResult(True, 3, 2, 0.0, 0.1)
    refused = results[3]
    assert not refused and refused.retry_after == pytest.approx(0.1)
    assert refused.reset_after == pytest.approx(0.3)
    clock.advance(ns=100_000_000 - 1)
    assert not limiter.hit("k").allowed          # one nanosecond too early
    clock.advance(ns=1)
    assert limiter.hit("k").allowed              # exactly retry_after later
    assert not limiter.hit("k").allowed
    clock.advance(1.0)
    assert [limiter.hit("k").allowed for _ in range(4)] == [True, True, True, False]


def test_refused_hit_spends_nothing(name, clock):
    limiter = RateLimiter(name, rate=1, burst=1, clock=clock)
    assert limiter.hit("k")
    stored = limiter.table.read("k")[0]
    for _ in range(5):
        assert not limiter.hit("k")
    assert limiter.table.read("k")[0] == stored
    clock.advance(1.0)
    assert limiter.hit("k")


def test_keys_are_independent_and_default_burst_is_rate(name, clock):
    limiter = RateLimiter(name, rate=5, clock=clock)
    assert limiter.burst == 5
    assert sum(limiter.allow("a") for _ in range(8)) == 5
    assert sum(limiter.allow(("tenant", 7)) for _ in range(8)) == 5
    assert sum(limiter.allow(b"a") for _ in range(8)) == 5   # b"a" is not "a"


def test_cost(name, clock):
    limiter = RateLimiter(name, rate=10, burst=10, clock=clock)
    assert limiter.hit("k", cost=7).remaining == 3
    refused = limiter.hit("k", cost=4)
    assert not refused and refused.retry_after == pytest.approx(0.1)
    assert limiter.hit("k", cost=3).remaining == 0
    assert not limiter.allow("k", cost=1)
    with pytest.raises(ValueError, match="exceeds the limit's burst"):
        limiter.hit("k", cost=11)
    with pytest.raises(ValueError):
        limiter.allow("k", cost=-1)
    with pytest.raises(TypeError):
        limiter.hit("k", cost=1.5)


def test_peek_and_reset(name, clock):
    limiter = RateLimiter(name, rate=10, burst=2, clock=clock)
    fresh = limiter.peek("k")
    assert fresh == RateLimitResult(True, 2, 2, 0.0, 0.0)
    assert "k" not in limiter.table                      # peek creates nothing
    limiter.hit("k")
    limiter.hit("k")
    full = limiter.peek("k")
    assert not full and full.remaining == 0
    assert full.retry_after == pytest.approx(0.1) and full.reset_after == pytest.approx(0.2)
    assert limiter.peek("k") == full                      # peek spends nothing
    limiter.reset("k")
    assert limiter.peek("k").remaining == 2
    assert limiter.hit("k").allowed


def test_bad_arguments(name):
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            RateLimiter(name, rate=bad)
        with pytest.raises(ValueError):
            RateLimiter(name, rate=1, period=bad)
    with pytest.raises(TypeError):
        RateLimiter(name, rate="10")
    with pytest.raises(TypeError):
        RateLimiter(name, rate=True)
    with pytest.raises(ValueError):
        RateLimiter(name, rate=1, burst=0)
    with pytest.raises(TypeError):
        RateLimiter(name, rate=1, burst=2.0)
    with pytest.raises(TypeError):
        RateLimiter(name, rate=1, clock=123)
    with pytest.raises(ValueError):
        RateLimiter("bad name!", rate=1)
    limiter = RateLimiter(name, rate=1)
    with pytest.raises(TypeError):
        limiter.hit(1.5)
    with pytest.raises(shmdict.KeyTooLong):
        limiter.hit("x" * 100)


def test_state_is_a_counter_table_named_name(name, clock):
    limiter = RateLimiter(name, rate=1, clock=clock)
    limiter.hit("k")
    table = shmdict.open(name, shmdict.Counter(), capacity=10_001)  # + the settings' slot
    assert table.read("k") == (clock() + limiter.emission_interval_ns, True)
    table.close()
    limiter.close()
    assert shmdict.unlink(name)
    fresh = RateLimiter(name, rate=1, clock=clock)
    assert list(fresh.keys()) == []


def test_interval_is_rounded_up_never_down():
    assert ratelimit.emission_interval_ns(3, 1.0) == 333_333_334
    assert ratelimit.emission_interval_ns(100, 1.0) == 10_000_000
    assert ratelimit.emission_interval_ns(1, 3600) == 3600 * NS


# --------------------------------------------- GCRA properties (simulated)
arrivals = st.lists(st.tuples(st.integers(0, 3 * NS // 10), st.integers(1, 4)),
                    min_size=1, max_size=150)


@HYPOTHESIS
@given(rate=st.floats(0.5, 1000), period=st.sampled_from([0.1, 1.0, 7.0]),
       burst=st.integers(4, 20), stream=arrivals)
def test_never_more_than_rate_times_t_plus_burst(name, rate, period, burst, stream):
    shmdict.unlink(name)
    clock = SimulatedClock()
    limiter = RateLimiter(name, rate=rate, period=period, burst=burst, clock=clock)
    allowed = []                        # (time, cost) of every allowed hit
    for gap, cost in stream:
        clock.advance(ns=gap)
        if limiter.allow("k", cost):
            allowed.append((clock(), cost))
    per_ns = Fraction(rate) / (Fraction(period) * NS)
    for i in range(len(allowed)):
        spent = 0
        for j in range(i, len(allowed)):
            spent += allowed[j][1]
            assert spent <= burst + (allowed[j][0] - allowed[i][0]) * per_ns
    limiter.unlink()


@HYPOTHESIS
@given(rate=st.floats(0.01, 10_000), burst=st.integers(1, 5),
       slack=st.lists(st.integers(0, 10**6), min_size=1, max_size=100),
       history=st.integers(0, 5))
def test_a_stream_at_the_rate_is_never_refused(name, rate, burst, slack, history):
    shmdict.unlink(name)
    clock = SimulatedClock()
    limiter = RateLimiter(name, rate=rate, burst=burst, clock=clock)
    interval = limiter.emission_interval_ns
    assert interval >= NS / rate
    for _ in range(min(history, burst)):    # some earlier burst, then a pause
        limiter.hit("k")
    clock.advance(ns=burst * interval)
    for extra in slack:                     # one hit per interval, or slower
        assert limiter.hit("k").allowed
        clock.advance(ns=interval + extra)
    limiter.unlink()


@HYPOTHESIS
@given(ops=st.lists(st.tuples(st.sampled_from(["hit", "allow", "peek", "reset"]),
                              st.sampled_from(["a", "b"]), st.integers(0, 3),
                              st.integers(0, NS // 5)), max_size=80))
def test_hit_allow_and_peek_follow_the_reference_step(name, ops):
    """The table-backed limiter matches gcra_step on a plain dict."""
    shmdict.unlink(name)
    clock = SimulatedClock()
    limiter = RateLimiter(name, rate=10, burst=3, clock=clock)
    interval, tolerance = limiter.emission_interval_ns, limiter.tolerance_ns
    model = {}
    for op, key, cost, gap in ops:
        clock.advance(ns=gap)
        tat = model.get(key, 0)
        new_tat, allowed, remaining, retry, reset = gcra_step(
            tat, clock(), interval, tolerance, 0 if op == "peek" else cost)
        if op == "hit":
            assert limiter.hit(key, cost) == (allowed, 3, remaining, retry / NS, reset / NS)
            model[key] = new_tat
        elif op == "allow":
            assert limiter.allow(key, cost) is allowed
            model[key] = new_tat
        elif op == "peek":
            peek = limiter.peek(key)
            assert (peek.remaining, peek.reset_after) == (remaining, reset / NS)
            assert peek.allowed == (remaining >= 1)
        else:
            limiter.reset(key)
            model.pop(key, None)
    limiter.unlink()


# --------------------------------------------------- backend contract
class _RemoteTable:
    """A stand-in for a backend table that computes GCRA on its server."""

    def __init__(self) -> None:
        self.calls = []

    def _gcra(self, key, emission_interval_ns, tolerance_ns, cost):
        self.calls.append((key, emission_interval_ns, tolerance_ns, cost))
        return (cost <= 1, 4, 0 if cost <= 1 else 2 * NS, NS // 2)

    def add(self, key, n=1):
        raise AssertionError("the limiter must not run its local loop")

    read = add

    def cas(self, key, old, new, set_on_not_exists=False):
        assert key == SETTINGS_KEY, "the limiter must not run its local loop"
        return True                     # its settings, recorded once at creation


def test_a_table_with_gcra_runs_the_step_remotely(monkeypatch):
    remote = _RemoteTable()
    opened = []

    def fake_open(name, layout, capacity, key_size, backend=None):
        opened.append((name, layout, capacity, key_size, backend))
        return remote

    monkeypatch.setattr(shmdict.api, "open", fake_open)
    limiter = RateLimiter("remote.limits", rate=10, burst=5, capacity=500, key_size=32,
                          backend="redis://somewhere/0")
    assert opened == [("remote.limits", shmdict.Counter(), 501, 32, "redis://somewhere/0")]
    assert limiter.hit("k") == RateLimitResult(True, 5, 4, 0.0, 0.5)
    assert limiter.hit("k", cost=2) == RateLimitResult(False, 5, 4, 2.0, 0.5)
    assert limiter.allow("k") is True
    peek = limiter.peek("k")
    assert remote.calls == [("k", 100_000_000, 500_000_000, 1),
                            ("k", 100_000_000, 500_000_000, 2),
                            ("k", 100_000_000, 500_000_000, 1),
                            ("k", 100_000_000, 500_000_000, 0)]
    assert peek.allowed and peek.remaining == 4


# ------------------------------------------------------------- expiry
def test_full_table_sweeps_idle_keys(name, clock):
    limiter = RateLimiter(name, rate=1, burst=2, capacity=16, clock=clock)
    for i in range(16):
        assert limiter.hit(f"client-{i}")
    with pytest.raises(shmdict.TableFull):         # every key still has history
        limiter.hit("newcomer")
    clock.advance(0.5)
    assert limiter.hit("client-0")                 # keeps client-0 live past t+1 s
    clock.advance(0.6)                             # the others are idle now
    assert limiter.hit("newcomer")
    assert "client-0" in limiter.table and "client-1" not in limiter.table
    assert sorted(limiter.keys()) == ["client-0", "newcomer"]
    # client-0's history survived the sweep: its burst is not back yet.
    assert limiter.peek("client-0").remaining == 1


def test_sweep_puts_back_a_hit_that_slipped_in(name, clock):
    """A hit between the sweep's zeroing and its delete is not forgotten."""
    limiter = RateLimiter(name, rate=1, burst=1, clock=clock)
    limiter.hit("k")
    clock.advance(2.0)                   # k is idle
    table = limiter.table
    real_delete = table.load_and_delete

    def delete_after_a_hit(key):
        assert limiter.hit(key)          # another process, right in the gap
        return real_delete(key)

    table.load_and_delete = delete_after_a_hit
    assert limiter.sweep() == 0
    table.load_and_delete = real_delete
    assert not limiter.hit("k")          # the slipped-in hit still counts


# ---------------------------------------------------- fixed window
def test_fixed_window(name, clock):
    limiter = FixedWindowLimiter(name, limit=3, period=10, clock=clock)
    assert [limiter.hit("k").remaining for _ in range(3)] == [2, 1, 0]
    clock.advance(4)
    refused = limiter.hit("k")
    assert not refused and refused.retry_after == pytest.approx(6.0)
    assert not limiter.peek("k")
    clock.advance(6)
    assert limiter.peek("k").remaining == 3
    assert limiter.hit("k", cost=3) and not limiter.hit("k")
    assert limiter.sweep() == 0
    clock.advance(10)
    assert limiter.sweep() == 1 and "k" not in limiter.table
    with pytest.raises(ValueError):
        FixedWindowLimiter(name, limit=0)
    with pytest.raises(ValueError):
        limiter.hit("k", cost=4)


# -------------------------------------------------- sliding window
def test_sliding_window_weights_the_previous_window(name, clock):
    clock.now_ns = 100 * 10 * NS           # the start of a 10 s window
    limiter = SlidingWindowLimiter(name, limit=10, period=10, clock=clock)
    assert sum(limiter.allow("k") for _ in range(12)) == 10
    clock.advance(10)                      # next window, previous = 10, weight 1
    assert not limiter.hit("k")
    clock.advance(3)                       # weight 0.7: floor(7) + 0 -> 3 fit
    assert sum(limiter.allow("k") for _ in range(5)) == 3
    refused = limiter.hit("k")             # 7 + 3 = 10: wait until floor(prev) is 6
    assert not refused
    clock.advance(refused.retry_after)
    assert limiter.hit("k")
    clock.advance(20)
    assert limiter.peek("k").remaining == 10


@HYPOTHESIS
@given(stream=arrivals)
def test_sliding_window_never_exceeds_limit_per_window(name, stream):
    """Within each aligned window, at most `limit` hits pass, and over any
    two consecutive windows at most 2 * limit."""
    shmdict.unlink(name)
    clock = SimulatedClock()
    limiter = SlidingWindowLimiter(name, limit=6, period=1.0, clock=clock)
    per_window = {}
    for gap, cost in stream:
        clock.advance(ns=gap)
        result = limiter.hit("k", cost)
        if result:
            index = clock() // NS
            per_window[index] = per_window.get(index, 0) + cost
        if cost <= 6 and not result:
            before = clock()
            clock.advance(result.retry_after)
            assert limiter.peek("k").allowed
            clock.now_ns = before + round(result.retry_after * NS)
    assert all(count <= 6 for count in per_window.values())
    for index, count in per_window.items():
        assert count + per_window.get(index + 1, 0) <= 12
    limiter.unlink()


# ------------------------------------------------ real processes
def _hammer(name, kind, keys, hits, frozen_ns, barrier, queue):
    if kind == "gcra":
        limiter = RateLimiter(name, rate=1, period=3600, burst=25)
    elif kind == "fixed":
        limiter = FixedWindowLimiter(name, limit=25, period=3600)
    else:
        frozen = SimulatedClock(frozen_ns)   # the same instant in every process
        limiter = SlidingWindowLimiter(name, limit=25, period=3600, clock=frozen)
    barrier.wait()
    allowed = {key: 0 for key in keys}
    for i in range(hits):
        key = keys[i % len(keys)]
        allowed[key] += limiter.allow(key) if kind == "gcra" else bool(limiter.hit(key))
    queue.put(allowed)


@pytest.mark.parametrize("kind", ["gcra", "fixed", "sliding"])
def test_processes_never_get_more_than_the_limit(name, kind):
    """4 processes hammer 3 keys: exactly 25 hits pass per key, in total."""
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(4), ctx.Queue()
    keys = ["a", "b", ("c", 1)]
    procs = [ctx.Process(target=_hammer, args=(name, kind, keys, 120, time.monotonic_ns(), barrier, queue))
             for _ in range(4)]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    for key in keys:
        assert sum(result[key] for result in results) == 25


def _clock_reading(queue):
    queue.put(ratelimit.monotonic_clock())


def test_the_default_clock_is_shared_by_processes():
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    before = time.monotonic_ns()
    proc = ctx.Process(target=_clock_reading, args=(queue,))
    proc.start()
    theirs = queue.get(timeout=60)
    proc.join()
    assert before <= theirs <= time.monotonic_ns()


# ------------------------------------------------------ on the Redis backend
def _redis_hammer(name, url, barrier, queue):
    limiter = RateLimiter(name, rate=1, period=3600, burst=15, backend=url)
    barrier.wait()
    queue.put(sum(limiter.allow("k") for _ in range(30)))


def test_on_redis_the_server_runs_the_step(name, redis_url):
    """backend=redis://: hits go through the table's _gcra, on the server's clock;
    3 processes (standing in for 3 hosts) share one limit exactly."""
    limiter = RateLimiter(name, rate=1, period=3600, burst=15, backend=redis_url)
    try:
        assert limiter._remote is not None
        assert limiter.peek("k") == RateLimitResult(True, 15, 15, 0.0, 0.0)
        ctx = multiprocessing.get_context("fork")
        barrier, queue = ctx.Barrier(3), ctx.Queue()
        procs = [ctx.Process(target=_redis_hammer, args=(name, redis_url, barrier, queue))
                 for _ in range(3)]
        for proc in procs:
            proc.start()
        assert sum(queue.get(timeout=60) for _ in procs) == 15
        for proc in procs:
            proc.join(30)
        refused = limiter.hit("k")
        assert not refused and refused.remaining == 0
        assert refused.retry_after == pytest.approx(3600, abs=5)
        limiter.reset("k")
        assert limiter.hit("k", cost=15).allowed
    finally:
        limiter.close()
        shmdict.unlink(name, backend=redis_url)


def test_the_rate_is_part_of_the_tables_identity(name, clock):
    """Two processes opening one name with different rates: the second is refused."""
    first = RateLimiter(name, rate=10, period=1.0, clock=clock)
    same = RateLimiter(name, rate=10, period=1.0, clock=clock)   # same settings: fine
    with pytest.raises(shmdict.LayoutMismatch, match="other settings"):
        RateLimiter(name, rate=20, period=1.0, clock=clock)
    with pytest.raises(shmdict.LayoutMismatch):
        RateLimiter(name, rate=10, period=1.0, burst=3, clock=clock)
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_open_with_rate, args=(name, 5))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 3
    first.hit("k")
    assert list(same.keys()) == ["k"]


def _open_with_rate(name, rate):
    try:
        RateLimiter(name, rate=rate)
    except shmdict.LayoutMismatch:
        raise SystemExit(3)
