"""The Struct layout: records, consistent snapshots, atomic updates, dead writers."""
from __future__ import annotations

import multiprocessing
import os
import random
import signal
import struct
import time
import warnings

import pytest
from helpers import run_to_completion

import shmdict
from shmdict.backends.shm import _core
from shmdict.layouts import MAX_RECORD_SIZE

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


def test_an_update_that_cannot_be_packed_writes_nothing_and_says_why(records):
    """The C codec's errors (shm/records.py, RecordCodec): a value that does
    not fit is a ValueError naming the values, a deleted field an
    AttributeError; either way nothing is written and the lock is free."""
    records.set("k", {"tokens": 1.0, "stamp": 2, "tag": b"x", "ok": True})
    with pytest.raises(ValueError, match=r"cannot pack record \[1.0, 2, 'str', True\]"):
        with records.update("k") as rec:
            rec.tag = "str"
    with pytest.raises(ValueError, match="cannot pack record"):
        with records.update("k") as rec:
            rec.stamp = 2 ** 70
    with pytest.raises(AttributeError, match="stamp"):
        with records.update("k") as rec:
            del rec.stamp
    assert records.read("k")[0][:3] == (1.0, 2, b"x" + bytes(7))
    with records.update("k") as rec:           # the record lock was given back
        rec.stamp = 3
    assert records.read("k")[0].stamp == 3


def test_record_codec_refuses_what_is_not_a_record():
    codec = _core.RecordCodec(type(_mutable(LAYOUT)), LAYOUT._struct.unpack_from,
                              LAYOUT._struct.pack, LAYOUT._padding, struct.error)
    with pytest.raises(TypeError):
        codec.pack(object())             # another type's memory is never read as slots
    with pytest.raises(TypeError):
        codec.make(b"")                  # (data, recovered)
    with pytest.raises(struct.error):
        codec.make(b"short", False)
    with pytest.raises(TypeError, match="not a __slots__ entry"):
        _core.RecordCodec(type("R", (), {"_fields": ("a",), "recovered": None}),
                          LAYOUT._struct.unpack_from, LAYOUT._struct.pack, b"", struct.error)
    with pytest.raises(TypeError):
        _core.RecordCodec(int, LAYOUT._struct.unpack_from, LAYOUT._struct.pack, b"",
                          struct.error)
    rec = codec.make(LAYOUT.pack({"stamp": 7}), True)
    assert (rec.stamp, rec.recovered) == (7, True)
    assert codec.pack(rec) == LAYOUT.pack({"stamp": 7})


def _mutable(layout):
    from shmdict.records import record_class
    return record_class(layout).__new__(record_class(layout))


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


def test_an_odd_sequence_word_with_a_free_lock_is_read_as_it_is(records):
    """A sequence word left odd (a writer killed mid-copy, or a stray write)
    with the record lock free: the current copy is read, never a failure."""
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


# ------------------------------------------------ writers killed mid-copy
#: A 64 KiB record: the stamp, then the stamp's 8 bytes repeated, so a
#: record mixing two writes shows as words that disagree.
BIG = shmdict.Struct(n="q", fill="65528s")
BIG_WORDS = 65528 // 8


