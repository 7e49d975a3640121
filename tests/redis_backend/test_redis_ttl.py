"""Per-key expiry on Redis: deadlines on the server's clock (see _lua.py);
the same contract as on shared memory (tests/shm/test_ttl.py)."""
from __future__ import annotations

import multiprocessing
import time

import pytest

import shmdict
import shmdict.ratelimit

CTX = multiprocessing.get_context("spawn")


def _observe(url, name, out):
    d = shmdict.open(name, shmdict.Counter(), capacity=100, backend=url)
    while d.read("go")[0] < 1:
        time.sleep(0.005)
    out.put((d.read("k"), "k" in d, d.ttl("k"), len(d), d.keys()))
    d.close()


def test_a_key_expires_on_time_for_every_client(redis_url, name):
    d = shmdict.open(name, shmdict.Counter(), capacity=100, backend=redis_url)
    try:
        d.add("k", 5, ttl=0.3)
        assert d.read("k") == (5, True) and 0 < d.ttl("k") <= 0.302
        out = CTX.Queue()
        procs = [CTX.Process(target=_observe, args=(redis_url, name, out)) for _ in range(2)]
        for p in procs:
            p.start()
        time.sleep(1.0)
        d.set("go", 1)
        results = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        for read, present, ttl, length, keys in results:
            assert read == (0, False) and not present and ttl is None
            assert length == 1 and keys == ["go"]
    finally:
        d.unlink()


def test_expired_fields_make_room(redis_url, name):
    d = shmdict.open(name, shmdict.Counter(), capacity=20, backend=redis_url)
    try:
        for i in range(400):
            d.add(("c", i), ttl=0.005)
            if i % 10 == 9:
                time.sleep(0.01)
        assert len(d) <= 20
        with pytest.raises(shmdict.TableFull):
            for i in range(21):
                d.add(("live", i), ttl=60)
    finally:
        d.unlink()


def test_persist_and_expire(redis_url, name):
    d = shmdict.open(name, shmdict.Counter(), capacity=10, backend=redis_url)
    try:
        assert not d.expire("k", 1) and "k" not in d
        d.add("k", ttl=100)
        d.add("k")
        assert 99 < d.ttl("k") <= 100.002
        assert d.persist("k") and d.ttl("k") is None
        assert d.expire("k", 0.05)
        time.sleep(0.3)
        assert d.add("k", 3) == 3
    finally:
        d.unlink()


@pytest.mark.parametrize("kind", ["RateLimiter", "FixedWindowLimiter"])
def test_a_rate_limiter_of_expiring_clients_never_fills(redis_url, name, kind):
    """Capacity 50, 5,000 distinct clients over time, a fast rate."""
    if kind == "RateLimiter":
        limiter = shmdict.ratelimit.RateLimiter(name, rate=1000, period=1.0, burst=1,
                                                capacity=50, backend=redis_url)
    else:
        limiter = shmdict.ratelimit.FixedWindowLimiter(name, limit=5, period=0.005,
                                                       capacity=50, backend=redis_url)
    try:
        for i in range(5000):
            assert limiter.hit(f"client{i}")
            if i % 25 == 24:
                time.sleep(0.012)
        assert len(limiter.table) <= 51
    finally:
        limiter.unlink()
