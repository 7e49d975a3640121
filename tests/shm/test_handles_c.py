"""The C handle types of the shared-memory backend (issue 15).

``d[key]`` on a Lock table, and a Counter handle's ``add``, run C methods
installed on Python subclasses of the documented handle classes
(``_core.bind_lock_handle`` / ``bind_counter_handle``).  These tests pin
that the C path is the one taken, that it keeps every documented behaviour
(``fence``, ``recovered`` and OwnerDiedWarning, NotOwner, threading.Lock's
argument checks), and its misuse: a release from a process that does not
hold the lock, a handle of a closed table, a holder SIGKILLed inside
``with``.  Real processes throughout.
"""
from __future__ import annotations

import math
import multiprocessing
import os
import signal
import threading
import warnings

import pytest
from helpers import run_to_completion

import shmdict
from shmdict.backends.shm import _core
from shmdict.backends.shm.counter import ShmCounterHandle
from shmdict.backends.shm.rowlock import LockTable, ShmLockHandle
from shmdict.handles import CounterHandle, LockHandle

ctx = multiprocessing.get_context("fork")


@pytest.fixture
def locks(name):
    table = shmdict.open(name, shmdict.Lock(), capacity=100)
    yield table
    table.close()


@pytest.fixture
def rwlocks(name):
    table = shmdict.open(name, shmdict.Lock(rw=True), capacity=100)
    yield table
    table.close()


# --------------------------------------------------------------- the C path
def test_lock_handles_are_the_documented_class_with_c_methods(locks):
    h = locks["row"]
    assert type(h) is ShmLockHandle and isinstance(h, LockHandle)
    # The hot methods are C method descriptors, not the Python functions.
    for verb in ("acquire", "release", "__enter__", "__exit__", "locked"):
        assert type(ShmLockHandle.__dict__[verb]).__name__ == "method_descriptor", verb
    assert type(LockTable.__dict__["__getitem__"]).__name__ == "method_descriptor"
    assert type(LockTable.__dict__["get"]).__name__ == "method_descriptor"
    # d.load and d.get give the same class, through either constructor.
    assert type(locks.load("row")[0]) is ShmLockHandle
    assert type(locks.get("row")) is ShmLockHandle


def test_counter_handle_add_is_c_and_exact(counter):
    h = counter["hits"]
    assert type(h) is ShmCounterHandle and isinstance(h, CounterHandle)
    assert type(ShmCounterHandle.__dict__["add"]).__name__ == "method_descriptor"
    assert h.add() == 1 and h.add(41) == 42 and int(h) == 42
    with pytest.raises(TypeError):
        h.add(1.5)
    with pytest.raises(TypeError):
        h.add(1, 2)
    with pytest.raises(OverflowError):
        h.add(2**63 - 1)
    assert counter.read("hits") == (42, True)        # the failed add changed nothing


def test_a_bound_class_cannot_be_replaced():
    class Other(LockHandle):
        __slots__ = ("_core",)

    with pytest.raises(TypeError, match="already bound"):
        _core.bind_lock_handle(Other, LockTable)
    with pytest.raises(TypeError, match="already bound"):
        _core.bind_counter_handle(type("C", (CounterHandle,), {"__slots__": ("_core",)}))


def test_bind_refuses_a_class_without_the_slots():
    class NoCore(LockHandle):
        __slots__ = ()

    with pytest.raises((TypeError, AttributeError)):
        _core.bind_lock_handle(NoCore, LockTable)


# ------------------------------------------------------ documented behaviour
def test_with_block_sets_fence_held_and_releases(locks):
    fences = []
    for _ in range(3):
        with locks["row"] as h:
            assert h.held_by_me and h.locked() and not h.recovered and h._holding
            assert locks["row"].locked() and not h.lease_lost
            fences.append(h.fence)
        assert not h.held_by_me and not h.locked() and not h._holding
    assert fences == sorted(set(fences)) and fences[0] > 0


def test_acquire_arguments_are_threading_locks(locks):
    h = locks["row"]
    with pytest.raises(ValueError, match="NaN"):
        h.acquire(timeout=math.nan)
    with pytest.raises(ValueError, match="non-blocking"):
        h.acquire(False, 1)
    with pytest.raises(ValueError, match="non-negative"):
        h.acquire(timeout=-2)
    with pytest.raises(TypeError):
        h.acquire(wait=True)
    with pytest.raises(TypeError):
        h.acquire(True, 1, 2)
    with pytest.raises(TypeError):
        h.acquire(True, blocking=True)
    assert not h.locked()                     # none of those took it
    assert h.acquire(blocking=True, timeout=1) is True
    assert h.acquire(blocking=False) is False  # held (by this process): not again
    assert h.acquire(timeout=0.01) is False
    h.release()


def test_release_of_a_lock_not_held_raises_not_owner_and_changes_nothing(locks):
    h = locks["row"]
    with pytest.raises(shmdict.NotOwner):
        h.release()
    with pytest.raises(RuntimeError):
        locks["never"].release()
    assert "never" in locks                  # get-or-create, as documented
    with pytest.raises(shmdict.NotOwner):
        with locks["row"] as held:
            held.release()                   # the block's own exit finds it not held


