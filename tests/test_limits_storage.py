"""The ``limits`` storage ``shmdict://NAME``: strategies, expiry, processes."""
from __future__ import annotations

import multiprocessing
import time

import pytest

limits = pytest.importorskip("limits")
from limits import parse, strategies  # noqa: E402
from limits.storage import storage_from_string  # noqa: E402

import shmdict  # noqa: E402
from shmdict.limits_storage import (AsyncShmDictStorage, FullTableWarning,  # noqa: E402
                                    MovingWindowMapped, ShmDictStorage)
from shmdict.ratelimit import NS, SimulatedClock  # noqa: E402


@pytest.fixture
def clock():
    return SimulatedClock(3600 * 1000 * NS)      # the start of an hour-long window


@pytest.fixture
def store(name, clock):
    storage = ShmDictStorage(f"shmdict://{name}?capacity=64", clock=clock)
    yield storage
    storage.close()


def test_the_scheme_is_registered(name):
    storage = storage_from_string(f"shmdict://{name}?capacity=500&key_size=100")
    assert isinstance(storage, ShmDictStorage)
    assert (storage.table.name, storage.table.capacity, storage.table.key_size) == \
        (name, 500, 100)
    assert storage.check()
    storage.close()
    assert not storage.check()
    again = storage_from_string(f"shmdict://{name}", capacity=500, key_size=100)
    assert again.table.capacity == 500


@pytest.mark.parametrize("uri", ["shmdict://", "shmdict://bad name", "shmdict://a/b",
                                 "shmdict://t?capacity=lots", "shmdict://t?colour=red",
                                 "memory://"])
def test_bad_uris(uri):
    with pytest.raises(ValueError):
        ShmDictStorage(uri)


def test_fixed_window(store, clock):
    limiter = strategies.FixedWindowRateLimiter(store)
    item = parse("3/minute")
    assert [limiter.hit(item, "ip", "10.0.0.1") for _ in range(4)] == [True] * 3 + [False]
    assert limiter.hit(item, "ip", "10.0.0.2")           # another client
    assert not limiter.test(item, "ip", "10.0.0.1")
    stats = limiter.get_window_stats(item, "ip", "10.0.0.1")
    assert stats.remaining == 0
    assert stats.reset_time == pytest.approx(time.time() + 60, abs=2)
    clock.advance(59.999)
    assert not limiter.hit(item, "ip", "10.0.0.1")
    clock.advance(0.001)                                  # the window has ended
    assert limiter.test(item, "ip", "10.0.0.1")
    assert store.get(item.key_for("ip", "10.0.0.1")) == 0
    assert [limiter.hit(item, "ip", "10.0.0.1") for _ in range(4)] == [True] * 3 + [False]
    limiter.clear(item, "ip", "10.0.0.1")
    assert limiter.hit(item, "ip", "10.0.0.1", cost=3)


def test_incr_get_and_expiry(store, clock):
    assert store.incr("k", 10) == 1
    assert store.incr("k", 10, amount=5) == 6
    assert store.get("k") == 6 and store.get("missing") == 0
    assert store.get_expiry("k") == pytest.approx(time.time() + 10, abs=1)
    clock.advance(10)
    assert store.get("k") == 0
    assert store.incr("k", 10) == 1                       # a new window


def test_sliding_window_counter(store, clock):
    limiter = strategies.SlidingWindowCounterRateLimiter(store)
    item = parse("10/hour")
    assert sum(limiter.hit(item, "u") for _ in range(12)) == 10
    previous, previous_ttl, current, current_ttl = store.get_sliding_window(
        item.key_for("u"), 3600)
    assert (previous, previous_ttl, current, current_ttl) == (0, 0.0, 10, 7200.0)
    clock.advance(3600 + 0.3 * 3600)          # next window, 30% in: weight 0.7
    assert store.get_sliding_window(item.key_for("u"), 3600) == \
        (10, pytest.approx(0.7 * 3600), 0, pytest.approx(1.7 * 3600))
    assert sum(limiter.hit(item, "u") for _ in range(5)) == 3
    assert limiter.get_window_stats(item, "u").remaining == 0
    clock.advance(2 * 3600)
    assert limiter.test(item, "u")
    limiter.clear(item, "u")
    assert store.get_sliding_window(item.key_for("u"), 3600)[2] == 0
    assert not limiter.hit(item, "u", cost=11)


def test_moving_window_runs_as_the_sliding_window_counter(store, clock):
    limiter = strategies.MovingWindowRateLimiter(store)   # the app boots
    item = parse("3/minute")
    with pytest.warns(MovingWindowMapped, match="sliding window counter"):
        assert [limiter.hit(item, "ip") for _ in range(4)] == [True] * 3 + [False]
    stats = limiter.get_window_stats(item, "ip")
    assert stats.remaining == 0
    clock.advance(120)
    assert limiter.hit(item, "ip")


