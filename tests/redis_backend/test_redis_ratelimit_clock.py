"""On Redis every time rule of the limiters runs on the server's clock.

Each host's CLOCK_MONOTONIC counts from its own boot, so two hosts (here:
two processes, one of them made to read a monotonic clock ten days ahead,
as a host with ten days of uptime would) disagree about every window.
"""
from __future__ import annotations

import multiprocessing as mp
import time

import pytest

import shmdict
from shmdict.ratelimit import FixedWindowLimiter, RateLimiter, SimulatedClock, \
    SlidingWindowLimiter

SPAWN = mp.get_context("spawn")
TEN_DAYS_NS = 10 * 86_400 * 10 ** 9


def _hits_from_a_long_running_host(kind, url, name, n, out):
    real = time.monotonic_ns
    time.monotonic_ns = lambda: real() + TEN_DAYS_NS     # this "host" booted long ago
    limiter = kind(name, limit=5, period=3600, backend=url)
    out.put(sum(limiter.hit("client").allowed for _ in range(n)))
    limiter.close()


@pytest.mark.parametrize("kind", [FixedWindowLimiter, SlidingWindowLimiter])
def test_windows_on_two_hosts_share_the_servers_clock(redis_url, name, kind):
    limiter = kind(name, limit=5, period=3600, backend=redis_url)
    try:
        here = sum(limiter.hit("client").allowed for _ in range(5))
        out = SPAWN.Queue()
        proc = SPAWN.Process(target=_hits_from_a_long_running_host,
                             args=(kind, redis_url, name, 5, out))
        proc.start()
        there = out.get(timeout=60)
        proc.join(30)
        assert (here, there) == (5, 0)          # one limit of 5 for both hosts
    finally:
        limiter.unlink()


def test_sweep_on_redis_removes_expired_keys(redis_url, name):
    limiter = RateLimiter(name, rate=1000, period=1, burst=1, capacity=3, backend=redis_url)
    try:
        for client in ("a", "b", "c"):
            assert limiter.hit(client).allowed
        time.sleep(0.05)                        # every state is back to "no history"
        assert limiter.sweep() == 3
        assert limiter.hit("d").allowed          # no TableFull
    finally:
        limiter.unlink()


def test_a_clock_is_refused_on_redis_and_costs_are_checked(redis_url, name):
    with pytest.raises(ValueError, match="server's clock"):
        RateLimiter(name, rate=10, clock=SimulatedClock(), backend=redis_url)
    limiter = RateLimiter(name, rate=10, backend=redis_url)
    try:
        with pytest.raises(TypeError):
            limiter.hit("k", cost=True)
        assert limiter.hit("k", cost=2).remaining == 8
    finally:
        limiter.unlink()
    local = RateLimiter(name, rate=10)
    try:
        with pytest.raises(TypeError):
            local.hit("k", cost=True)
    finally:
        local.unlink()