def _release_from_child(table, key, out):
    try:
        table[key].release()
        out.put("released")
    except shmdict.NotOwner:
        out.put("NotOwner")


def test_release_from_another_process_raises_not_owner(locks):
    h = locks["row"]
    h.acquire()
    out = ctx.Queue()
    run_to_completion([ctx.Process(target=_release_from_child, args=(locks, "row", out))])
    assert out.get(timeout=10) == "NotOwner"
    assert h.held_by_me and locks["row"].owner == os.getpid()   # still ours
    h.release()


def test_a_thread_of_the_holding_process_may_release_as_documented(locks):
    # Ownership is per process (the lock word holds a pid), as the Lock
    # layout documents: another thread of the holder releases, as with
    # threading.Lock; a thread releasing a free lock gets NotOwner.
    h = locks["row"]
    h.acquire()
    errors = []

    def release_twice():
        locks["row"].release()
        try:
            locks["row"].release()
        except shmdict.NotOwner as exc:
            errors.append(exc)

    t = threading.Thread(target=release_twice)
    t.start()
    t.join(10)
    assert not t.is_alive() and len(errors) == 1 and not locks["row"].locked()


def test_handles_of_a_closed_table_raise_and_never_crash(name):
    table = shmdict.open(name, shmdict.Lock(), capacity=10)
    h = table["row"]
    h.acquire()
    table.close()
    for call in (h.acquire, h.release, h.locked, h.__enter__, lambda: h.held_by_me,
                 lambda: table["row"], lambda: table.get("other")):
        with pytest.raises(ValueError, match="closed"):
            call()
    counter = shmdict.open(name + "c", shmdict.Counter(), capacity=10)
    try:
        ch = counter["k"]
        counter.close()
        with pytest.raises(ValueError, match="closed"):
            ch.add()
    finally:
        shmdict.unlink(name + "c")


def test_handle_made_by_the_python_constructor_finds_its_core(locks):
    h = ShmLockHandle(locks, "row")       # no _core slot yet: taken from the table
    with h:
        assert locks["row"].owner == os.getpid()
    del h._key
    with pytest.raises(AttributeError):
        h.acquire()


def test_rw_sides_take_the_c_path(rwlocks):
    r1, r2 = rwlocks["row"].read(), rwlocks["row"].read()
    assert type(r1) is ShmLockHandle
    with r1, r2:
        assert r1.held_by_me and r1.fence == 0
        assert rwlocks["row"].write().acquire(timeout=0.05) is False
    with rwlocks["row"].write() as w:
        assert w.held_by_me and w.fence > 0 and not rwlocks["row"].read().acquire(False)


def _die_inside_with(table, key, ready):
    with table[key]:
        ready.set()
        signal.pause()


def test_sigkilled_holder_inside_with_hands_on_with_recovered(locks):
    ready = ctx.Event()
    p = ctx.Process(target=_die_inside_with, args=(locks, "row", ready))
    p.start()
    try:
        assert ready.wait(10)
        before = locks["row"]
        assert before.owner == p.pid and not before.acquire(False)
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
        with pytest.warns(shmdict.OwnerDiedWarning):
            with locks["row"] as h:               # bounded: the owner is dead
                assert h.recovered and h.held_by_me and h.fence > 0
        assert not locks["row"].locked()
        with locks["row"] as again:                  # a clean acquire after it
            assert not again.recovered
    finally:
        if p.is_alive():
            p.kill()
        p.join(10)


def _count_under_lock(table_name, key_names, shared_name, rounds):
    locks = shmdict.open(table_name, shmdict.Lock(), capacity=100)
    plain = shmdict.open(shared_name, shmdict.Counter(), capacity=100)
    for i in range(rounds):
        key = key_names[i % len(key_names)]
        with locks[key]:
            # A non-atomic read-modify-write: only the lock makes it exact.
            value, _ = plain.read(key)
            plain.set(key, value + 1)
    locks.close()
    plain.close()


def test_with_locks_key_excludes_across_processes(name):
    keys, rounds = [f"k{i}" for i in range(10)], 3000
    shared = name + ".n"
    try:
        procs = [ctx.Process(target=_count_under_lock, args=(name, keys, shared, rounds))
                 for _ in range(2)]
        run_to_completion(procs)
        plain = shmdict.open(shared, shmdict.Counter(), capacity=100)
        assert sum(plain.read(k)[0] for k in keys) == 2 * rounds      # none lost
        plain.close()
    finally:
        shmdict.unlink(shared)


def _add_with_handle(table, key, rounds):
    h = table[key]
    for _ in range(rounds):
        h.add(3)


def test_counter_handle_add_conserves_across_processes(counter):
    procs = [ctx.Process(target=_add_with_handle, args=(counter, "k", 5000)) for _ in range(2)]
    run_to_completion(procs)
    assert counter.read("k") == (2 * 5000 * 3, True)