def test_expired_keys_make_room(name, clock):
    store = ShmDictStorage(f"shmdict://{name}?on_full=raise", capacity=8, clock=clock)
    for i in range(8):
        store.incr(f"k{i}", 60 if i else 600)
    with pytest.raises(shmdict.TableFull):
        store.incr("newcomer", 60)
    clock.advance(61)
    assert store.incr("newcomer", 60) == 1               # swept the expired ones
    assert store.get("k0") == 1                          # the live one stayed
    assert len(store.table) == 2
    assert store.reset() == 2 and len(store.table) == 0


def test_expire_sweeps_sliding_windows(store, clock):
    assert store.acquire_sliding_window_entry("a", 5, 60)
    assert store.acquire_sliding_window_entry("b", 5, 3600)
    clock.advance(61)
    assert store.expire() == 0                # "a" still weighs in its next window
    clock.advance(60)
    assert store.expire() == 1
    assert store.get_sliding_window("b", 3600)[2] == 1


def _fixed_worker(name, frozen_ns, kind, barrier, queue):
    import shmdict.limits_storage  # noqa: F401  (registers the scheme)
    clock = SimulatedClock(frozen_ns)
    storage = storage_from_string(f"shmdict://{name}", capacity=64, clock=clock)
    strategy = (strategies.FixedWindowRateLimiter if kind == "fixed"
                else strategies.SlidingWindowCounterRateLimiter)(storage)
    item = parse("30/hour")
    barrier.wait()
    queue.put(sum(strategy.hit(item, "shared-client") for _ in range(100)))


