"""The Lock layout: threading.Lock semantics across real processes, dead owners."""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import pytest
from helpers import run_to_completion

import shmdict

ctx = multiprocessing.get_context("fork")


@pytest.fixture
def locks(name):
    table = shmdict.open(name, shmdict.Lock(), capacity=100)
    yield table
    table.close()


def _hold(table, key, ready, release):
    with table[key]:
        ready.set()
        release.wait(30)


def _start_holder(table, key):
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(table, key, ready, release))
    p.start()
    assert ready.wait(10)
    return p, release


def test_threading_lock_interface(locks):
    h = locks["row"]
    assert not h.locked() and h.owner is None
    assert h.acquire() is True
    assert h.locked() and h.owner == os.getpid() and not h.recovered
    h.release()
    assert not h.locked()
    with locks["row"] as held:
        assert held.locked()
    assert not locks["row"].locked()
    with pytest.raises(RuntimeError):
        locks["row"].release()
    with pytest.raises(shmdict.NotOwner):
        locks["never"].release()
    with pytest.raises(ValueError):
        h.acquire(blocking=False, timeout=1)


def test_other_process_holds(locks):
    p, release = _start_holder(locks, "row")
    try:
        h = locks["row"]
        assert h.locked() and h.owner == p.pid
        assert h.acquire(blocking=False) is False
        assert h.acquire(timeout=0.2) is False
        with pytest.raises(RuntimeError):
            h.release()                      # held by the other process
        with pytest.raises(shmdict.LockHeld):
            locks.delete("row")
        assert "row" in locks
    finally:
        release.set()
        p.join()
    assert locks["row"].acquire(timeout=5)
    locks["row"].release()
    locks.delete("row")
    assert "row" not in locks


def _increment_under_lock(locks, counters, keys, rounds):
    for i in range(rounds):
        key = keys[i % len(keys)]
        with locks[key]:
            value, _ = counters.read(key)    # a non-atomic read-modify-write
            counters.set(key, value + 1)


def test_mutual_exclusion_4_processes(name, locks):
    counters = shmdict.open(name + ".c", shmdict.Counter(), capacity=100)
    try:
        keys = [f"k{i}" for i in range(10)]
        procs = [ctx.Process(target=_increment_under_lock, args=(locks, counters, keys, 20_000))
                 for _ in range(4)]
        run_to_completion(procs)
        assert counters.read("k0") == (8_000, True)
        assert sum(counters.values()) == 80_000
    finally:
        counters.unlink()


def _killed_holder(table, key, ready):
    table[key].acquire()
    ready.set()
    time.sleep(60)


@pytest.mark.parametrize("someone_waiting", [False, True])
def test_sigkilled_holder_is_replaced_and_reported(locks, someone_waiting):
    ready = ctx.Event()
    p = ctx.Process(target=_killed_holder, args=(locks, "row", ready))
    p.start()
    assert ready.wait(10)
    if someone_waiting:
        waiter = ctx.Process(target=_acquire_report, args=(locks, "row", q := ctx.Queue()))
        waiter.start()
        time.sleep(0.2)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    if someone_waiting:
        got, recovered, waited = q.get(timeout=10)
        waiter.join()
        assert got and recovered
        assert waited < 5          # the bound is 50 ms; this only catches a hang
    else:
        h = locks["row"]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert h.acquire(timeout=5)
        assert h.recovered
        assert any(issubclass(w.category, shmdict.OwnerDiedWarning) for w in caught)
        h.release()
        assert h.acquire(timeout=1) and not h.recovered   # the table stays usable
        h.release()


def _acquire_report(table, key, q):
    warnings.simplefilter("ignore")
    h = table[key]
    start = time.monotonic()
    got = h.acquire(timeout=8)
    q.put((got, h.recovered, time.monotonic() - start))
    if got:
        h.release()


def test_wait_is_interruptible_by_ctrl_c(name, locks):
    p, release = _start_holder(locks, "row")
    try:
        code = textwrap.dedent(f"""
            import shmdict, sys
            d = shmdict.open({name!r}, shmdict.Lock(), capacity=100)
            print("waiting", flush=True)
            try:
                d["row"].acquire()
            except KeyboardInterrupt:
                sys.exit(42)
            sys.exit(1)
        """)
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "waiting"
        time.sleep(0.3)
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=10) == 42
    finally:
        release.set()
        p.join()


# ------------------------------------------------------------------ rw locks
def _reader(table, key, counters, rounds):
    for _ in range(rounds):
        with table[key].read():
            inside = counters.add("readers_inside")
            counters.cas("max_readers", 0, 0, True)
            while True:
                best, _ = counters.read("max_readers")
                if inside <= best or counters.cas("max_readers", best, inside):
                    break
            a, _ = counters.read("a")
            time.sleep(0.0005)
            b, _ = counters.read("b")
            if a != b:
                counters.add("torn")
            counters.add("readers_inside", -1)


def _writer(table, key, counters, rounds):
    for i in range(rounds):
        with table[key].write():
            if counters.read("readers_inside")[0] != 0:
                counters.add("writer_saw_readers")
            counters.set("a", i)
            time.sleep(0.0002)
            counters.set("b", i)


def test_rw_readers_share_writers_exclude(name):
    rw = shmdict.open(name, shmdict.Lock(rw=True), capacity=10)
    counters = shmdict.open(name + ".c", shmdict.Counter(), capacity=10)
    try:
        procs = [ctx.Process(target=_reader, args=(rw, "row", counters, 300)) for _ in range(3)]
        procs.append(ctx.Process(target=_writer, args=(rw, "row", counters, 300)))
        run_to_completion(procs)
        assert counters.read("torn") == (0, False)
        assert counters.read("writer_saw_readers") == (0, False)
        assert counters.read("max_readers")[0] >= 2     # readers did run together
    finally:
        rw.unlink()
        counters.unlink()


def _killed_rw(table, key, shared, ready):
    handle = table[key].read() if shared else table[key].write()
    handle.acquire()
    ready.set()
    time.sleep(60)


@pytest.mark.parametrize("shared", [True, False])
def test_rw_dead_holder_is_cleared(name, shared):
    rw = shmdict.open(name, shmdict.Lock(rw=True), capacity=10)
    try:
        ready = ctx.Event()
        p = ctx.Process(target=_killed_rw, args=(rw, "row", shared, ready))
        p.start()
        assert ready.wait(10)
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        writer = rw["row"].write()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert writer.acquire(timeout=5)
        assert writer.recovered == (not shared)
        writer.release()
    finally:
        rw.unlink()


def test_read_write_need_rw(locks):
    with pytest.raises(TypeError, match="rw=True"):
        locks["row"].read()
