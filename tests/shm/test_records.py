"""The Struct layout: records, consistent snapshots, atomic updates, dead writers."""
from __future__ import annotations

import multiprocessing
import os
import signal
import time
import warnings

import pytest
from helpers import run_to_completion

import shmdict

ctx = multiprocessing.get_context("fork")
LAYOUT = shmdict.Struct(tokens=("d", 10.0), stamp="q", tag="8s", ok="?")


@pytest.fixture
def records(name):
    table = shmdict.open(name, LAYOUT, capacity=100)
    yield table
    table.close()


def test_defaults_read_set(records):
    rec, exists = records.read("k")
    assert not exists and "k" not in records
    assert rec == (10.0, 0, b"\x00" * 8, False) and rec.tokens == 10.0
    records.set("k", (1.5, 7, b"abc", True))
    rec, exists = records.read("k")
    assert exists and rec.stamp == 7 and rec.tag == b"abc\x00\x00\x00\x00\x00" and rec.ok
    records.set("k", {"stamp": 9})                # a mapping: others take defaults
    assert records.read("k")[0] == (10.0, 9, b"\x00" * 8, False)
    records["j"] = LAYOUT.record(1.0, 2, b"x", False)
    assert records["j"].stamp == 2 and records["j"].read().tokens == 1.0


def test_bad_records_leave_the_table_intact(records):
    records.set("k", (1.0, 1, b"a", True))
    with pytest.raises(ValueError):
        records.set("k", (1.0, 1))                 # too few fields
    with pytest.raises(ValueError):
        records.set("k", ("x", 1, b"a", True))     # wrong type
    with pytest.raises(ValueError):
        records.set("k", {"nope": 1})
    assert records.read("k")[0].stamp == 1


def test_cas(records):
    old = records.read("k")[0]
    assert records.cas("k", old, old._replace(stamp=1)) is False      # missing
    assert records.cas("k", old, old._replace(stamp=1), set_on_not_exists=True) is True
    assert records.read("k")[0].stamp == 1
    assert records.cas("k", old, old._replace(stamp=2)) is False
    assert records.cas("k", old._replace(stamp=1), old._replace(stamp=2)) is True
    assert records.read("k")[0].stamp == 2


def test_update_writes_back_only_on_clean_exit(records):
    with records.update("k") as rec:
        rec.tokens -= 1
        rec.stamp = 5
        assert rec.recovered is False
    assert records.read("k")[0][:2] == (9.0, 5)
    with pytest.raises(ZeroDivisionError):
        with records.update("k") as rec:
            rec.stamp = 99
            1 / 0
    assert records.read("k")[0].stamp == 5
    with pytest.raises(AttributeError):
        with records.update("k") as rec:
            rec.nope = 1
    assert records.add("k", "stamp", 10) == 15
    with pytest.raises(TypeError):
        records.add("k", "tokens", 1)


def test_load_and_delete_returns_the_record(records):
    records.set("k", (1.0, 3, b"", True))
    rec, existed = records.load_and_delete("k")
    assert existed and rec.stamp == 3
    assert records.load_and_delete("k") == (LAYOUT.record(10.0, 0, b"\x00" * 8, False), False)


def _add_stamp(table, rounds):
    for _ in range(rounds):
        table.add("k", "stamp", 1)


def _update_stamp(table, rounds):
    for _ in range(rounds):
        with table.update("k") as rec:
            rec.stamp += 1


def test_updates_from_processes_lose_nothing(records):
    procs = [ctx.Process(target=_add_stamp, args=(records, 5_000)),
             ctx.Process(target=_update_stamp, args=(records, 5_000)),
             ctx.Process(target=_update_stamp, args=(records, 5_000))]
    run_to_completion(procs)
    assert records.read("k")[0].stamp == 15_000


PAIR = shmdict.Struct(a="q", pad="40s", b="q")


def _writer(table, rounds):
    for i in range(rounds):
        if i % 2:
            table.set("k", (i, b"x" * (i % 40), i))
        else:
            with table.update("k") as rec:
                rec.a = rec.b = i


def _reader(table, rounds, out):
    torn = 0
    for _ in range(rounds):
        rec, _ = table.read("k")
        torn += rec.a != rec.b
    out.put(torn)


def test_snapshots_are_never_torn(name):
    table = shmdict.open(name, PAIR, capacity=10)
    out = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(table, 20_000)),
             ctx.Process(target=_writer, args=(table, 20_000))]
    readers = [ctx.Process(target=_reader, args=(table, 40_000, out)) for _ in range(2)]
    for p in procs + readers:
        p.start()
    torn = [out.get(timeout=120) for _ in readers]
    for p in procs + readers:
        p.join()
        assert p.exitcode == 0
    assert torn == [0, 0]
    table.close()


def _die_inside_update(table, ready):
    with table.update("k") as rec:
        rec.stamp = 12345
        ready.set()
        time.sleep(60)


def test_writer_killed_inside_update(records):
    records.set("k", (1.0, 1, b"", False))
    ready = ctx.Event()
    p = ctx.Process(target=_die_inside_update, args=(records, ready))
    p.start()
    assert ready.wait(10)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    # Readers never block on the dead writer: the record is as it was.
    assert records.read("k")[0].stamp == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with records.update("k") as rec:
            assert rec.recovered
            rec.stamp = 2
    assert any(issubclass(w.category, shmdict.OwnerDiedWarning) for w in caught)
    assert records.read("k")[0].stamp == 2
    with records.update("k") as rec:
        assert not rec.recovered
    assert records.check()


def _update_and_insert(table, ready, go):
    with table.update("a") as rec:
        ready.set()
        go.wait(10)
        for i in range(90):                   # new keys: some share a's stripe
            table.set(("new", i), (1.0, i, b"", True))
        rec.stamp = 7


def test_delete_waits_for_an_update_without_deadlock(records):
    """delete() of a record inside another process's update(), while that
    update inserts keys of the same stripe: both finish."""
    ready, go = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_update_and_insert, args=(records, ready, go))
    p.start()
    assert ready.wait(10)
    deleter = ctx.Process(target=records.delete, args=("a",))
    deleter.start()
    time.sleep(0.2)
    go.set()
    p.join(30)
    deleter.join(30)
    assert p.exitcode == 0 and deleter.exitcode == 0
    assert "a" not in records and len(records) == 90


def test_an_odd_sequence_word_with_a_free_lock_is_repaired_by_a_read(records):
    """A sequence word left odd (a writer killed mid-copy, or a stray write)
    with the record lock free: a read repairs it instead of failing forever."""
    import mmap
    import struct as struct_module
    records.set("k", (2.0, 5, b"x", True))
    from shmdict.backends.shm import _core
    slot, state = records._core.locate("k", False)
    header = records._segment.header
    seq_at = header["data_offset"] + slot * header["slot_size"] + _core.SLOT_HEADER + (
        (header["key_size"] + 7) // 8 * 8)
    with open(f"/dev/shm/shmdict.{records.name}", "r+b") as f:
        mm = mmap.mmap(f.fileno(), 0)
        (seq,) = struct_module.unpack_from("<Q", mm, seq_at)
        struct_module.pack_into("<Q", mm, seq_at, seq | 1)
        mm.close()
    assert records.read("k")[0].stamp == 5
    assert records.read("k")[0].stamp == 5       # and it stays readable
