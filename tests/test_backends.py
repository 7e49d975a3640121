"""One behaviour suite, run on both backends: shared memory and Redis.

Every test takes the ``backend`` fixture (``"shm"`` or ``"redis"``) through
``open_table``, so the same expectations hold for both: code that passes on
one passes on the other.  Multi-process tests use real processes; the Redis
runs use a real ``redis-server`` (see the ``redis_url`` fixture).
"""
from __future__ import annotations

import multiprocessing
import os
import pickle
import random
import signal
import time
import warnings

import pytest

import shmdict

FORK = multiprocessing.get_context("fork")
SPAWN = multiprocessing.get_context("spawn")
#: Lock lease on Redis in these tests: a SIGKILLed holder's lock passes on
#: after at most this long (shared memory hands it on at once).
LEASE = 1.0


@pytest.fixture(params=["shm", "redis"])
def backend(request):
    """``(kind, url)``: url is None for shared memory."""
    if request.param == "shm":
        return "shm", None
    return "redis", request.getfixturevalue("redis_url")


@pytest.fixture
def open_table(backend, name):
    """``open_table(layout, capacity=1000, key_size=64, suffix="")`` on the
    backend under test; every table it opened is closed and destroyed after."""
    kind, url = backend
    opened = []

    def opener(layout, capacity=1000, key_size=64, suffix="", **kw):
        table_name = name + suffix
        if url is None:
            table = shmdict.open(table_name, layout, capacity, key_size, **kw)
        else:
            table = shmdict.open(table_name, layout, capacity, key_size, backend=url,
                                 lease=LEASE, **kw)
        opened.append(table_name)
        return table

    yield opener
    for table_name in set(opened):
        shmdict.unlink(table_name, backend=url)


# ================================================================ Counter
def test_counter_verbs(open_table):
    d = open_table(shmdict.Counter())
    assert d.add("a") == 1
    assert d.add("a", 41) == 42
    assert d.add("a", -2) == 40
    assert d.read("a") == (40, True)
    assert d.read("missing") == (0, False)
    assert "missing" not in d and len(d) == 1            # read never creates
    d.set("b", 7)
    assert d.exchange("b", 9) == 7 and d.read("b") == (9, True)
    assert d.exchange("new", 3) == 0 and d.read("new") == (3, True)
    assert d.cas("b", 9, 10) and not d.cas("b", 9, 11) and d.read("b") == (10, True)
    assert not d.cas("c", 0, 5) and "c" not in d
    assert d.cas("c", 123, 5, set_on_not_exists=True) and d.read("c") == (5, True)
    assert sorted(d.items()) == [("a", 40), ("b", 10), ("c", 5), ("new", 3)]
    assert d.total() == 58


def test_counter_batches(open_table):
    d = open_table(shmdict.Counter(), capacity=10)
    assert d.add_many({"a": 1, "b": 2}) == [1, 2]
    assert d.add_many([("a", 5), ("c", -3), ("a", 1)]) == [6, -3, 7]
    assert d.add_many({}) == [] and d.read_many([]) == []
    assert d.read_many(["a", "b", "c", "missing"]) == [(7, True), (2, True), (-3, True),
                                                       (0, False)]
    assert "missing" not in d and len(d) == 3
    with pytest.raises(TypeError):
        d.add_many(["a"])
    with pytest.raises(TypeError):
        d.add_many({"a": 1.5})
    with pytest.raises(OverflowError):
        d.add_many([("b", 1), ("a", 2 ** 63 - 1)])
    assert d.read_many(["a", "b"]) == [(7, True), (3, True)]   # done before the error
    with pytest.raises(shmdict.TableFull):
        d.add_many({f"k{i}": 1 for i in range(10)})
    assert len(d) == 10                          # the adds that fitted were made


def test_counter_handles(open_table):
    d = open_table(shmdict.Counter())
    h, existed = d.load("k")
    assert not existed and "k" in d and d.read("k") == (0, True)
    assert d.load("k")[1] is True
    h += 5
    h -= 1
    d["k"] += 10
    assert int(d["k"]) == 14 and h.value == 14 and h == 14
    assert h.add(1) == 15 and h.exchange(3) == 15
    assert h.cas(3, 4) and not h.cas(3, 5)
    h.set(100)
    assert d.read("k") == (100, True)
    d["other"] = d["k"]                    # a handle's value, copied
    assert d.read("other") == (100, True)


