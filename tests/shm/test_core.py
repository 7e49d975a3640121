"""The C core object itself: its lifecycle, its buffers, calls racing a close.

Crash cases run in a child interpreter, so that a segfault shows up as a
failed test (a negative return code) instead of killing the test worker.
"""
from __future__ import annotations

import gc
import multiprocessing as mp
import subprocess
import sys
import textwrap
import time
import weakref

import pytest

import shmdict
from shmdict.backends.shm import _core


def run_child(code: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    return proc


# ---------------------------------------------------------------- bounds
@pytest.mark.parametrize("off", [2**64 - 8, 2**64 - 16, 64, 57])
def test_load_store_u64_reject_offsets_past_the_buffer(off):
    # off + 8 used to wrap around for offsets near 2**64, reading/writing
    # 8 bytes before the buffer.
    buf = bytearray(64)
    with pytest.raises(ValueError):
        _core.load_u64(buf, off)
    with pytest.raises(ValueError):
        _core.store_u64(buf, off, 1)
    assert _core.load_u64(bytearray(8), 0) == 0
    with pytest.raises(ValueError):
        _core.load_u64(bytearray(4), 0)


def test_failed_init_leaves_a_closed_core_not_a_null_one():
    # A geometry error used to leave has_view set with base NULL: the next
    # call dereferenced NULL.
    run_child("""
        import mmap
        from shmdict.backends.shm import _core
        m = mmap.mmap(-1, 4096)
        c = _core.Core.__new__(_core.Core)
        try:
            c.__init__(m, name="t", nslots=1, slot_size=16, key_size=8, extra_size=0,
                       nstripes=1, capacity=1, stripes_offset=64, data_offset=128,
                       default_word0=0, default_extra=b"", hash_function=hash, seed=0,
                       resolve=print, insert=print, insert_with=print, cache_limit=10,
                       max_capacity=10, grow=None, attach_tiers=None,
                          expiry_guard=0)
        except ValueError:
            pass
        else:
            raise SystemExit("bad geometry accepted")
        for call in (c.counts, lambda: c.add("k"), lambda: c.word0(0, 0)):
            try:
                call()
            except ValueError:
                pass
            else:
                raise SystemExit("call on a failed Core did not raise")
        m.close()   # the buffer was given back
    """)


def test_uninitialised_core_does_not_crash():
    run_child("""
        from shmdict.backends.shm import _core
        c = _core.Core.__new__(_core.Core)
        c.clear_cache()
        c.close()
        try:
            c.add("k")
        except ValueError:
            pass
        else:
            raise SystemExit("no error")
    """)


# ------------------------------------------------ close while in use
def _hold_lock(name, ready, done):
    table = shmdict.open(name, shmdict.Lock(), capacity=10)
    table["k"].acquire()
    ready.set()
    done.wait(60)
    table["k"].release()
    table.close()


def test_close_from_another_thread_during_a_lock_wait(name):
    # A thread waiting (GIL released) for a lock another process holds while
    # a second thread closes the table used to wake up into an unmapped
    # segment and segfault.
    ctx = mp.get_context("spawn")
    table = shmdict.open(name, shmdict.Lock(), capacity=10)
    table.close()
    ready, done = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(name, ready, done))
    holder.start()
    try:
        assert ready.wait(60)
        run_child("""
            import sys, threading, time
            import shmdict
            t = shmdict.open(sys.argv[1], shmdict.Lock(), capacity=10)
            out = []
            def waiter():
                try:
                    out.append(t["k"].acquire(timeout=30))
                except ValueError as e:
                    out.append(e)
            th = threading.Thread(target=waiter)
            th.start()
            # wait until the waiter announced itself on the lock word
            slot, state = t._core.locate("k", False)
            for _ in range(3000):
                if t._core.word0(slot, state) & 0x40000000:
                    break
                time.sleep(0.01)
            t.close()
            th.join()
            assert isinstance(out[0], ValueError), out
        """, name)
    finally:
        done.set()
        holder.join(60)
    assert holder.exitcode == 0


