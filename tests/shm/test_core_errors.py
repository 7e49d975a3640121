"""The core's one error channel: its result codes, and the exceptions it raises itself."""
from __future__ import annotations

import mmap

import pytest

import shmdict
from shmdict.backends.shm import _core
from shmdict.layouts import Outcome


def test_outcome_is_the_cores_codes():
    # The Redis backend uses Outcome without importing the core: its values
    # are spelled out, and must stay the core's.
    for member in Outcome:
        assert member.value == getattr(_core, member.name), member
    assert {m.name for m in Outcome} == {"OK", "RECOVERED", "TIMEOUT", "STALE", "NOT_OWNER",
                                         "BUSY"}
    assert all(m.value >= 0 for m in Outcome)   # -1 is "an exception is set" in C


def test_table_full_is_raised_by_the_core_with_its_message(name):
    table = shmdict.open(name, shmdict.Counter(), capacity=3)
    try:
        for i in range(3):
            table.add(i)
        encoded, h = table._encode("new")
        stripe = h % table._nstripes
        table._stripes.acquire(stripe)
        try:
            with pytest.raises(shmdict.TableFull) as err:
                table._core.insert(encoded, h, 0, b"")
        finally:
            table._stripes.release(stripe)
        assert str(err.value) == (
            f"table {name!r} is full: 3 of 3 keys in use; delete keys or open a table "
            f"with a larger capacity")
        assert table._core.counts() == (3, 0)      # nothing was changed
    finally:
        table.close()


def test_bad_geometry_is_corrupt_segment_and_value_error(name):
    table = shmdict.open(name, shmdict.Counter(), capacity=10)
    try:
        h = table._segment.header
        kwargs = dict(name=name, nslots=h["nslots"], slot_size=h["slot_size"],
                      key_size=h["key_size"], extra_size=0, nstripes=h["nstripes"],
                      capacity=h["capacity"], stripes_offset=h["stripes_offset"],
                      data_offset=h["data_offset"], default_word0=0, default_extra=b"",
                      hash_function=hash, seed=0, resolve=print, insert=print,
                      insert_with=print, cache_limit=10, max_capacity=h["capacity"],
                      grow=None, attach_tiers=None,
                          expiry_guard=0)
        _core.Core(table._segment.mm, **kwargs).close()   # the real geometry is accepted
        for field, value in [("nslots", h["nslots"] + 1), ("slot_size", 8),
                             ("data_offset", 1 << 40), ("nstripes", _core.MAX_STRIPES + 1),
                             ("capacity", h["nslots"])]:
            with pytest.raises(shmdict.CorruptSegment, match="corrupt table geometry") as err:
                _core.Core(table._segment.mm, **{**kwargs, field: value})
            assert isinstance(err.value, ValueError)
        with mmap.mmap(-1, h["data_offset"]) as small:   # the mapping is too small
            with pytest.raises(_core.CorruptGeometry):
                _core.Core(small, **kwargs)
    finally:
        table.close()


def test_a_writing_bit_left_behind_is_no_torn_record(name):
    """A sequence word left with WRITING set (its writer died mid-copy, or a
    stray write) hides nothing: the current copy is whole, so the core reads
    it lock-free, without TornRecord and without waiting."""
    table = shmdict.open(name, shmdict.Struct(n="q"), capacity=10)
    try:
        table.set("k", (5,))
        slot, state = table._core.locate("k", False)
        header = table._segment.header
        seq_at = (header["data_offset"] + slot * header["slot_size"] + _core.SLOT_HEADER
                  + (header["key_size"] + 7) // 8 * 8)
        mm = table._segment.mm
        _core.store_u64(mm, seq_at, _core.load_u64(mm, seq_at) | _core.RECORD_WRITING)
        assert table._core.record_read(slot, state) == (5).to_bytes(8, "little")
        assert table._core.record_get("k") == (5).to_bytes(8, "little")
        assert table.read("k") == ((5,), True)
    finally:
        table.close()


class _Outrun:
    """A table's core whose lock-free record reads always raise the private
    TornRecord, as when writers complete writes faster than a copy."""

    def __init__(self, core):
        self._real = core

    def __getattr__(self, attr):
        return getattr(self._real, attr)

    def record_get(self, key):
        raise _core.TornRecord("record kept changing while it was read")

    def record_read(self, slot, state, force=False):
        if not force:
            raise _core.TornRecord("record kept changing while it was read")
        return self._real.record_read(slot, state, True)


def test_torn_record_is_private_and_read_falls_back_to_the_record_lock(name):
    table = shmdict.open(name, shmdict.Struct(n="q"), capacity=10)
    real = table._core
    try:
        table.set("k", (5,))
        table._core = _Outrun(real)
        assert table.read("k") == ((5,), True)          # read under the record lock
        assert table.read("missing") == ((0,), False)
        assert dict(table.items()) == {"k": (5,)}
        slot, state = real.locate("k", False)
        assert real.lock_owner(slot, state) == 0         # and released it
    finally:
        table._core = real
        table.close()
