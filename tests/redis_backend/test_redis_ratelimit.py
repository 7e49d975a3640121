"""GCRA on Redis: the Lua script applies exactly ``ratelimit.gcra_step``.

The script runs on the server's clock, which the test cannot set; but every
answer reveals the ``now`` it used (``reset_after`` is ``tat_after - now``,
or ``base - now``), so each step is checked exactly against the reference
function at that instant.
"""
from __future__ import annotations

import random

import pytest

import shmdict
from shmdict.ratelimit import NS, RateLimiter, gcra_step


@pytest.fixture
def table(redis_url, name):
    t = shmdict.open(name, shmdict.Counter(), 100, 64, backend=redis_url)
    yield t
    t.unlink()


def _check_step(table, key, interval, tolerance, cost):
    tat_before = table.read(key)[0]
    allowed, remaining, retry_ns, reset_ns = table._gcra(key, interval, tolerance, cost)
    tat_after, exists = table.read(key)
    if allowed and cost > 0 and not exists:
        # The key expires when its TAT passes (it then allows what no key
        # does): on a loaded machine the read above can come that late.
        assert reset_ns <= tolerance
        return allowed
    if not allowed and not exists and tat_before != 0:
        # Refused (nothing spent), and the key's TAT passed before the read
        # back, so it expired: on a loaded machine that read can come late.
        assert retry_ns >= 0
        return allowed
    if allowed and cost > 0:
        now = tat_after - reset_ns
    else:
        assert tat_after == tat_before                 # nothing spent
        base_minus_now = reset_ns if allowed is False else reset_ns - cost * interval
        now = tat_before - base_minus_now if base_minus_now > 0 else max(tat_before, 1)
    expected = gcra_step(tat_before, now, interval, tolerance, cost)
    assert (tat_after, allowed, remaining, retry_ns, reset_ns) == expected
    return allowed


def test_gcra_script_follows_the_reference_step(table):
    rng = random.Random(7)
    interval = 3600 * NS // 4          # slow: nothing refills during the test
    tolerance = 5 * interval
    outcomes = [_check_step(table, "k", interval, tolerance, rng.choice([0, 1, 1, 2, 3]))
                for _ in range(40)]
    assert True in outcomes and False in outcomes


def test_gcra_refills_on_the_server_clock(table):
    interval = NS // 1000               # 1 ms per hit: refills within the test
    for _ in range(30):
        _check_step(table, "fast", interval, 2 * interval, 1)


def test_cost_zero_and_refusals_create_nothing(table):
    assert table._gcra("peek", NS, NS, 0)[0] is True
    assert "peek" not in table
    assert table._gcra("big", NS, NS, 2)[0] is False
    assert "big" not in table


def test_gcra_respects_capacity(redis_url, name):
    t = shmdict.open(name, shmdict.Counter(), 2, 64, backend=redis_url)
    try:
        t._gcra("a", NS, NS, 1)
        t._gcra("b", NS, NS, 1)
        with pytest.raises(shmdict.TableFull):
            t._gcra("c", NS, NS, 1)
        assert len(t) == 2
    finally:
        t.unlink()


def test_rate_limiter_uses_the_script(redis_url, name):
    limiter = RateLimiter(name, rate=1, period=3600, burst=3, backend=redis_url)
    try:
        assert limiter._remote is not None
        results = [limiter.hit("k") for _ in range(4)]
        assert [r.allowed for r in results] == [True, True, True, False]
        assert [r.remaining for r in results] == [2, 1, 0, 0]
        assert 0 < results[3].retry_after <= 3600
        assert limiter.peek("k").remaining == 0
        limiter.reset("k")
        assert limiter.hit("k").remaining == 2
    finally:
        limiter.unlink()
