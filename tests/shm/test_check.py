"""``check``: a consistency report that finds what a corrupted or crashed table holds."""
from __future__ import annotations

import shmdict
from shmdict.backends.shm import _core


def slot_offset(table, slot: int) -> int:
    header = table._segment.header
    return header["data_offset"] + slot * header["slot_size"]


def filled(name: str, n: int = 20):
    table = shmdict.open(name, shmdict.Counter(), capacity=100)
    for i in range(n):
        table.add(("k", i), i)
    return table


def test_consistent_table_reports_ok(name):
    table = filled(name)
    try:
        for i in range(5):
            table.delete(("k", i))
        report = table.check()
        assert report and report.ok and not report.problems
        assert report.live == 15 and report.tombstones == 5
        assert report.counted["published"] == 15 and report.counted["tombstone"] == 5
        assert "OK" in str(report)
        assert report.as_dict()["ok"] is True
    finally:
        table.close()


def test_wrong_live_count_is_reported(name):
    table = filled(name)
    try:
        _core.store_u64(table._segment.mm, _core.HEADER_FIELDS["live"][0], 7)
        report = table.check()
        assert not report
        assert any("live count 7" in p for p in report.problems)
        assert "INCONSISTENT" in str(report)
    finally:
        table.close()


def test_duplicate_key_is_reported(name):
    table = filled(name, 3)
    try:
        slot, state, _ = table._locate(("k", 1), False)
        empty = next(i for i in range(table._segment.header["nslots"])
                     if table._core.slot_info(i)[0] == 0)
        mm = table._segment.mm
        size = table._segment.header["slot_size"]
        src, dst = slot_offset(table, slot), slot_offset(table, empty)
        mm[dst:dst + size] = mm[src:src + size]
        report = table.check()
        assert not report
        assert any("also present" in p for p in report.problems)
    finally:
        table.close()


def test_garbage_key_bytes_and_lengths_are_reported(name):
    table = filled(name, 3)
    try:
        slot, state, _ = table._locate(("k", 2), False)
        mm = table._segment.mm
        at = slot_offset(table, slot)
        key_at = at + _core.SLOT_HEADER
        mm[key_at:key_at + 2] = b"\x09\x09"        # an unknown key tag
        report = table.check()
        assert not report
        assert any("undecodable key" in p or "hash tag" in p for p in report.problems)
        # A key length beyond key_size in a published state word.
        slot, state, _ = table._locate(("k", 0), False)
        bad = (state & ~(0xFFF << 20)) | (4000 << 20)
        _core.store_u64(mm, slot_offset(table, slot), bad)
        report = table.check()
        assert any("exceeds key_size" in p for p in report.problems)
    finally:
        table.close()


def test_claim_of_a_dead_process_is_reported(name):
    table = filled(name, 3)
    try:
        empty = next(i for i in range(table._segment.header["nslots"])
                     if table._core.slot_info(i)[0] == 0)
        _core.store_u64(table._segment.mm, slot_offset(table, empty), 1 | (4 << 32))
        report = table.check()
        assert not report
        assert any("claimed but never published" in p for p in report.problems)
    finally:
        table.close()


def test_tombstone_drift_is_corrected_not_failed(name):
    table = filled(name, 5)
    try:
        table.delete(("k", 1))
        _core.store_u64(table._segment.mm, _core.HEADER_FIELDS["tombstones"][0], 3)
        report = table.check()
        assert report, str(report)
        assert any("tombstone count 3 corrected to 1" in r for r in report.repaired)
        assert table._core.counts() == (4, 1)
    finally:
        table.close()


def test_broken_probe_chain_is_reported(name):
    table = shmdict.open(name, shmdict.Counter(), capacity=30)
    try:
        for i in range(30):
            table.add(i)
        # Find a key not in its home slot, and empty the slot before it.
        nslots = table._segment.header["nslots"]
        moved = None
        for i in range(30):
            encoded, h = table._encode(i)
            slot = table._locate(i, False)[0]
            home = (h * nslots) >> 64
            if slot != home:
                moved = (home, slot)
                break
        assert moved is not None      # 30 keys in 40 slots: some are displaced
        _core.store_u64(table._segment.mm, slot_offset(table, moved[0]), 0)
        report = table.check()
        assert not report
        assert any(f"slot {moved[1]}: key not reachable" in p for p in report.problems)
    finally:
        table.close()