def test_counter_overflow_changes_nothing(open_table):
    d = open_table(shmdict.Counter())
    d.set("k", 2**63 - 1)
    with pytest.raises(OverflowError):
        d.add("k", 1)
    assert d.read("k") == (2**63 - 1, True)
    d.set("neg", -2**63)
    with pytest.raises(OverflowError):
        d.add("neg", -1)
    assert d.read("neg") == (-2**63, True)


def test_load_and_delete_and_delete(open_table):
    d = open_table(shmdict.Counter())
    d.add("k", 5)
    assert d.load_and_delete("k") == (5, True)
    assert d.load_and_delete("k") == (0, False)
    assert "k" not in d and len(d) == 0
    d.delete("nothing")                                 # a no-op
    d.add("j")
    del d["j"]
    assert "j" not in d


# =================================================================== keys
def test_key_types_are_distinct(open_table):
    d = open_table(shmdict.Counter())
    d.add(1, 1)
    d.add("1", 2)
    d.add(b"1", 3)
    d.add(True, 10)                     # True is 1
    d.add(("a", 1, b"x"), 4)
    d.add(-(2**70), 5)                  # ints of any size
    assert d.read(1) == (11, True) and d.read("1") == (2, True) and d.read(b"1") == (3, True)
    assert dict(d.items()) == {1: 11, "1": 2, b"1": 3, ("a", 1, b"x"): 4, -(2**70): 5}
    for bad in (1.5, None, ["list"], ("ok", 2.0)):
        with pytest.raises(TypeError):
            d.add(bad)
        assert bad not in d
    assert len(d) == 5


def test_key_too_long_at_the_same_size(open_table):
    d = open_table(shmdict.Counter(), key_size=16)
    d.add("x" * 15)                     # a str costs its length plus one byte
    with pytest.raises(shmdict.KeyTooLong) as err:
        d.add("x" * 16)
    assert isinstance(err.value, ValueError) and "key_size is 16" in str(err.value)
    with pytest.raises(shmdict.KeyTooLong):
        d.read(b"y" * 16)
    assert len(d) == 1


def test_table_full_at_capacity_changes_nothing(open_table):
    d = open_table(shmdict.Counter(), capacity=5)
    for i in range(5):
        d.add(i)
    for verb in (lambda: d.add("extra"), lambda: d.set("extra", 1), lambda: d["extra"],
                 lambda: d.exchange("extra", 1), lambda: d.load("extra"),
                 lambda: d.cas("extra", 0, 1, set_on_not_exists=True)):
        with pytest.raises(shmdict.TableFull) as err:
            verb()
        assert "5 of 5" in str(err.value)
    assert len(d) == 5 and "extra" not in d
    assert d.add(0) == 2                            # existing keys still update
    d.delete(0)
    d.add("extra")                                  # and a freed place is reused
    assert len(d) == 5


# ============================================================ Range, views
def test_iteration_never_creates_and_sees_every_key(open_table):
    d = open_table(shmdict.Counter(), capacity=2000)
    for i in range(600):                            # past one SCAN batch's encoding
        d.add(("k", i), i)
    assert len(d) == 600
    assert sorted(d.keys()) == [("k", i) for i in range(600)]
    assert sorted(iter(d)) == sorted(d.keys())
    assert sorted(d.values()) == list(range(600))
    assert dict(d.items()) == {("k", i): i for i in range(600)}
    seen = []
    d.range(lambda k, v: seen.append(k) or len(seen) < 10)
    assert len(seen) == 10
    assert len(d) == 600 and d.check()


def test_sub_views(open_table):
    d = open_table(shmdict.Counter())
    users = d.sub("users")
    users.add("alice")
    users.add(("bob", "GET"), 2)
    users.sub("carol").add("x", 3)
    d.add("top")
    assert d.read(("users", "alice")) == (1, True)
    assert d.read(("users", "bob", "GET")) == (2, True)
    assert d.read(("users", "carol", "x")) == (3, True)
    assert sorted(users.keys(), key=repr) == sorted(["alice", ("bob", "GET"), ("carol", "x")],
                                                  key=repr)
    assert len(users) == 3 and "alice" in users and "top" not in users
    assert users.load_and_delete("alice") == (1, True)
    assert len(users) == 2 and len(d) == 3


