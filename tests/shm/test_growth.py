"""Online growth: ``shmdict.open(..., capacity=N, max_capacity=M)``.

A full table adds a tier (a segment as large as the table so far, probed
after the others); keys never move, so other processes keep updating them
meanwhile.  Every guarantee holds across a growth step: conservation under
concurrent ``add``/``load_and_delete``, crash takeover of a process killed
mid-growth (also while creating a tier), ``check``, pickling, and attach from
a process that opened before the growth.  All with real processes.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import pickle
import random
import signal
import time

import posix_ipc
import pytest

import shmdict
from shmdict.backends.shm import _core, segment

CTX = multiprocessing.get_context("fork")
SPAWN = multiprocessing.get_context("spawn")
#: Short recovery settings, so a killed stripe holder costs little.
POLL, STALL = 0.05, 0.5


def _tiers_on_disk(name):
    prefix = segment.PREFIX + segment.tier_name(name, 0)[:-1]
    return sorted(e for e in os.listdir(segment.SHM_DIR) if e.startswith(prefix))


# ------------------------------------------------------------ single process
def test_tier_capacity_rule_doubles_up_to_max_capacity():
    caps = [_core.tier_capacity(100, 100_000, k) for k in range(12)]
    assert caps[:4] == [100, 100, 200, 400]
    assert sum(caps) == 100_000 and caps[-1] == 0         # the last tier is capped
    assert _core.tier_capacity(100, 100, 1) == 0           # a fixed table has no tier 1
    assert _core.tier_capacity(1, 1 << 40, _core.MAX_TIERS) == 0


def test_grows_until_max_capacity_then_table_full(name):
    t = shmdict.open(name, shmdict.Counter(), capacity=3, max_capacity=10)
    try:
        for i in range(10):
            assert t.add(i, i) == i
        assert len(t) == 10
        stats = t.stats()
        assert stats["tiers"] == 3 and stats["tier_capacity"] == [3, 3, 4]
        assert stats["tier_live"] == [3, 3, 4] and stats["max_capacity"] == 10
        with pytest.raises(shmdict.TableFull) as err:
            t.add("one more")
        assert str(err.value) == (f"table {name!r} is full: 10 of 10 keys in use; delete "
                                  f"keys or open a table with a larger capacity")
        assert len(t) == 10 and "one more" not in t      # nothing changed
        assert sorted(t.keys()) == list(range(10))
        assert sum(t.read(i)[0] for i in range(10)) == sum(range(10))
        assert t.check()
        # A deleted key frees room in its tier: reused, no new tier.
        assert t.load_and_delete(4) == (4, True)
        t.add("one more", 7)
        assert t.stats()["tiers"] == 3 and t.read("one more") == (7, True)
        assert _tiers_on_disk(name) == [f"shmdict.{name}+t1", f"shmdict.{name}+t2"]
        assert name in shmdict.list_tables()
        assert not any("+t" in n for n in shmdict.list_tables())   # tiers are not tables
    finally:
        t.close()
    shmdict.unlink(name)
    assert _tiers_on_disk(name) == []


def test_default_max_capacity_is_a_fixed_table(name):
    t = shmdict.open(name, shmdict.Counter(), capacity=4)
    try:
        assert t.max_capacity == 4
        for i in range(4):
            t.add(i)
        with pytest.raises(shmdict.TableFull):
            t.add(4)
        assert t.stats()["tiers"] == 1 and _tiers_on_disk(name) == []
    finally:
        t.close()


def test_max_capacity_is_validated(name):
    with pytest.raises(ValueError, match="max_capacity"):
        shmdict.open(name, shmdict.Counter(), capacity=10, max_capacity=9)
    with pytest.raises(TypeError, match="max_capacity"):
        shmdict.open(name, shmdict.Counter(), capacity=10, max_capacity=10.5)
    assert name not in shmdict.list_tables()


def test_attach_takes_max_capacity_from_the_table(name):
    t = shmdict.open(name, shmdict.Counter(), capacity=10, max_capacity=100)
    try:
        other = shmdict.open(name, shmdict.Counter(), capacity=10)   # no LayoutMismatch
        assert other.max_capacity == 100
        with pytest.raises(shmdict.LayoutMismatch):
            shmdict.open(name, shmdict.Counter(), capacity=11, max_capacity=100)
        other.close()
    finally:
        t.close()


def test_every_layout_grows(name):
    for layout, suffix in ((shmdict.Lock(), "l"), (shmdict.Lock(rw=True), "rw"),
                           (shmdict.Struct(n="q", tag="8s"), "s")):
        t = shmdict.open(f"{name}.{suffix}", layout, capacity=2, max_capacity=40)
        try:
            for i in range(40):
                if layout.kind == "Struct":
                    t.set(i, (i, b"x"))
                else:
                    with t[i]:
                        pass
            assert len(t) == 40 and t.stats()["tiers"] > 3
            if layout.kind == "Struct":
                assert t.read(39)[0].n == 39
                with t.update(39) as rec:
                    rec.n += 1
                assert t.read(39)[0].n == 40
            else:
                assert t[39].acquire(timeout=1)
                t[39].release()
            t.delete(39)
            assert 39 not in t and len(t) == 39
            assert t.check()
        finally:
            t.unlink()


def test_stats_count_inserts_and_deletes(name):
    t = shmdict.open(name, shmdict.Counter(), capacity=2, max_capacity=20)
    try:
        for i in range(12):
            t.add(i)
        t.add(0)                          # not an insert
        for i in range(5):
            t.delete(i)
        t.delete("absent")                # not a delete
        stats = t.stats()
        assert (stats["inserts"], stats["deletes"]) == (12, 5)
        assert sum(stats["tier_live"]) == stats["live"] == 7
    finally:
        t.close()


# --------------------------------------------------------------- processes
def _insert_range(name, start, stop):
    t = shmdict.open(name, shmdict.Counter(), capacity=10, max_capacity=10_000)
    for i in range(start, stop):
        t.add(("k", i), i)
    t.close()


def test_a_process_that_opened_before_growth_sees_later_tiers(name):
    t = shmdict.open(name, shmdict.Counter(), capacity=10, max_capacity=10_000)
    try:
        t.add(("k", 0), 0)
        assert t.stats()["tiers"] == 1
        p = CTX.Process(target=_insert_range, args=(name, 1, 2000))
        p.start()
        p.join(60)
        assert p.exitcode == 0
        assert t._tier_maps == []                  # no tier mapped here yet
        assert t.read(("k", 1999)) == (1999, True)    # found in a tier it had not mapped
        assert ("k", 1500) in t
        assert t.add(("k", 1000), 1) == 1001
        assert len(t) == 2000
        assert sorted(t.keys()) == [("k", i) for i in range(2000)]
        assert t.stats()["tiers"] >= 8
        assert t.check()
    finally:
        t.close()


def _read_pickled(blob, out):
    t = pickle.loads(blob)
    total = sum(v for _, v in t.items())
    out.value = total + (t.max_capacity == 5000) * 10**12
    t.add(("k", 4999), 1)
    t.close()


def test_a_grown_table_pickles_into_another_process(name):
    t = shmdict.open(name, shmdict.Counter(), capacity=10, max_capacity=5000)
    try:
        for i in range(3000):
            t.add(("k", i), i)
        out = SPAWN.Value(ctypes.c_longlong, 0)
        p = SPAWN.Process(target=_read_pickled, args=(pickle.dumps(t), out))
        p.start()
        p.join(120)
        assert p.exitcode == 0
        assert out.value == 10**12 + sum(range(3000))
        assert t.read(("k", 4999)) == (1, True)
    finally:
        t.close()


# ----------------------------------- conservation across growth, 50,000 keys
TARGET = 50_000
HOT = 16


def _grow_inserter(name, w, nw, stop_at, full):
    t = shmdict.open(name, shmdict.Counter(), capacity=100, max_capacity=100_000)
    try:
        for i in range(w, stop_at, nw):
            t.add(("new", i), 1)
    except shmdict.TableFull:
        full.value = 1
        raise
    t.close()


def _grow_adder(name, seed, stop, added):
    t = shmdict.open(name, shmdict.Counter(), capacity=100, max_capacity=100_000)
    rng = random.Random(seed)
    total = 0
    while not stop.value:
        for _ in range(50):
            n = rng.randrange(1, 5)
            t.add(("hot", rng.randrange(HOT)), n)
            total += n
    added.value = total
    t.close()


def _grow_drainer(name, seed, stop, drained):
    t = shmdict.open(name, shmdict.Counter(), capacity=100, max_capacity=100_000)
    rng = random.Random(seed)
    total = 0
    while not stop.value:
        value, existed = t.load_and_delete(("hot", rng.randrange(HOT)))
        total += value
    drained.value = total
    t.close()


def test_four_inserters_grow_to_50000_keys_while_others_add_and_drain(name):
    t = shmdict.open(name, shmdict.Counter(), capacity=100, max_capacity=100_000)
    try:
        for h in range(HOT):
            t.add(("hot", h), 0)       # the hot keys start in tier 0
        stop = CTX.Value(ctypes.c_int, 0, lock=False)
        full = CTX.Value(ctypes.c_int, 0)
        added = [CTX.Value(ctypes.c_longlong, 0, lock=False) for _ in range(2)]
        drained = CTX.Value(ctypes.c_longlong, 0, lock=False)
        inserters = [CTX.Process(target=_grow_inserter, args=(name, w, 4, TARGET, full))
                     for w in range(4)]
        others = [CTX.Process(target=_grow_adder, args=(name, s, stop, added[s]))
                  for s in range(2)]
        others.append(CTX.Process(target=_grow_drainer, args=(name, 9, stop, drained)))
        for p in others + inserters:
            p.start()
        for p in inserters:
            p.join(120)
        stop.value = 1
        for p in others:
            p.join(60)
        assert [p.exitcode for p in inserters + others] == [0] * 7
        assert not full.value
        # Exact totals: every insert landed once, and every add to a hot key
        # is either still there or was taken by a load_and_delete.
        new_keys = {k: v for k, v in t.items() if k[0] == "new"}
        assert len(new_keys) == TARGET and set(new_keys.values()) == {1}
        remaining = sum(t.read(("hot", h))[0] for h in range(HOT))
        assert sum(a.value for a in added) == drained.value + remaining
        assert drained.value > 0
        stats = t.stats()
        assert stats["tiers"] >= 10 and sum(stats["tier_capacity"]) >= TARGET
        assert stats["inserts"] - stats["deletes"] == stats["live"] == len(t)
        report = t.check()
        assert report, report
    finally:
        t.close()


def test_table_full_exactly_at_max_capacity_across_processes(name):
    t = shmdict.open(name, shmdict.Counter(), capacity=7, max_capacity=1000)
    try:
        full = CTX.Value(ctypes.c_int, 0)
        ps = [CTX.Process(target=_fill_until_full, args=(name, w, full)) for w in range(3)]
        for p in ps:
            p.start()
        for p in ps:
            p.join(60)
        assert [p.exitcode for p in ps] == [0, 0, 0]
        assert full.value == 3                 # each of them was refused, at the end
        assert len(t) == 1000 == sum(t.stats()["tier_live"])
        assert sum(t.stats()["tier_capacity"]) == 1000
        assert t.check()
    finally:
        t.close()


def _fill_until_full(name, w, full):
    t = shmdict.open(name, shmdict.Counter(), capacity=7, max_capacity=1000)
    for i in range(10_000):
        try:
            t.add((w, i))
        except shmdict.TableFull:
            assert len(t) == 1000
            with full.get_lock():   # three processes count here: += is no atomic add
                full.value += 1
            break
    t.close()


# ------------------------------------------------------- SIGKILL campaign
def _killable_inserter(name, w, start, progress, allowed):
    t = shmdict.open(name, shmdict.Counter(), capacity=20, max_capacity=CAMPAIGN_MAX,
                     stripe_poll=POLL, stall_timeout=STALL)
    i = start
    while True:
        while sum(progress) >= allowed.value:
            time.sleep(0.001)        # the kills pace the keys (see the test)
        t.add((w, i), 1)
        progress[w] = i + 1          # keys (w, < i + 1) are in, for good
        i += 1
        if i % 8 == 0:
            time.sleep(0.0005)       # paced, so that many kills fall in each tier


CAMPAIGN_MAX = 100_000
KEYS_PER_KILL = 1_500


def test_sigkill_campaign_during_growth_loses_nothing(name):
    t = shmdict.open(name, shmdict.Counter(), capacity=20, max_capacity=CAMPAIGN_MAX,
                     stripe_poll=POLL, stall_timeout=STALL)
    workers = 3
    progress = CTX.Array(ctypes.c_longlong, workers, lock=False)
    # The workers insert at most KEYS_PER_KILL keys per kill so far, so the
    # campaign reaches its kills before its keys fill half the table,
    # however the machine's (or the ASan build's) speeds of inserting and of
    # restarting compare: CI's ASan run once stopped at 50,000 keys after 20.
    allowed = CTX.Value(ctypes.c_longlong, KEYS_PER_KILL, lock=False)
    procs = {}
    starts = [0] * workers          # the first key of each worker's current process
    rng = random.Random(16)
    kills = 0
    in_flight = []
    try:
        # At least 6 s and 25 kills (a loaded machine, or the ASan build,
        # kills fewer per second), at most 60 s.
        started = time.monotonic()
        while ((time.monotonic() - started < 6.0 or kills < 25)
               and time.monotonic() - started < 60.0
               and sum(progress) < CAMPAIGN_MAX // 2):
            for w in range(workers):
                if w not in procs or not procs[w].is_alive():
                    if w in procs:       # only ever killed, never failed by itself
                        procs[w].join(10)
                        assert procs[w].exitcode == -signal.SIGKILL, procs[w].exitcode
                    # The key the dead one had in flight may have landed or
                    # not: skip it (an add again would count it twice).  It is
                    # its first key when it died before finishing one, so a
                    # worker killed twice at the same progress skips on.
                    if w in procs:
                        in_flight.append((w, max(progress[w], starts[w])))
                        start = in_flight[-1][1] + 1
                    else:
                        start = progress[w]
                    starts[w] = start
                    procs[w] = CTX.Process(target=_killable_inserter,
                                           args=(name, w, start, progress, allowed))
                    procs[w].start()
            time.sleep(rng.uniform(0.0, 0.05))
            victim = rng.randrange(workers)
            os.kill(procs[victim].pid, signal.SIGKILL)
            procs[victim].join(10)
            kills += 1
            allowed.value += KEYS_PER_KILL
        for p in procs.values():
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
            p.join(10)
            assert p.exitcode == -signal.SIGKILL, p.exitcode
        assert kills > 20
        tiers_before = t.stats()["tiers"]
        assert tiers_before >= 5, "the campaign should have spanned several growth steps"
        report = t.check()           # takes over what the dead left, and repairs it
        assert report, report
        report = t.check()
        assert report and not report.repaired, report
        # Nothing lost: every add that returned is there exactly once; the one
        # in flight when a worker died is there with 1, or absent.
        values = dict(t.items())
        for w, progress_at_end in enumerate(progress):
            in_flight.append((w, max(progress_at_end, starts[w])))
        unsure = set(in_flight)
        for w in range(workers):
            for i in range(progress[w]):
                if (w, i) not in unsure:
                    assert values.get((w, i)) == 1, (w, i)
        # (add() of a new key inserts it holding 1: never 0.)
        odd = {k: values[k] for k in unsure if values.get(k, 1) != 1}
        assert not odd, odd
        assert len(values) >= sum(progress) - len(unsure)
        done = {(w, i) for w in range(workers) for i in range(progress[w])}
        assert set(values) <= done | unsure
        # And the table keeps growing.
        more = sum(t.stats()["tier_capacity"]) - len(t) + 10
        for i in range(more):
            t.add(("after", i))
        assert t.stats()["tiers"] > tiers_before and t.check()
    finally:
        for p in procs.values():
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
                p.join(10)
        t.close()


def _die_creating_tier(name, publish_magic):
    """Create tier 1 by hand and die before it is published (like a creator
    SIGKILLed mid-growth): without magic, or with magic but not counted."""
    t = shmdict.open(name, shmdict.Counter(), capacity=5, max_capacity=100)
    if publish_magic:
        segment.open_tier(name, 1, t._geometry, t._segment.header, create=True,
                          sharing=t._segment.sharing)
    else:
        import fcntl
        shm = posix_ipc.SharedMemory(segment.segment_name(segment.tier_name(name, 1)),
                                     posix_ipc.O_CREX, mode=0o600)
        fcntl.flock(shm.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(shm.fd, 4096)
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("publish_magic", [False, True])
def test_a_tier_whose_creator_died_is_taken_over(name, publish_magic):
    t = shmdict.open(name, shmdict.Counter(), capacity=5, max_capacity=100)
    try:
        for i in range(5):
            t.add(i)
        p = CTX.Process(target=_die_creating_tier, args=(name, publish_magic))
        p.start()
        p.join(30)
        assert p.exitcode == -signal.SIGKILL
        assert _tiers_on_disk(name) == [f"shmdict.{name}+t1"]
        assert t._core.published_tiers() == 1
        for i in range(5, 60):                  # grows through the abandoned tier
            t.add(i)
        assert len(t) == 60 and t.stats()["tiers"] >= 4
        assert t.check()
    finally:
        t.close()


# ------------------------------------------------------- the insert, in C
def test_a_new_keys_insert_runs_no_python_code(name):
    # Issue 15: the stripe is taken, the key inserted and the stripe released
    # in C (before, every new key went through Table._insert and
    # Stripes.acquire).  A profile hook sees every Python-level call.
    import sys
    t = shmdict.open(name, shmdict.Counter(), capacity=100, max_capacity=200)
    try:
        t.add("warm")
        add = t._core.add
        calls = []

        def hook(frame, event, arg):
            if event == "call":
                calls.append(frame.f_code.co_name)

        sys.setprofile(hook)
        try:
            for i in range(50):
                add(("fresh", i))
        finally:
            sys.setprofile(None)
        assert calls == []
        assert len(t) == 51 and t.stats()["inserts"] == 51
        # Growth is the exception: Python adds the tier.
        sys.setprofile(hook)
        try:
            for i in range(60):
                add(("more", i))
        finally:
            sys.setprofile(None)
        assert "_grow" in calls and t.stats()["tiers"] == 2
    finally:
        t.close()


def test_a_lost_tier_is_corrupt_segment_and_leaves_nothing_mapped(name):
    t = shmdict.open(name, shmdict.Counter(), capacity=2, max_capacity=20)
    try:
        for i in range(6):
            t.add(i)
        assert t.stats()["tiers"] == 3
        posix_ipc.unlink_shared_memory(segment.segment_name(segment.tier_name(name, 2)))
        with pytest.raises(shmdict.CorruptSegment, match="lost its tier 2"):
            shmdict.open(name, shmdict.Counter(), capacity=2)
        assert t.read(5) == (1, True)          # those attached go on working
    finally:
        t.close()


def test_threads_of_one_process_grow_it_once_per_tier(name):
    # Threads of one process share its Core: two must not both add a tier.
    import threading
    t = shmdict.open(name, shmdict.Counter(), capacity=4, max_capacity=20_000)
    errors = []

    def insert(w):
        try:
            for i in range(3000):
                t.add((w, i))
        except BaseException as exc:     # reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=insert, args=(w,)) for w in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert errors == [] and len(t) == 12_000
        assert t.stats()["tiers"] == len(_tiers_on_disk(name)) + 1
        assert t.check()
    finally:
        t.close()
