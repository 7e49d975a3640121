"""Per-key expiry on shared memory: ``ttl=`` on the write verbs, ``expire``,
``persist``, ``ttl``; an expired key is absent for every verb, in every
process, and its slot is reused.

Margins are generous for a loaded 2-core machine: a key set with a TTL of
0.3 s is checked present right after, and absent after 1 s or more.
"""
from __future__ import annotations

import multiprocessing
import time

import pytest
from helpers import hold_stripe_until_told, kill_and_join, run_to_completion

import shmdict
import shmdict.ratelimit
from shmdict.backends.shm import _core

CTX = multiprocessing.get_context("spawn")


def _joined(procs, timeout=60.0):
    """Wait (bounded) for started processes; each must exit cleanly."""
    for p in procs:
        p.join(timeout)
        if p.is_alive():
            p.kill()
        assert p.exitcode == 0, f"{p.name} exited with {p.exitcode}"


def _observer(name, out):
    """Attach, see the key present, wait for the signal, then see it absent."""
    d = shmdict.open(name, shmdict.Counter(), capacity=100)
    try:
        seen_before = d.read("k")
        while d.read("go")[0] < 1:          # the setter says: past the deadline
            time.sleep(0.005)
        out.put((seen_before, d.read("k"), "k" in d, d.keys(), d.ttl("k"), len(d)))
    finally:
        d.close()


def test_a_key_expires_on_time_in_every_process(name):
    d = shmdict.open(name, shmdict.Counter(), capacity=100)
    d.add("k", 5, ttl=0.3)
    assert d.read("k") == (5, True) and "k" in d
    out = CTX.Queue()
    procs = [CTX.Process(target=_observer, args=(name, out)) for _ in range(2)]
    for p in procs:
        p.start()
    # Both observers attach (each reads once) well before the deadline on an
    # idle machine; the assertion that matters is the "absent" one below.
    time.sleep(1.0)
    assert d.read("k") == (0, False) and "k" not in d
    d.set("go", 1)
    results = [out.get(timeout=60) for _ in procs]
    _joined(procs)
    for before, after, present, keys, ttl, length in results:
        assert after == (0, False) and not present and ttl is None
        assert keys == ["go"] and length == 1
    d.close()


def test_present_before_its_deadline_in_another_process(name):
    d = shmdict.open(name, shmdict.Counter(), capacity=100)
    d.add("k", 1, ttl=60)
    out = CTX.Queue()
    p = CTX.Process(target=_read_once, args=(name, out))
    p.start()
    got = out.get(timeout=60)
    _joined([p])
    assert got[0] == (1, True) and 30 < got[1] <= 60.001
    d.close()


def _read_once(name, out):
    d = shmdict.open(name, shmdict.Counter(), capacity=100)
    out.put((d.read("k"), d.ttl("k")))
    d.close()


def test_ttl_none_keeps_the_expiry_and_persist_clears_it(name):
    d = shmdict.open(name, shmdict.Counter(), capacity=10)
    assert d.ttl("k") is None and not d.expire("k", 1) and not d.persist("k")
    assert "k" not in d                               # expire() creates nothing
    d.add("k", ttl=100)
    d.add("k")                                        # ttl=None: keeps it
    d.set("k", 7)
    assert 90 < d.ttl("k") <= 100.001      # rounded up to 262 us at most
    assert d.persist("k") and d.ttl("k") is None
    assert d.expire("k", 0.2) and d.ttl("k") <= 0.201
    d.close()


def test_an_expired_key_starts_again_from_the_default(name):
    d = shmdict.open(name, shmdict.Counter(), capacity=10)
    d.add("k", 40, ttl=0.05)
    time.sleep(0.3)
    assert d.add("k", 2) == 2                         # not 42
    assert d.exchange("e", 1, ttl=0.05) == 0
    time.sleep(0.3)
    assert d.exchange("e", 3) == 0
    assert d.cas("c", 0, 9, True, ttl=0.05)
    time.sleep(0.3)
    assert not d.cas("c", 9, 10)                      # expired: absent
    assert d.check()
    d.close()


def test_bad_ttls_are_refused_and_change_nothing(name):
    d = shmdict.open(name, shmdict.Counter(), capacity=10)
    for bad, exc in [(0, ValueError), (-1, ValueError), (float("nan"), ValueError),
                     (float("inf"), ValueError), (True, TypeError), ("1", TypeError)]:
        with pytest.raises(exc):
            d.add("k", ttl=bad)
        with pytest.raises(exc):
            d.expire("k", bad)
    with pytest.raises(TypeError):
        d.add("k", ttl_seconds=1)
    assert "k" not in d and len(d) == 0
    d.close()