# ============================================================== lifecycle
def test_attach_mismatch_and_not_found(open_table, backend):
    _, url = backend
    d = open_table(shmdict.Counter(), capacity=100, key_size=32)
    d.add("k", 3)
    same = open_table(shmdict.Counter(), capacity=100, key_size=32)
    assert same.read("k") == (3, True)
    for layout, capacity, key_size in ((shmdict.Lock(), 100, 32),
                                       (shmdict.Counter(), 200, 32),
                                       (shmdict.Counter(), 100, 64)):
        with pytest.raises(shmdict.LayoutMismatch) as err:
            open_table(layout, capacity=capacity, key_size=key_size)
        assert "Counter()" in str(err.value)
    with pytest.raises(shmdict.TableNotFound):
        open_table(shmdict.Counter(), suffix=".nope", create=False)
    with pytest.raises(ValueError):
        shmdict.open("bad name!", shmdict.Counter(), backend=url)


def test_close_unlink_and_context_manager(open_table, backend, name):
    _, url = backend
    with open_table(shmdict.Counter()) as d:
        d.add("k")
    assert d.closed
    with pytest.raises(ValueError):
        d.add("k")
    again = open_table(shmdict.Counter())
    assert again.read("k") == (1, True)                 # close never destroys
    assert shmdict.unlink(name, backend=url) is True
    assert shmdict.unlink(name, backend=url) is False
    with pytest.raises(shmdict.TableNotFound):
        shmdict.open(name, shmdict.Counter(), 1000, 64, backend=url, create=False)


def _add_in_worker(table, key, n, queue):
    table.add(key, n)
    queue.put(table.read(key)[0])
    table.close()


def test_pickle_reattaches_in_a_spawned_worker(open_table):
    d = open_table(shmdict.Counter())
    d.add("k", 1)
    clone = pickle.loads(pickle.dumps(d))
    assert clone.read("k") == (1, True)
    queue = SPAWN.Queue()
    proc = SPAWN.Process(target=_add_in_worker, args=(d, "k", 5, queue))
    proc.start()
    assert queue.get(timeout=60) == 6
    proc.join(60)
    assert proc.exitcode == 0 and d.read("k") == (6, True)


def test_check_reports_consistent(open_table):
    d = open_table(shmdict.Struct(n="q"))
    d.set("a", (1,))
    report = d.check()
    assert report and report.ok and report.live == 1


# ================================================================== Lock
def _hold_lock(table, key, ready, release):
    handle = table[key]
    handle.acquire()
    ready.set()
    release.wait(60)
    handle.release()


def _hold_lock_forever(table, key, ready):
    table[key].acquire()
    ready.set()
    time.sleep(600)


def _fenced_holder(kind, url, name, rounds, out):
    locks = _reopen(kind, url, name, shmdict.Lock(rw=True))
    fences = []
    for _ in range(rounds):
        with locks["row"] as h:
            fences.append(h.fence)
    out.put(fences)
    locks.close()


def _reopen(kind, url, name, layout):
    if url is None:
        return shmdict.open(name, layout, 1000, 64)
    return shmdict.open(name, layout, 1000, 64, backend=url, lease=LEASE)


def test_fences_increase_with_every_exclusive_acquire(open_table, backend, name):
    """Every acquire of a key gets a larger token than all before it, across
    processes, and across a delete and re-creation of the key."""
    kind, url = backend
    locks = open_table(shmdict.Lock(rw=True))
    with locks["row"] as first:
        assert first.fence > 0
    out = SPAWN.Queue()
    procs = [SPAWN.Process(target=_fenced_holder, args=(kind, url, name, 30, out))
             for _ in range(2)]
    for p in procs:
        p.start()
    seen = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    every = sorted(seen[0] + seen[1])
    assert len(set(every)) == 60 and every[0] > first.fence      # all distinct
    assert seen[0] == sorted(seen[0]) and seen[1] == sorted(seen[1])
    locks.delete("row")
    with locks["row"] as again:
        assert again.fence > every[-1]
    with locks["row"].read() as reading:
        assert reading.fence == 0               # the shared side carries none
    assert again.fence > 0                      # kept after the release