def _seq_at(table, slot):
    header = table._segment.header
    return (header["data_offset"] + slot * header["slot_size"] + _core.SLOT_HEADER
            + (header["key_size"] + 7) // 8 * 8)


def _big_record(i):
    return (i, struct.pack("<Q", i) * BIG_WORDS)


def _big_writer(table, progress, start):
    warnings.simplefilter("ignore")               # OwnerDiedWarning: expected here
    i = start
    while True:
        progress.set("started", i)
        table.set("k", _big_record(i))
        progress.set("done", i)
        i += 1


def test_a_writer_killed_mid_copy_leaves_a_whole_record(name):
    """SIGKILL a process writing 64 KiB records at random moments, dozens of
    times: every read after a kill is one whole record, the last completed
    write or the one in flight, never a mix (a kill inside the copy used to
    leave a torn record for good), and the next writer goes on."""
    table = shmdict.open(name, BIG, capacity=4)
    progress = shmdict.open(name + "-p", shmdict.Counter(), capacity=4)
    rng = random.Random(11)
    try:
        table.set("k", _big_record(0))
        slot, _ = table._core.locate("k", False)
        seq_at = _seq_at(table, slot)
        start, mid_copy, rounds, last = 1, 0, 0, 0
        while rounds < 150 and mid_copy < 12:
            rounds += 1
            p = ctx.Process(target=_big_writer, args=(table, progress, start))
            p.start()
            time.sleep(rng.uniform(0.005, 0.04))
            os.kill(p.pid, signal.SIGKILL)
            p.join()
            seq = _core.load_u64(table._segment.mm, seq_at)
            if seq & _core.RECORD_WRITING and table._core.lock_owner(slot, table._core.locate(
                    "k", False)[1]) == p.pid:
                mid_copy += 1                     # killed inside record_store's copy
            rec, exists = table.read("k")
            assert exists
            assert rec.fill == struct.pack("<Q", rec.n) * BIG_WORDS, f"torn after round {rounds}"
            assert progress.read("done")[0] <= rec.n <= max(progress.read("started")[0], 0)
            assert rec.n >= last                      # never older than a write seen before
            last = rec.n
            start = progress.read("started")[0] + 1
        assert mid_copy, f"no kill landed inside a copy in {rounds} rounds"
        # The next writer after all that: a clean write and read back.
        with pytest.warns(shmdict.OwnerDiedWarning) if table._core.lock_owner(
                slot, table._core.locate("k", False)[1]) else warnings.catch_warnings():
            table.set("k", _big_record(start))
        assert table.read("k")[0].n == start
        assert not _core.load_u64(table._segment.mm, seq_at) & _core.RECORD_WRITING
        assert table.check()
    finally:
        table.close()
        progress.unlink()
        progress.close()


def test_a_half_filled_copy_behind_a_writing_bit_is_never_read(records):
    """The state a writer killed inside its copy leaves (WRITING set, the
    other copy half overwritten), made by hand: readers see the record as it
    was, the next writer fills the other copy again and clears the bit."""
    records.set("k", (2.0, 5, b"x", True))
    slot, state = records._core.locate("k", False)
    mm = records._segment.mm
    seq_at = _seq_at(records, slot)
    seq = _core.load_u64(mm, seq_at)
    assert not seq & _core.RECORD_WRITING
    size = LAYOUT.padded
    current = 1 if seq & _core.RECORD_CURRENT else 0
    other_at = seq_at + 8 + (1 - current) * size
    for k in range(0, size, 8):
        _core.store_u64(mm, other_at + k, 0x5A5A5A5A5A5A5A5A)
    _core.store_u64(mm, seq_at, seq | _core.RECORD_WRITING)
    assert records.read("k")[0] == (2.0, 5, b"x" + bytes(7), True)
    assert records._core.record_read(slot, state) == records._core.record_get("k")
    records.set("k", (3.0, 6, b"y", False))
    assert records.read("k")[0] == (3.0, 6, b"y" + bytes(7), False)
    after = _core.load_u64(mm, seq_at)
    assert after == (seq | _core.RECORD_WRITING) + 1       # published: bit clear, flipped
    assert bool(after & _core.RECORD_CURRENT) != bool(current)


def test_struct_slot_holds_two_copies(name):
    assert LAYOUT.extra_size == 8 + 2 * LAYOUT.padded
    assert LAYOUT.slot_extra() == bytes(8) + LAYOUT.default_extra()[8:] * 2
    table = shmdict.open(name, shmdict.Struct(big=f"{MAX_RECORD_SIZE}s"), capacity=1)
    try:
        table.set("k", (b"z" * MAX_RECORD_SIZE,))
        assert table.read("k")[0].big == b"z" * MAX_RECORD_SIZE
    finally:
        table.close()
    with pytest.raises(ValueError, match="at most"):
        shmdict.Struct(big=f"{MAX_RECORD_SIZE + 1}s")