def test_slots_are_reused_a_small_table_takes_many_expiring_keys(name):
    """A table of capacity 100 takes 10,000 keys with short TTLs inserted over
    time without TableFull; len() stays bounded."""
    d = shmdict.open(name, shmdict.Counter(), capacity=100)
    biggest = 0
    for i in range(10_000):
        d.add(("client", i), ttl=0.01)
        if i % 50 == 49:
            time.sleep(0.012)             # the batch before has expired by now
            biggest = max(biggest, len(d))
    assert biggest <= 100
    assert d.stats()["live"] <= 100
    report = d.check()
    assert report, report
    d.close()


def test_without_ttls_a_full_table_is_still_full(name):
    d = shmdict.open(name, shmdict.Counter(), capacity=10)
    for i in range(10):
        d.add(i, ttl=60)
    with pytest.raises(shmdict.TableFull):
        d.add("one more")
    d.close()


def _insert(name, keys, out):
    d = shmdict.open(name, shmdict.Counter(), capacity=64, create=False)
    for key in keys:
        d.add(key, ttl=60)
    out.put("done")


def test_a_full_tables_reclaim_never_waits_on_a_stripe_a_live_process_holds(name):
    """A table full of expired keys, one of whose stripes a live process
    holds (stopped, or busy, as long as it likes): an insert into another
    stripe reclaims the other stripes' expired keys and goes on at once,
    instead of waiting for that stripe in its reclaim walk."""
    d = shmdict.open(name, shmdict.Counter(), capacity=64)
    children = []
    try:
        for i in range(64):
            d.add(("old", i), ttl=0.2)
        with pytest.raises(shmdict.TableFull):
            d.add("one more", ttl=60)           # nothing has expired yet
        time.sleep(0.5)
        stripe = lambda key: d._encode(key)[1] % d._nstripes
        held = stripe(("old", 0))
        ours, theirs = CTX.Pipe()
        holder = CTX.Process(target=hold_stripe_until_told, args=(name, 64, held, theirs),
                             daemon=True)
        holder.start()
        children.append(holder)
        assert ours.poll(60) and ours.recv() == "held"
        keys = [k for k in (("new", i) for i in range(500)) if stripe(k) != held][:5]
        out = CTX.Queue()
        inserter = CTX.Process(target=_insert, args=(name, keys, out), daemon=True)
        inserter.start()
        children.append(inserter)
        inserter.join(20)
        assert not inserter.is_alive(), "the insert waited in its reclaim walk on the held stripe"
        assert inserter.exitcode == 0 and out.get(timeout=5) == "done"
        assert all(d.read(k) == (1, True) for k in keys)
        ours.send("release")
        holder.join(10)
        assert holder.exitcode == 0
        d.add("after", ttl=60)                  # and after the release
        assert len(d) == len(keys) + 1
        report = d.check()
        assert report, report
    finally:
        kill_and_join(children)
        d.close()


def test_reclaim_expired_tombstones_them_with_exact_counts(name):
    d = shmdict.open(name, shmdict.Counter(), capacity=50)
    for i in range(20):
        d.add(i, ttl=0.05 if i % 2 else 60)
    time.sleep(0.3)
    assert len(d) == 10 and d.stats()["live"] == 20     # absent, not yet reclaimed
    assert sorted(d.keys()) == list(range(0, 20, 2))
    assert d.check()
    assert d.reclaim_expired() == 10
    assert d.stats()["live"] == 10 and len(d) == 10 and d.check()
    d.close()


def _adder(name, keys, rounds, ttl):
    d = shmdict.open(name, shmdict.Counter(), capacity=200)
    for _ in range(rounds):
        for k in keys:
            d.add(k, 1, ttl=ttl)
    d.close()


def test_conservation_with_long_ttls(name):
    """Processes adding to keys with a TTL that never runs out in the test
    lose nothing."""
    d = shmdict.open(name, shmdict.Counter(), capacity=200)
    keys = [f"k{i}" for i in range(20)]
    procs = [CTX.Process(target=_adder, args=(name, keys, 500, 3600)) for _ in range(3)]
    run_to_completion(procs)
    assert sum(d.read(k)[0] for k in keys) == 3 * 500 * len(keys)
    assert all(3590 < d.ttl(k) <= 3600.001 for k in keys)
    assert d.check()
    d.close()


