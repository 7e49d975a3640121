"""The Counter layout: verbs, handles, and conservation across real processes."""
from __future__ import annotations

import multiprocessing
import pickle
import subprocess
import sys
import textwrap

import pytest
from helpers import run_to_completion

import shmdict


# --------------------------------------------------------------- verbs
def test_add_read_set_exchange(counter):
    assert counter.add("a") == 1
    assert counter.add("a", 41) == 42
    assert counter.add("a", -2) == 40
    assert counter.read("a") == (40, True)
    assert counter.read("missing") == (0, False)
    assert "missing" not in counter          # read never creates
    counter.set("b", 7)
    assert counter.exchange("b", 9) == 7
    assert counter.read("b") == (9, True)
    assert len(counter) == 2


def test_cas_and_set_on_not_exists(counter):
    assert counter.cas("k", 0, 5) is False           # missing, not created
    assert "k" not in counter
    assert counter.cas("k", 123, 5, set_on_not_exists=True) is True
    assert counter.read("k") == (5, True)
    assert counter.cas("k", 4, 6) is False
    assert counter.cas("k", 5, 6) is True
    assert counter.read("k") == (6, True)
    assert counter.cas("k", 0, 1, True) is False     # exists: plain CAS


def test_handles_and_inplace_add(counter):
    h = counter["x"]                                  # get-or-create
    assert "x" in counter and h.value == 0
    counter["x"] += 5
    counter["x"] -= 2
    assert int(counter["x"]) == 3 and counter["x"] == 3
    assert h.add(2) == 5 and h.exchange(10) == 5
    assert h.cas(10, 11) and not h.cas(10, 12)
    h.set(1)
    assert counter.read("x") == (1, True)
    counter["y"] = 4
    assert counter.read("y") == (4, True)


def test_load_and_load_and_delete(counter):
    h, existed = counter.load("k")
    assert existed is False and h.value == 0
    h, existed = counter.load("k")
    assert existed is True
    counter.add("k", 7)
    assert counter.load_and_delete("k") == (7, True)
    assert counter.load_and_delete("k") == (0, False)
    assert "k" not in counter and len(counter) == 0


def test_delete_is_noop_on_missing(counter):
    counter.delete("nothing")
    del counter["nothing"]
    counter.add("k")
    del counter["k"]
    assert "k" not in counter and counter.read("k") == (0, False)


def test_range_views_never_create(counter):
    for i in range(10):
        counter.add(("k", i), i)
    assert sorted(counter.keys()) == [("k", i) for i in range(10)]
    assert dict(counter.items()) == {("k", i): i for i in range(10)}
    assert sorted(counter.values()) == list(range(10))
    assert sorted(iter(counter)) == sorted(counter.keys())
    seen = []
    counter.range(lambda k, v: seen.append(k) or len(seen) < 3)
    assert len(seen) == 3
    assert len(counter) == 10


def test_overflow_is_an_error_and_changes_nothing(counter):
    counter.set("big", 2**63 - 1)
    with pytest.raises(OverflowError):
        counter.add("big")
    assert counter.read("big") == (2**63 - 1, True)
    with pytest.raises(OverflowError):
        counter.set("big", 2**63)
    with pytest.raises(TypeError):
        counter.add("big", 1.5)


def test_table_full_changes_nothing_and_tombstones_are_reused(name):
    d = shmdict.open(name, shmdict.Counter(), capacity=8)
    try:
        for i in range(8):
            d.add(i)
        with pytest.raises(shmdict.TableFull, match="8 of 8"):
            d.add("one more")
        assert len(d) == 8 and "one more" not in d
        for round_ in range(50):             # churn: deleted slots are reused
            d.delete(round_ % 8)
            d.add(("new", round_))
            d.delete(("new", round_))
            d.add(round_ % 8)
        assert len(d) == 8 and d.check()
    finally:
        d.close()


def test_pickle_reattaches(counter):
    counter.add("p", 3)
    clone = pickle.loads(pickle.dumps(counter))
    try:
        assert clone is not counter and clone.read("p") == (3, True)
        clone.add("p")
        assert counter.read("p") == (4, True)
    finally:
        clone.close()


def test_context_manager_closes(name):
    with shmdict.open(name, shmdict.Counter(), capacity=10) as d:
        d.add("k")
    assert d.closed
    with pytest.raises(ValueError, match="closed"):
        d.add("k")
    with shmdict.open(name, shmdict.Counter(), capacity=10) as again:
        assert again.read("k") == (1, True)


# ------------------------------------------------- processes: conservation
def _adder(table, keys, rounds, offset):
    for i in range(rounds):
        table.add(keys[(i + offset) % len(keys)])


def test_conservation_4_processes(name):
    d = shmdict.open(name, shmdict.Counter(), capacity=2000)
    keys = [f"key-{i}" for i in range(1000)]
    workers = [multiprocessing.Process(target=_adder, args=(d, keys, 200_000, w * 250))
               for w in range(4)]
    run_to_completion(workers)
    assert sum(d.values()) == 800_000
    assert len(d) == 1000 and d.check()
    d.close()


def test_conservation_with_concurrent_load_and_delete(name):
    """Sum of everything load_and_delete returned + what remains == all added."""
    d = shmdict.open(name, shmdict.Counter(), capacity=2000)
    keys = [f"key-{i}" for i in range(1000)]
    ctx = multiprocessing.get_context("fork")
    stop, out = ctx.Event(), ctx.Queue()
    deleter = ctx.Process(target=_take_all, args=(d, keys, stop, out))
    deleter.start()
    adders = [ctx.Process(target=_adder, args=(d, keys, 200_000, w * 250)) for w in range(4)]
    try:
        run_to_completion(adders)
    finally:
        stop.set()                   # a failed adder must not leave the deleter running
    taken, deletes = out.get(timeout=60)
    deleter.join()
    assert deletes > 100, "the deleter must actually have raced the adders"
    assert taken + sum(d.values()) == 800_000
    assert d.check()
    d.close()