def test_lock_ownership_questions(open_table):
    locks = open_table(shmdict.Lock(rw=True))
    h = locks["row"]
    assert not h.held_by_me and not h.lease_lost and not locks.held_by_me("row")
    with h:
        assert h.held_by_me and locks.held_by_me("row") and not h.lease_lost
        assert not locks.held_by_me("row", shared=True)
    assert not h.held_by_me and not h.lease_lost
    with h.read() as reading:
        assert reading.held_by_me and locks.held_by_me("row", shared=True)
        assert not locks.held_by_me("row")
    assert not locks.held_by_me("row", shared=True)


def test_lock_basics(open_table):
    locks = open_table(shmdict.Lock())
    h = locks["row"]
    assert not h.locked() and h.owner is None
    assert h.acquire()
    assert h.locked() and h.owner == os.getpid()
    assert locks.items() == [("row", True)]
    with pytest.raises(shmdict.LockHeld):
        locks.delete("row")
    h.release()
    with pytest.raises(RuntimeError):                   # shmdict.NotOwner
        h.release()
    with locks["row"]:
        assert locks["row"].locked()
    assert not locks["row"].locked()
    locks.delete("row")
    assert "row" not in locks
    with pytest.raises(ValueError):
        h.acquire(blocking=False, timeout=1)
    with pytest.raises(TypeError):
        h.read()                                        # not an rw=True table


def test_lock_excludes_another_process(open_table):
    locks = open_table(shmdict.Lock())
    ready, release = FORK.Event(), FORK.Event()
    proc = FORK.Process(target=_hold_lock, args=(locks, "row", ready, release))
    proc.start()
    try:
        assert ready.wait(60)
        h = locks["row"]
        assert h.owner == proc.pid
        assert not h.acquire(blocking=False)
        assert not h.acquire(timeout=0.2)
        with pytest.raises(shmdict.NotOwner):
            h.release()
    finally:
        release.set()
        proc.join(60)
    assert h.acquire(timeout=30) and not h.recovered
    h.release()