@pytest.mark.parametrize("kind", ["fixed", "sliding"])
def test_processes_never_get_more_than_the_limit(name, kind):
    """4 processes, 400 hits on one limit of 30: exactly 30 pass."""
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(4), ctx.Queue()
    frozen = 3600 * 1000 * NS + 1            # one instant shared by all, mid-window
    procs = [ctx.Process(target=_fixed_worker, args=(name, frozen, kind, barrier, queue))
             for _ in range(4)]
    for proc in procs:
        proc.start()
    allowed = [queue.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    assert sum(allowed) == 30


def test_processes_with_the_real_clock(name):
    """The same with the real monotonic clock: the window outlasts the test."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()

    def worker():
        storage = storage_from_string(f"shmdict://{name}", capacity=64)
        limiter = strategies.FixedWindowRateLimiter(storage)
        queue.put(sum(limiter.hit(parse("25/day"), "k") for _ in range(60)))

    procs = [ctx.Process(target=worker) for _ in range(3)]
    for proc in procs:
        proc.start()
    total = sum(queue.get(timeout=60) for _ in procs)
    for proc in procs:
        proc.join(30)
    assert total == 25


# ------------------------------------------------------------- no ceilings
def test_fixed_window_counts_past_24_bits(store):
    """19,000,000/day with hits of cost 9,000,000: the third is refused."""
    limiter = strategies.FixedWindowRateLimiter(store)
    item = parse("19000000/day")
    assert [limiter.hit(item, "big", cost=9_000_000) for _ in range(4)] == \
        [True, True, False, False]
    assert store.get(item.key_for("big")) == 36_000_000     # limits counts every hit
    assert store.incr("huge", 60, amount=(1 << 62)) == 1 << 62
    assert store.incr("huge", 60, amount=(1 << 62)) == (1 << 63) - 1   # saturates


def test_sliding_window_counts_past_20_bits(store, clock):
    limiter = strategies.SlidingWindowCounterRateLimiter(store)
    item = parse("2000000/day")
    day = 86400 * NS
    clock.advance(ns=day - clock() % day)     # windows align to the clock: start one
    assert limiter.hit(item, "big", cost=1_999_999)
    assert limiter.hit(item, "big")
    assert not limiter.hit(item, "big")
    assert limiter.get_window_stats(item, "big").remaining == 0
    clock.advance(86400 * 1.5)          # half of the previous window still weighs
    assert limiter.hit(item, "big", cost=999_999)
    assert not limiter.hit(item, "big", cost=2)


def test_long_keys_are_digested(store):
    limiter = strategies.FixedWindowRateLimiter(store)
    item = parse("2/minute")
    long_a, long_b = "a" * 200, "a" * 199 + "b"
    assert [limiter.hit(item, long_a) for _ in range(3)] == [True, True, False]
    assert limiter.hit(item, long_b)                      # its own state
    assert limiter.hit(item, "é" * 150)
    assert all(not isinstance(k[-1], str) or len(k[-1]) < 160 for k in store.table.keys())


def test_a_full_table_evicts_the_key_closest_to_expiry(name, clock):
    store = ShmDictStorage(f"shmdict://{name}", capacity=8, clock=clock)
    for i in range(8):
        store.incr(f"k{i}", 60 + i)
    with pytest.warns(FullTableWarning, match="evicting"):
        assert store.incr("newcomer", 60) == 1
    assert store.get("k0") == 0 and store.get("k7") == 1  # k0 ended first
    for i in range(200):                                   # each new client: no 500
        assert store.incr(f"n{i}", 60) == 1
    assert len(store.table) == 8


def test_a_full_table_can_fail_open(name, clock):
    store = ShmDictStorage(f"shmdict://{name}?on_full=allow", capacity=4, clock=clock)
    limiter = strategies.FixedWindowRateLimiter(store)
    item = parse("1/minute")
    for i in range(4):
        assert limiter.hit(item, f"k{i}")
    with pytest.warns(FullTableWarning, match="allowing"):
        assert limiter.hit(item, "newcomer") and limiter.hit(item, "newcomer")
    assert not limiter.hit(item, "k0")                     # the others still counted
    clock.advance(61)
    assert limiter.hit(item, "newcomer") and not limiter.hit(item, "newcomer")


def test_new_clients_cost_the_same_on_a_full_table(name):
    """A full table of 20,000 live keys: each new client costs about what a
    fill costs, not a sweep of the table (generous bound)."""
    store = ShmDictStorage(f"shmdict://{name}", capacity=20_000)
    started = time.perf_counter()
    for i in range(20_000):
        store.incr(f"k{i}", 3600)
    fill = (time.perf_counter() - started) / 20_000
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FullTableWarning)
        store.incr("first", 3600)          # the first may scan the table once
        started = time.perf_counter()
        for i in range(2000):
            store.incr(f"new{i}", 3600)
    per_new = (time.perf_counter() - started) / 2000
    assert per_new < 20 * fill + 0.001, (per_new, fill)


def test_backend_in_the_uri(redis_url, name):
    uri = f"shmdict://{name}?backend={redis_url}&capacity=100"
    storage = storage_from_string(uri)
    try:
        assert storage.table.backend == redis_url
        limiter = strategies.FixedWindowRateLimiter(storage)
        assert [limiter.hit(parse("2/minute"), "k") for _ in range(3)] == [True, True, False]
    finally:
        storage.table.unlink()


def test_a_too_small_key_size_is_refused_at_creation(name):
    with pytest.raises(ValueError, match="key_size"):
        ShmDictStorage(f"shmdict://{name}?key_size=30")


# --------------------------------------------------------------- limits.aio
def test_async_scheme_with_aio_strategies(name, clock):
    import asyncio

    from limits.aio import strategies as aio_strategies
    from limits.storage import storage_from_string as from_string

    storage = from_string(f"async+shmdict://{name}?capacity=64", clock=clock)
    assert isinstance(storage, AsyncShmDictStorage)

    async def main():
        fixed = aio_strategies.FixedWindowRateLimiter(storage)
        sliding = aio_strategies.SlidingWindowCounterRateLimiter(storage)
        moving = aio_strategies.MovingWindowRateLimiter(storage)
        item = parse("3/minute")
        assert [await fixed.hit(item, "a") for _ in range(4)] == [True] * 3 + [False]
        assert [await sliding.hit(item, "b") for _ in range(4)] == [True] * 3 + [False]
        with pytest.warns(MovingWindowMapped):
            assert [await moving.hit(item, "c") for _ in range(4)] == [True] * 3 + [False]
        assert (await fixed.get_window_stats(item, "a")).remaining == 0
        assert await storage.check()
        await fixed.clear(item, "a")
        assert await fixed.hit(item, "a")
        assert await storage.reset() >= 3
    asyncio.run(main())
    # the sync storage on the same table sees the same state
    sync = ShmDictStorage(f"shmdict://{name}?capacity=64", clock=clock)
    assert sync.table.name == storage.table.name


def test_keys_of_equal_expiry_and_mixed_kinds_in_a_full_table(name, clock):
    store = ShmDictStorage(f"shmdict://{name}", capacity=6, clock=clock)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FullTableWarning)
        for i in range(20):              # digests (bytes) and str keys, one instant
            assert store.acquire_sliding_window_entry("z" * (200 + i % 2) + str(i), 5, 60)
            assert store.incr(f"k{i}", 60) == 1