def test_resolver_closing_the_table_does_not_crash(name):
    # The resolver is Python: while it runs another thread (or a signal
    # handler) may close the table and unmap it.  The C caller used to go on
    # into the slot it returned.
    table = shmdict.open(name, shmdict.Counter(), capacity=10)
    table.add("k")
    table.close()
    run_child("""
        import mmap, os, sys
        import xxhash
        import shmdict
        from shmdict.backends.shm import _core
        t = shmdict.open(sys.argv[1], shmdict.Counter(), capacity=10)
        slot, state = t._core.locate("k", False)
        h = t._segment.header
        fd = os.open("/dev/shm/shmdict." + sys.argv[1], os.O_RDWR)
        mm = mmap.mmap(fd, 0)
        os.close(fd)
        def resolver(key, create):
            core.close()
            mm.close()          # unmapped: the Core must not touch it now
            return (slot, state)
        core = _core.Core(mm, name=t.name, nslots=h["nslots"], slot_size=h["slot_size"],
                          key_size=h["key_size"], extra_size=h["extra_size"],
                          nstripes=h["nstripes"], capacity=h["capacity"],
                          stripes_offset=h["stripes_offset"], data_offset=h["data_offset"],
                          default_word0=0, default_extra=b"", hash_function=xxhash.xxh3_64_intdigest,
                          seed=h["seed"], resolve=resolver, insert=t._insert,
                          insert_with=t._insert_with, cache_limit=10,
                          max_capacity=h["capacity"], grow=None, attach_tiers=None,
                          expiry_guard=0)
        try:
            core.add(1.5)       # not cacheable: always asks the resolver
        except ValueError:
            pass
        else:
            raise SystemExit("no error")
        t.close()
    """, name)


# ------------------------------------------------------------ leaks
def test_dropped_table_is_collected_and_unmapped(name):
    # Table -> Core -> resolver -> Table: a cycle through the Core, which was
    # not GC-tracked, so a table dropped without close() was never freed and
    # kept its mapping.
    table = shmdict.open(name, shmdict.Counter(), capacity=10)
    table.add("k")
    ref = weakref.ref(table)
    mm = table._segment.mm
    del table
    gc.collect()
    assert ref() is None
    assert mm.closed
    again = shmdict.open(name, shmdict.Counter(), capacity=10)
    assert again.read("k") == (1, True)
    again.close()


# ------------------------------------------------------------- GCRA
def test_gcra_far_future_tat_is_denied_not_wrapped(name):
    # tat near INT64_MAX (d.set on the key, or a corrupted word) made
    # base - now + step overflow (UB) into a negative "ahead": allowed.
    table = shmdict.open(name, shmdict.Counter(), capacity=10)
    try:
        table.set("k", 2**63 - 1)
        allowed, remaining, retry, reset = table._core.gcra("k", 10**6, 10**9, 1)
        assert not allowed
        assert retry > 0 and reset > 0
        assert table.read("k") == (2**63 - 1, True)
        # A huge tolerance allows it, saturating instead of wrapping.
        allowed, *_ = table._core.gcra("k", 10**6, 2**63 - 1, 1)
        assert allowed
        assert table.read("k")[0] == 2**63 - 1
    finally:
        table.close()


# ---------------------------------------------------------- rw locks
def _read_lock_child(name, started, result):
    table = shmdict.open(name, shmdict.Lock(rw=True), capacity=10)
    started.set()
    with table["k"].read():
        result.put("read")
    table.close()


def test_reader_waiting_on_a_writer_sets_the_waiters_bit(name):
    # A reader blocked on a writer slept on the futex without setting the
    # waiters bit, so the writer's release (which wakes only when the bit is
    # set) never woke it: it slept out each 50 ms slice.
    ctx = mp.get_context("spawn")
    table = shmdict.open(name, shmdict.Lock(rw=True), capacity=10)
    try:
        handle = table["k"]
        handle.write().acquire()
        slot, state = table._core.locate("k", False)
        started, result = ctx.Event(), ctx.Queue()
        child = ctx.Process(target=_read_lock_child, args=(name, started, result))
        child.start()
        assert started.wait(60)
        seen = False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if table._core.word0(slot, state) & 0x40000000:
                seen = True
                break
            time.sleep(0.01)
        handle.write().release()
        assert result.get(timeout=60) == "read"
        child.join(60)
        assert child.exitcode == 0
        assert seen, "the waiting reader never announced itself"
    finally:
        table.close()