def test_counter_handle_re_creates_a_deleted_key(counter):
    h = counter["k"]
    h.add(5)
    counter.delete("k")
    assert h.add() == 1 and counter.read("k") == (1, True)


def test_lock_handle_survives_its_key_being_deleted_and_re_created(locks):
    h = locks["row"]
    locks.delete("row")
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # nothing is inherited
        with h:                                   # resolves the key again
            assert locks["row"].owner == os.getpid() and not h.recovered


# ------------------------------------------------------------- batch verbs
def test_add_many_of_a_dict_walks_it_in_place(counter):
    counter.add("b", 10)
    batch = {"a": 1, "b": 2, ("t", 1): -3}
    assert counter.add_many(batch) == [1, 12, -3]
    assert counter.add_many(list(batch.items())) == [2, 14, -6]   # pairs: the list path
    with pytest.raises(TypeError):
        counter.add_many({"a": 1.5})
    assert counter.read("a") == (2, True)


def test_add_many_of_a_dict_gives_every_key_its_ttl(counter):
    # The dict path is perf's, ttl= is expiry's: a dict batch once dropped it.
    counter.add("old")
    assert counter.add_many({"old": 1, "new": 2}, ttl=100) == [2, 2]
    for key in ("old", "new"):
        left = counter.ttl(key)
        assert left is not None and 90 < left <= 101   # deadlines round up
    assert counter.add_many([("pair", 1)], ttl=100) == [1] and counter.ttl("pair") is not None
    assert counter.add_many({"plain": 1}) == [1] and counter.ttl("plain") is None


def test_add_many_refuses_a_dict_that_changes_size_under_it(name, monkeypatch):
    # A new key's insert runs in C now; the Python resolve callable still
    # runs for a key the C encoder leaves to it (an int beyond int64).
    from shmdict.backends.shm.counter import CounterTable
    big = 2 ** 70
    batch = {"old": 1, big: 1, "new2": 1}
    original = CounterTable._locate

    def locate_and_grow(self, *args, **kwargs):
        batch.setdefault("grown", 1)           # Python code inside the batch
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CounterTable, "_locate", locate_and_grow)
    table = shmdict.open(name, shmdict.Counter(), capacity=100)
    try:
        table.add("old")                         # in C: the batch is unchanged
        assert "grown" not in batch
        with pytest.raises(RuntimeError, match="changed size"):
            table.add_many(batch)
        # The adds before the change are done, nothing after it, the table whole.
        assert table.read("old") == (2, True) and table.read(big) == (1, True)
        assert table.read("new2") == (0, False)
        assert table.check()
    finally:
        table.close()


# ------------------------------------------------------------ Struct update
@pytest.fixture
def records(name):
    table = shmdict.open(name, shmdict.Struct(tokens="d", n="q"), capacity=100)
    yield table
    table.close()


def test_update_is_c_and_matches_the_python_reference(records):
    from shmdict.backends.shm.records import StructTable, _PyUpdate, _Update
    assert type(StructTable.__dict__["update"]).__name__ == "method_descriptor"
    assert type(_Update.__dict__["__enter__"]).__name__ == "method_descriptor"
    for make in (lambda k: records.update(k), lambda k: _PyUpdate(records, k)):
        key = ("k", id(make))
        with make(key) as rec:
            assert rec.tokens == 0.0 and not rec.recovered
            rec.tokens, rec.n = 2.5, 7
        with pytest.raises(ZeroDivisionError):
            with make(key) as rec:
                rec.n = 99
                1 / 0                                  # nothing written
        with pytest.raises(ValueError, match="cannot pack"):
            with make(key) as rec:
                rec.n = 2**63                          # does not fit: nothing written
        assert records.read(key) == ((2.5, 7), True)
        slot, state = records._core.locate(key, False)
        assert records._core.lock_owner(slot, state) == 0     # every exit released it
        assert not records._updating


def test_update_of_a_closed_table_raises(name):
    table = shmdict.open(name, shmdict.Struct(n="q"), capacity=10)
    cm = table.update("k")
    table.close()
    with pytest.raises(ValueError, match="closed"):
        cm.__enter__()


def test_update_refuses_a_verb_on_its_own_key_inside_the_block(records):
    with records.update("k") as rec:
        rec.n = 1
        with pytest.raises(shmdict.LockHeld):
            records.update("k").__enter__()
    assert records.read("k")[0].n == 1


def _die_inside_update(table, key, ready):
    with table.update(key) as rec:
        rec.n = 41
        ready.set()
        signal.pause()


def test_recovered_update_warning_as_error_still_gives_the_lock_back(records):
    ready = ctx.Event()
    p = ctx.Process(target=_die_inside_update, args=(records, "k", ready))
    p.start()
    assert ready.wait(10)
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", shmdict.OwnerDiedWarning)
        with pytest.raises(shmdict.OwnerDiedWarning):
            with records.update("k"):
                pass
    slot, state = records._core.locate("k", False)
    assert records._core.lock_owner(slot, state) == 0 and not records._updating
    with records.update("k") as rec:                   # and it is usable at once
        rec.n += 1
    assert records.read("k")[0].n == 1                 # the dead writer wrote nothing