def test_lock_of_a_killed_holder_is_recovered(open_table):
    locks = open_table(shmdict.Lock())
    ready = FORK.Event()
    proc = FORK.Process(target=_hold_lock_forever, args=(locks, "row", ready))
    proc.start()
    assert ready.wait(60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(60)
    h = locks["row"]
    with pytest.warns(shmdict.OwnerDiedWarning):
        assert h.acquire(timeout=30)
    assert h.recovered and h.owner == os.getpid()
    h.release()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert h.acquire(timeout=30) and not h.recovered
    h.release()


def _read_hold(table, key, ready, release):
    with table[key].read():
        ready.set()
        release.wait(60)


def test_rw_lock_shares_readers_and_excludes_writers(open_table):
    locks = open_table(shmdict.Lock(rw=True))
    ready, release = FORK.Event(), FORK.Event()
    proc = FORK.Process(target=_read_hold, args=(locks, "row", ready, release))
    proc.start()
    try:
        assert ready.wait(60)
        reader = locks["row"].read()
        assert reader.acquire(timeout=10)               # a second reader gets in
        assert sorted(locks["row"].readers) == sorted([proc.pid, os.getpid()])
        reader.release()
        assert not locks["row"].write().acquire(timeout=0.2)
    finally:
        release.set()
        proc.join(60)
    writer = locks["row"].write()
    assert writer.acquire(timeout=30)
    assert not locks["row"].read().acquire(blocking=False)
    writer.release()


def _locked_increments(locks, counters, n):
    for _ in range(n):
        with locks["row"]:
            value = counters.read("v")[0]           # a read-modify-write that is
            time.sleep(0.0005)                      # only safe under the lock
            counters.set("v", value + 1)


def test_row_lock_mutual_exclusion_across_processes(open_table):
    locks = open_table(shmdict.Lock())
    counters = open_table(shmdict.Counter(), suffix=".c")
    procs = [FORK.Process(target=_locked_increments, args=(locks, counters, 40))
             for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    assert counters.read("v") == (160, True)


# ================================================================= Struct
LAYOUT = shmdict.Struct(tokens=("d", 10.0), stamp="q", tag="4s")


def test_struct_verbs(open_table):
    d = open_table(LAYOUT)
    rec, exists = d.read("a")
    assert not exists and rec.tokens == 10.0 and "a" not in d
    d.set("a", (1.5, 2, b"ab"))
    assert d.read("a") == ((1.5, 2, b"ab\x00\x00"), True)
    d.set("b", {"stamp": 5})
    assert d.read("b")[0].tokens == 10.0 and d["b"].stamp == 5
    old = d.read("b")[0]
    assert d.cas("b", old, (1.0, 1, b"x")) and not d.cas("b", old, (2.0, 2, b"y"))
    assert not d.cas("c", old, old) and "c" not in d
    assert d.cas("c", old, (3.0, 3, b"z"), set_on_not_exists=True) and "c" in d
    assert d.add("b", "stamp", 10) == 11
    with pytest.raises(TypeError):
        d.add("b", "tokens")
    with d.update("b") as rec:
        rec.tokens -= 0.5
    assert d.read("b")[0] == (0.5, 11, b"x\x00\x00\x00")
    with pytest.raises(KeyError):
        with d.update("b") as rec:
            rec.tokens = 99.0
            raise KeyError("abandon")
    assert d.read("b")[0].tokens == 0.5                 # not written back
    snap, existed = d.load_and_delete("b")
    assert existed and snap.stamp == 11 and "b" not in d


def _update_many(table, n):
    for _ in range(n):
        with table.update("k") as rec:
            rec.stamp += 1
            rec.tokens += 1.0


def test_struct_update_is_atomic_across_processes(open_table):
    d = open_table(LAYOUT)
    procs = [FORK.Process(target=_update_many, args=(d, 50)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    rec = d.read("k")[0]
    assert rec.stamp == 150 and rec.tokens == 160.0


def _die_inside_update(table, ready):
    with table.update("k") as rec:
        rec.stamp = 999
        ready.set()
        time.sleep(600)


def test_struct_updater_killed_mid_update(open_table):
    d = open_table(LAYOUT)
    d.set("k", (1.0, 1, b""))
    ready = FORK.Event()
    proc = FORK.Process(target=_die_inside_update, args=(d, ready))
    proc.start()
    assert ready.wait(60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(60)
    with pytest.warns(shmdict.OwnerDiedWarning):
        with d.update("k") as rec:
            assert rec.recovered and rec.stamp == 1       # the dead update wrote nothing
            rec.stamp = 2
    assert d.read("k")[0].stamp == 2


# ===================================================== multi-process counts
def _adder(table, keys, rounds, seed):
    rng = random.Random(seed)
    for _ in range(rounds):
        table.add(rng.choice(keys), 1)


def _drainer(table, keys, stop, queue):
    rng = random.Random(0)
    taken = 0
    while not stop.is_set():
        value, existed = table.load_and_delete(rng.choice(keys))
        taken += value
        table.add(("scratch", rng.randrange(8)))         # churn other keys too
        table.delete(("scratch", rng.randrange(8)))
    queue.put(taken)


def test_conservation_under_concurrent_load_and_delete(open_table):
    d = open_table(shmdict.Counter())
    keys = [f"k{i}" for i in range(4)]
    stop, queue = FORK.Event(), FORK.Queue()
    drainer = FORK.Process(target=_drainer, args=(d, keys, stop, queue))
    drainer.start()
    adders = [FORK.Process(target=_adder, args=(d, keys, 400, i)) for i in range(3)]
    for p in adders:
        p.start()
    for p in adders:
        p.join(300)
        assert p.exitcode == 0
    stop.set()
    taken = queue.get(timeout=120)
    drainer.join(60)
    remaining = sum(d.read(k)[0] for k in keys)
    assert taken + remaining == 3 * 400
    assert d.check()


# ============================================================= RateLimiter
def _hammer(name, url, hits, barrier, queue):
    limiter = shmdict.RateLimiter(name, rate=1, period=3600, burst=25, backend=url)
    barrier.wait(60)
    queue.put(sum(limiter.hit(("client", 7)).allowed for _ in range(hits)))
    limiter.close()


def test_rate_limit_across_processes(backend, name):
    _, url = backend
    try:
        barrier, queue = FORK.Barrier(4), FORK.Queue()
        procs = [FORK.Process(target=_hammer, args=(name, url, 20, barrier, queue))
                 for _ in range(4)]
        for p in procs:
            p.start()
        allowed = sum(queue.get(timeout=120) for _ in procs)
        for p in procs:
            p.join(60)
        assert allowed == 25                        # the burst, and not one more
        limiter = shmdict.RateLimiter(name, rate=1, period=3600, burst=25, backend=url)
        assert not limiter.hit(("client", 7)) and limiter.hit(("client", 8))
        limiter.close()
    finally:
        shmdict.unlink(name, backend=url)