def _churner(name, seconds):
    d = shmdict.open(name, shmdict.Counter(), capacity=200)
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        d.add(("hot", n % 8), 1, ttl=0.002)
        n += 1
    d.close()


def test_keys_expiring_under_concurrent_adds_never_exist_twice(name):
    d = shmdict.open(name, shmdict.Counter(), capacity=200)
    procs = [CTX.Process(target=_churner, args=(name, 1.5)) for _ in range(3)]
    run_to_completion(procs)
    report = d.check()
    assert report, report                   # no key twice, counts exact
    assert len(d.keys()) == len(set(d.keys())) <= 8
    d.close()


def test_a_held_lock_never_expires_under_its_holder(name):
    locks = shmdict.open(name, shmdict.Lock(), capacity=10)
    h = locks["row"]
    assert h.acquire()
    assert locks.expire("row", 0.05)
    time.sleep(0.3)
    assert "row" in locks and locks.owner("row") is not None   # held: kept
    h.release()
    assert "row" not in locks                 # free and past its deadline
    assert locks.check()
    locks.close()


def test_a_struct_key_expires(name):
    d = shmdict.open(name, shmdict.Struct(n="q"), capacity=10)
    d.set("a", (5,), ttl=0.05)
    assert d.cas("b", (0,), (1,), True, ttl=60)
    time.sleep(0.3)
    assert d.read("a")[1] is False and d.read("b") == ((1,), True)
    d.close()


def test_gcra_keys_expire_when_their_tat_passes(name):
    limiter = shmdict.RateLimiter(name, rate=1, period=10.0, burst=1, capacity=50)
    assert limiter.hit("c")
    assert 5 < limiter.table.ttl("c") <= 10.001      # its TAT: 10 s from the hit
    limiter.close()


def test_a_rate_limiter_of_expiring_clients_never_fills(name):
    """A limiter on a table of capacity 50 hit by 5,000 distinct clients over
    time (a fast rate: each key's TAT passes within a millisecond)."""
    limiter = shmdict.RateLimiter(name, rate=1000, period=1.0, burst=1, capacity=50)
    for i in range(5000):
        assert limiter.hit(f"client{i}")
        if i % 25 == 24:
            time.sleep(0.003)
    assert len(limiter.table) <= 51
    limiter.close()


@pytest.mark.parametrize("kind", ["FixedWindowLimiter", "SlidingWindowLimiter"])
def test_window_limiters_of_expiring_clients_never_fill(name, kind):
    limiter = getattr(shmdict.ratelimit, kind)(name, limit=5, period=0.005, capacity=50)
    for i in range(2000):
        assert limiter.hit(f"client{i}")
        if i % 20 == 19:
            time.sleep(0.012)
    limiter.close()


def test_the_slot_header_holds_the_deadline_word(name):
    d = shmdict.open(name, shmdict.Counter(), capacity=10)
    d.add("k", ttl=10)
    slot, state = d._core.locate("k", False)
    deadline = d._core.deadline(slot, state)
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    assert 9e9 < deadline - now <= 10e9 + (1 << _core.EXPIRES_SHIFT)
    d.close()


def _expiring_churn_forever(name):
    d = shmdict.open(name, shmdict.Counter(), capacity=40)
    n = 0
    while True:
        try:
            d.add(("c", n % 200), 1, ttl=0.002)
        except shmdict.TableFull:
            pass        # 40 keys that are all still live: a full table, rightly
        n += 1


def test_sigkill_during_expiring_churn_leaves_a_consistent_table(name):
    """Workers SIGKILLed at random while they insert, reclaim and re-insert
    expiring keys on a small table: what survives is consistent (after the
    repair any waiter does), and the table keeps taking expiring keys."""
    import random
    import signal
    d = shmdict.open(name, shmdict.Counter(), capacity=40)
    rng = random.Random(7)
    for _ in range(6):
        procs = [CTX.Process(target=_expiring_churn_forever, args=(name,)) for _ in range(2)]
        for p in procs:
            p.start()
        time.sleep(0.5 + rng.random() * 0.3)     # spawn, then churn a while
        for p in procs:
            p.kill()
            p.join(30)
            assert p.exitcode == -signal.SIGKILL
    time.sleep(0.05)                              # every key has expired
    for i in range(400):                          # stripes repaired on the way
        d.add(("after", i), ttl=0.001)
        if i % 20 == 19:
            time.sleep(0.003)
    report = d.check()
    assert report, report
    assert len(d) <= 40
    d.close()
