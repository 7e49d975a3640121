"""The segment format has one owner, format.h, and Python reads it from ``_core``."""
from __future__ import annotations

import struct

import shmdict
from shmdict import validate
from shmdict.backends.shm import _core, segment


def test_max_key_size_is_the_cores():
    # validate.py bounds key_size before any segment exists; the bound is the
    # longest key a state word can describe.
    assert validate.MAX_KEY_SIZE == _core.MAX_KEY_SIZE == _core.KLEN_MASK


def test_magic_and_version():
    assert _core.MAGIC == int.from_bytes(b"SHMDICT1", "little")
    assert segment.MAGIC == _core.MAGIC and segment.VERSION == _core.FORMAT_VERSION == 5


def test_header_fields_tile_the_header_without_overlap():
    fields = sorted(_core.HEADER_FIELDS.items(), key=lambda f: f[1][0])
    assert fields[0] == ("magic", (0, "Q"))
    end = 0
    for name, (offset, code) in fields:
        size = struct.calcsize("<" + code)
        assert offset >= end, f"{name} overlaps the field before it"
        assert offset % min(size, 8) == 0 or code.endswith("s"), f"{name} is misaligned"
        end = offset + size
    assert end == _core.HEADER_SIZE
    assert _core.HEADER_FIELDS["spec"][1] == f"{_core.SPEC_MAX}s"
    assert _core.STRIPE_FIELDS == {"holder": (0, "Q"), "live": (8, "q"), "journal": (16, "Q"),
                                   "journal_slot": (24, "Q"), "journal_state": (32, "Q"),
                                   "journal_live": (40, "q"), "takeovers": (48, "Q")}
    assert _core.SLOT_FIELDS == {"state": (0, "Q"), "word0": (8, "q"),
                                 "expires": (16, "Q")}
    assert _core.SLOT_HEADER == 24 and _core.STRIPE_SIZE == 64
    # The expires word's generation field is the state word's generation.
    assert _core.EXPIRES_SHIFT == 18 and _core.GEN_MASK == (1 << _core.EXPIRES_SHIFT) - 1


def test_state_word_constants():
    assert _core.KIND_NAMES == {_core.KIND_EMPTY: "empty", _core.KIND_CLAIMED: "claimed",
                                _core.KIND_PUBLISHED: "published",
                                _core.KIND_TOMBSTONE: "tombstone"}
    assert _core.KLEN_SHIFT == 20 and _core.TAG_SHIFT == 32
    assert _core.PID_MASK & _core.WAITERS_BIT == 0


def test_geometry_is_what_the_creator_wrote(name):
    table = shmdict.open(name, shmdict.Struct(a="q", b="16s"), capacity=1000, key_size=40)
    try:
        header = table._segment.header
        shape = _core.geometry(1000, 40, table.layout.extra_size, header["nstripes"])
        for field in ("nslots", "slot_size", "stripes_offset", "data_offset", "size"):
            assert header[field] == shape[field], field
        assert len(table._segment.mm) >= shape["size"]
        # The raw bytes at the core's offsets are what the header says.
        mm = table._segment.mm
        for field in ("capacity", "nslots", "slot_size", "key_size", "nstripes",
                      "stripes_offset", "data_offset", "seed"):
            offset, code = _core.HEADER_FIELDS[field]
            assert struct.unpack_from("<" + code, mm, offset)[0] == header[field], field
        assert _core.load_u64(mm, _core.HEADER_FIELDS["magic"][0]) == _core.MAGIC
    finally:
        table.close()


def test_geometry_rule():
    # Load factor at most 0.75 and one slot always empty; slots a multiple of
    # 16 bytes (24 of header: state, word0, expires).
    for capacity in (1, 2, 3, 4, 10, 1000, 12345):
        shape = _core.geometry(capacity, 64, 0, 16)
        assert shape["nslots"] >= capacity + 1
        assert capacity / shape["nslots"] <= 0.75
        assert shape["nslots"] == max(capacity + 1, -(-capacity * 4 // 3))
    assert _core.geometry(10, 1, 0, 1)["slot_size"] == 32
    assert _core.geometry(10, 8, 0, 1)["slot_size"] == 32
    assert _core.geometry(10, 9, 0, 1)["slot_size"] == 48
    assert _core.geometry(10, 64, 8, 1)["slot_size"] % 16 == 0


def test_stripe_count_limit_is_one_number():
    import pytest
    assert _core.geometry(10, 8, 0, _core.MAX_STRIPES)
    with pytest.raises(ValueError):
        _core.geometry(10, 8, 0, _core.MAX_STRIPES + 1)
    with pytest.raises(ValueError, match="stripe count"):
        segment.Geometry(shmdict.Counter(), 10, 8, nstripes=_core.MAX_STRIPES + 1)


def test_version_3_growth_fields():
    # Online growth (format.h, "Tiers") and the insert/delete statistics,
    # taken from the spec area; the fence keeps the last cache line alone.
    fields = _core.HEADER_FIELDS
    assert [fields[f] for f in ("max_capacity", "tiers", "tier", "inserts", "deletes")] == [
        (128, "Q"), (136, "Q"), (144, "Q"), (152, "Q"), (160, "Q")]
    assert fields["spec_length"] == (168, "H") and fields["spec"][0] == 170
    assert fields["spec"][0] + _core.SPEC_MAX <= fields["fence"][0] == _core.HEADER_SIZE - 64
    assert _core.MAX_TIERS == 64 and _core.TIER_SHIFT == 48


def test_a_new_table_is_tier_0_of_1(name):
    table = shmdict.open(name, shmdict.Counter(), capacity=10, max_capacity=30)
    try:
        mm = table._segment.mm
        read = {f: struct.unpack_from("<" + code, mm, offset)[0]
                for f, (offset, code) in _core.HEADER_FIELDS.items() if code == "Q"}
        assert (read["max_capacity"], read["tiers"], read["tier"]) == (30, 1, 0)
        assert (read["inserts"], read["deletes"]) == (0, 0)
    finally:
        table.close()


def test_a_struct_slot_is_a_sequence_word_and_two_copies(name):
    """format.h, "A Struct slot's extra area": seq 0 (copy 0 current, no
    write in progress), then two copies of the padded record; a write fills
    copy 1 and publishes it with seq 2."""
    layout = shmdict.Struct(a="q", b="5s")
    assert _core.RECORD_WRITING == 1 and _core.RECORD_CURRENT == 2
    table = shmdict.open(name, layout, capacity=4, key_size=8)
    try:
        header = table._segment.header
        assert header["extra_size"] == 8 + 2 * layout.padded == 8 + 2 * 16
        table.set("k", (7, b"old"))
        slot, state = table._core.locate("k", False)
        mm = table._segment.mm
        seq_at = header["data_offset"] + slot * header["slot_size"] + _core.SLOT_HEADER + 8
        copy = [bytes(mm[seq_at + 8 + k * 16:seq_at + 8 + (k + 1) * 16]) for k in (0, 1)]
        assert _core.load_u64(mm, seq_at) == 0 and copy == [layout.pack((7, b"old"))] * 2
        table.set("k", (8, b"new"))
        assert _core.load_u64(mm, seq_at) == 2
        assert bytes(mm[seq_at + 8 + 16:seq_at + 8 + 32]) == layout.pack((8, b"new"))
        assert bytes(mm[seq_at + 8:seq_at + 8 + 16]) == layout.pack((7, b"old"))
    finally:
        table.close()