def _take_all(table, keys, stop, out):
    taken = deletes = 0
    i = 0
    while not stop.is_set():
        value, existed = table.load_and_delete(keys[i % len(keys)])
        taken += value
        deletes += existed
        i += 7
    out.put((taken, deletes))


def _deleter_plain(table, keys, stop, out):
    deletes = 0
    i = 0
    while not stop.is_set():
        table.delete(keys[i % len(keys)])
        deletes += 1
        i += 3
    out.put(deletes)


def test_plain_delete_races_adders_without_corruption(name):
    """Concurrent delete() and add(): the table stays consistent, and nothing
    that is still present over- or under-counts: every key's value is at most
    what was added to it."""
    d = shmdict.open(name, shmdict.Counter(), capacity=300)
    keys = [f"k{i}" for i in range(100)]
    ctx = multiprocessing.get_context("fork")
    stop, out = ctx.Event(), ctx.Queue()
    deleter = ctx.Process(target=_deleter_plain, args=(d, keys, stop, out))
    deleter.start()
    adders = [ctx.Process(target=_adder, args=(d, keys, 50_000, w)) for w in range(2)]
    try:
        run_to_completion(adders)
    finally:
        stop.set()                   # a failed adder must not leave the deleter running
    assert out.get(timeout=60) > 0
    deleter.join()
    for key, value in d.items():
        assert 0 <= value <= 1000      # each key got 500 adds from each adder
    assert d.check()
    d.close()


# --------------------------------------------------- the Go seed example
def _go_example_worker(table, n):
    for _ in range(n):
        table.add(f"key-{n}")


def test_go_seed_counter_example_with_processes(name):
    d = shmdict.open(name, shmdict.Counter(), capacity=100)
    workers = [multiprocessing.Process(target=_go_example_worker, args=(d, n))
               for n in range(1, 10)]
    run_to_completion(workers)
    lines = [f"Key {k} was added {v} times" for k, v in sorted(d.items())]
    assert lines == [f"Key key-{n} was added {n} times" for n in range(1, 10)]
    d.close()


# ------------------------------------------- separate interpreters attach
def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_attach_from_other_interpreters_survives_their_exit(name):
    _run(f"""
        import shmdict
        d = shmdict.open({name!r}, shmdict.Counter(), capacity=100)
        d.add("from-first", 5)
    """)
    _run(f"""
        import shmdict
        d = shmdict.open({name!r}, shmdict.Counter(), capacity=100)
        assert d.read("from-first") == (5, True)
        d.add("from-second", 7)
    """)   # exits without closing
    out = _run(f"""
        import shmdict
        d = shmdict.open({name!r}, shmdict.Counter(), capacity=100)
        print(sorted(d.items()))
    """)
    assert out.strip() == "[('from-first', 5), ('from-second', 7)]"


def _open_and_add(name, barrier):
    barrier.wait()
    d = shmdict.open(name, shmdict.Counter(), capacity=50)
    d.add("opened")
    d.close()


def test_concurrent_first_opens_make_one_table(name):
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(6)
    procs = [ctx.Process(target=_open_and_add, args=(name, barrier)) for _ in range(6)]
    run_to_completion(procs)
    d = shmdict.open(name, shmdict.Counter(), capacity=50, create=False)
    assert d.read("opened") == (6, True)
    d.close()


def _spawned_add(table):
    table.add("spawned")


def test_table_passes_to_spawned_workers(counter):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_spawned_add, args=(counter,)) for _ in range(2)]
    run_to_completion(procs)
    assert counter.read("spawned") == (2, True)


@pytest.mark.parametrize("sweeps", [True, False], ids=["sweeps", "no-sweeps"])
def test_churn_through_a_small_table_keeps_every_key_reachable(name, sweeps):
    """Thousands of distinct keys inserted and deleted through a full table
    of 54 slots: every live key stays reachable, every deleted one stays
    gone, and the counts add up, with the inserts' tombstone sweeps
    (tests/shm/test_compaction.py) lowering reach under the lookups or
    without them (then every empty slot becomes a tombstone)."""
    d = shmdict.open(name, shmdict.Counter(), capacity=40)
    d._core.set_auto_compact(sweeps)
    live = {}
    try:
        for i in range(5000):
            d.add(("client", i), i)
            live[("client", i)] = i
            if len(live) == 40:
                victim = next(iter(live))
                assert d.load_and_delete(victim) == (live.pop(victim), True)
        assert dict(d.items()) == live
        assert all(d.read(k) == (v, True) for k, v in live.items())
        assert d.read(("client", 0)) == (0, False)
        report = d.check()
        assert report
        if not sweeps:
            assert report.counted["empty"] < 5
    finally:
        d.close()


def test_new_key_created_by_set_and_exchange_hold_the_value(name):
    """add/set/exchange of a new key create it holding the result in one
    insert (the aimed kills of tests/shm/test_killpoints.py check that no
    kill leaves the key at 0)."""
    table = shmdict.open(name, shmdict.Counter())
    try:
        assert table.add("a", 2) == 2
        assert table.exchange("b", 9) == 0
        table.set("c", -1)
        assert dict(table.items()) == {"a": 2, "b": 9, "c": -1}
        assert table.add("d", 2**63 - 1) == 2**63 - 1
        with pytest.raises(OverflowError):
            table.add("d", 1)
        assert table["d"] == 2**63 - 1
    finally:
        table.close()
