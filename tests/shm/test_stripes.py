"""Stripe locks survive a holder SIGKILLed while holding them.

Real processes, real SIGKILL: a process takes a stripe (through the table's
own ``_stripes.acquire``, or by taking the bare semaphore without recording
itself, as a process killed between the wait and the CAS would), and is
killed; other processes blocked on the stripe must continue within the
stated bound (asserted generously: within 10x), and the table stays
consistent.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from typing import List

import pytest

import shmdict
from helpers import leave_dead_insert
from shmdict import stripes
from shmdict.backends.shm import _core

CTX = multiprocessing.get_context("fork")
CAPACITY = 200


def keys_in_stripe(table, stripe: int, count: int, tag: str) -> List[str]:
    """``count`` keys whose hash falls in ``stripe``."""
    out = []
    i = 0
    while len(out) < count:
        key = f"{tag}:{i}"
        if table._encode(key)[1] % table._nstripes == stripe:
            out.append(key)
        i += 1
    return out


def _holder(name: str, stripe: int, recorded: bool, claim_slot: int, conn) -> None:
    """Take ``stripe`` (recorded, or just its semaphore), maybe fake a claim, then sleep."""
    table = shmdict.open(name, shmdict.Counter(), capacity=CAPACITY, create=False)
    if recorded:
        table._stripes.acquire(stripe)
    else:
        table._stripes.semaphores[stripe].acquire()
    if claim_slot >= 0:
        # What a process killed inside an insert leaves: a slot claimed for
        # this stripe, the live counts already reserved, and its journal.
        leave_dead_insert(table, stripe, claim_slot)
    conn.send("holding")
    time.sleep(3600)


def _inserter(name: str, keys: List[str], poll: float, stall: float, conn) -> None:
    table = shmdict.open(name, shmdict.Counter(), capacity=CAPACITY, create=False,
                         stripe_poll=poll, stall_timeout=stall)
    conn.send("started")
    for key in keys:
        table.add(key, 1)
    conn.send(("done", time.monotonic(), table._stripes.takeovers))
    table.close()


def run_kill_scenario(name: str, recorded: bool, poll: float, stall: float,
                      claim_slot: int = -1) -> dict:
    """Holder takes a stripe; two inserters block on it; the holder is SIGKILLed.

    Returns the figures; asserts the inserters were blocked before the kill
    and all finished within 10x the stated bound after it.
    """
    table = shmdict.open(name, shmdict.Counter(), capacity=CAPACITY)
    stripe = 5
    wanted = [keys_in_stripe(table, stripe, 3, tag) for tag in ("a", "b")]
    bound = stall + poll if not recorded else poll
    parent, child = CTX.Pipe()
    holder = CTX.Process(target=_holder, args=(name, stripe, recorded, claim_slot, child))
    holder.start()
    assert parent.recv() == "holding"
    pipes, workers = [], []
    for keys in wanted:
        p, c = CTX.Pipe()
        w = CTX.Process(target=_inserter, args=(name, keys, poll, stall, c))
        w.start()
        assert p.recv() == "started"
        pipes.append(p)
        workers.append(w)
    try:
        # Blocked: nothing gets through while the live holder has the stripe
        # (a recorded holder blocks for as long as it lives; an unrecorded one
        # at least for stall_timeout, after which waiters presume it dead).
        time.sleep(max(0.5, 2 * bound) if recorded else stall / 8)
        assert not any(p.poll(0) for p in pipes), "inserters got past a held stripe"
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
        killed_at = time.monotonic()
        finished = []
        for p in pipes:
            assert p.poll(10 * bound + 5), "an inserter did not continue after the kill"
            msg = p.recv()
            assert msg[0] == "done"
            finished.append(msg)
        for w in workers:
            w.join(30)
            assert w.exitcode == 0
        waited = max(t for _, t, _ in finished) - killed_at
        # Generous: 10x the stated bound (plus process scheduling slack).
        assert waited < 10 * bound + 1.0, f"waited {waited:.2f}s, bound {bound:.2f}s"
        assert sum(n for _, _, n in finished) == 1, "exactly one waiter takes the stripe over"
        for keys in wanted:
            for key in keys:
                assert table.read(key) == (1, True)
        report = table.check()
        assert report, str(report)
        assert table._stripes.semaphores[stripe].value == 1
        assert table._core.stripe_holder(stripe) == 0
        return {"waited": waited, "bound": bound, "report": report}
    finally:
        for w in [holder] + workers:
            if w.is_alive():
                w.kill()
            w.join()
        table.close()


def test_recorded_holder_killed_others_continue(name):
    run_kill_scenario(name, recorded=True, poll=0.1, stall=2.0)


def test_unrecorded_holder_killed_others_continue(name):
    # Killed between the semaphore wait and the holder CAS: nobody is named,
    # so waiters take over after stall_timeout (long enough that a loaded
    # machine cannot deschedule this test past it while it checks that the
    # inserters are still blocked).
    run_kill_scenario(name, recorded=False, poll=0.05, stall=2.0)


def test_holder_killed_mid_insert_is_repaired(name):
    # The dead holder left a claimed, never published slot and a reserved
    # count: the waiter that takes over drops the claim and recounts.
    result = run_kill_scenario(name, recorded=True, poll=0.05, stall=1.0, claim_slot=0)
    table = shmdict.open(name, shmdict.Counter(), capacity=CAPACITY)
    try:
        assert table._core.slot_info(0)[0] in (0, 2, 3)   # not left claimed
        assert len(table) == 6
    finally:
        table.close()
    assert result["report"].counted["claimed"] == 0


def _dying_holder(name: str, stripe: int, capacity: int, what: str, conn) -> None:
    """Take ``stripe``, leave what a holder killed mid-operation leaves
    (``what``: "insert", "delete" or "garbage"), say so, and wait to be killed."""
    table = shmdict.open(name, shmdict.Counter(), capacity=capacity, create=False)
    table._stripes.acquire(stripe)
    header, mm = table._segment.header, table._segment.mm
    free = next(i for i in range(header["nslots"]) if table._core.slot_info(i)[0] == 0)
    if what in ("insert", "garbage"):
        leave_dead_insert(table, stripe, free)
    if what == "garbage":
        record = header["stripes_offset"] + stripe * _core.STRIPE_SIZE
        _core.store_u64(mm, record + _core.STRIPE_FIELDS["journal"][0], 0x7777)
    if what == "delete":
        # Its delete's journal written and the tombstone landed; the counts
        # not yet decremented.
        key = keys_in_stripe(table, stripe, 1, "k")[0]
        slot, state = table._core.locate(key, False)[:2]
        record = header["stripes_offset"] + stripe * _core.STRIPE_SIZE
        field = {f: record + off for f, (off, _) in _core.STRIPE_FIELDS.items()}
        _core.store_u64(mm, field["journal_live"], _core.load_u64(mm, field["live"]))
        _core.store_u64(mm, field["journal_state"], state)
        _core.store_u64(mm, field["journal_slot"], slot)
        _core.store_u64(mm, field["journal"], _core.JOURNAL_DELETE)
        tomb = _core.KIND_TOMBSTONE | (state & (_core.GEN_MASK << _core.GEN_SHIFT))
        _core.store_u64(mm, header["data_offset"] + slot * header["slot_size"], tomb)
        tombstones = _core.HEADER_FIELDS["tombstones"][0]
        _core.store_u64(mm, tombstones, _core.load_u64(mm, tombstones) + 1)
    conn.send("holding")
    time.sleep(3600)


def _take_over_after(name: str, stripe: int, capacity: int, what: str, monkeypatch):
    """Fill a table, let a holder of ``stripe`` die leaving ``what``, then
    insert a key of that stripe here (which takes the stripe over), counting
    the key hashes the insert and its repair compute.  (table, hashes)."""
    table = shmdict.open(name, shmdict.Counter(), capacity=capacity, stripe_poll=0.05)
    for i in range(capacity // 2):
        table.add(f"k:{i}")
    table.close()
    parent, child = CTX.Pipe()
    holder = CTX.Process(target=_dying_holder, args=(name, stripe, capacity, what, child))
    holder.start()
    assert parent.recv() == "holding"
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    import xxhash
    calls = [0]
    real = xxhash.xxh3_64_intdigest

    def counting(data, seed=0):
        calls[0] += 1
        return real(data, seed)

    monkeypatch.setattr(xxhash, "xxh3_64_intdigest", counting)
    table = shmdict.open(name, shmdict.Counter(), capacity=capacity, stripe_poll=0.05)
    key = keys_in_stripe(table, stripe, 1, "new")[0]
    before = calls[0]
    table.add(key, 5)
    assert table._stripes.takeovers == 1
    return table, calls[0] - before


def test_takeover_settles_the_dead_insert_from_its_journal(name, monkeypatch):
    """A dead holder's insert is settled from the stripe's journal: its
    claim dropped and the count put back, without hashing every key of the
    table as the whole-table recount did (0.25 s at 1.8 M keys)."""
    table, hashes = _take_over_after(name, 5, 20_000, "insert", monkeypatch)
    try:
        assert hashes < 10, f"the takeover hashed {hashes} keys"
        assert len(table) == 10_001
        report = table.check()
        assert report and not report.repaired, str(report)
        assert report.counted["claimed"] == 0
    finally:
        table.close()


def test_takeover_settles_the_dead_delete_from_its_journal(name, monkeypatch):
    """Killed after its tombstone, before its counts: the taker counts it out."""
    table, hashes = _take_over_after(name, 5, 20_000, "delete", monkeypatch)
    try:
        assert hashes < 10, f"the takeover hashed {hashes} keys"
        assert len(table) == 10_000        # one deleted, one inserted
        report = table.check()
        assert report and not report.repaired, str(report)
    finally:
        table.close()


def test_garbage_journal_falls_back_to_a_recount(name, monkeypatch):
    """A journal no holder could have written (a co-tenant's bytes): the
    taker recounts the stripe from the slots, dropping the dead claim."""
    table, hashes = _take_over_after(name, 5, 2_000, "garbage", monkeypatch)
    try:
        assert hashes >= 1_000          # the whole-table recount ran
        assert len(table) == 1_001
        report = table.check()
        assert report and not report.repaired, str(report)
        assert report.counted["claimed"] == 0
    finally:
        table.close()


def _dies_holding(name: str, stripe: int, conn) -> None:
    table = shmdict.open(name, shmdict.Counter(), capacity=CAPACITY, create=False)
    table._stripes.acquire(stripe)
    conn.send("holding")
    time.sleep(60)


def _taker_that_stops(name: str, stripe: int, conn) -> None:
    """Take ``stripe`` over from its dead holder (so this process's holder
    word carries the takeover bit), say so, and release it when told."""
    table = shmdict.open(name, shmdict.Counter(), capacity=CAPACITY, create=False,
                         stripe_poll=0.02, stall_timeout=0.3)
    assert table._core.stripe_acquire(stripe) is not None      # (dropped, delta)
    conn.send("took over")
    assert conn.recv() == "release"
    table._core.stripe_release(stripe)
    conn.send("released")


def test_a_taker_stopped_past_the_stall_timeout_does_not_post_twice(name):
    """A process that took a stripe over from a dead holder is SIGSTOPped
    while holding it; past the stall timeout another takes it from it, and
    releases it.  Continued, the first releases too: that must not post the
    semaphore a second time (a count of 2 lets two processes hold the
    stripe at once), whatever the word says by then."""
    stripe = 3
    table = shmdict.open(name, shmdict.Counter(), capacity=CAPACITY, stripe_poll=0.02,
                         stall_timeout=0.3)
    parent, child = CTX.Pipe()
    dead = CTX.Process(target=_dies_holding, args=(name, stripe, child))
    dead.start()
    assert parent.recv() == "holding"
    os.kill(dead.pid, signal.SIGKILL)
    dead.join()
    taker = CTX.Process(target=_taker_that_stops, args=(name, stripe, child))
    taker.start()
    try:
        assert parent.recv() == "took over"
        os.kill(taker.pid, signal.SIGSTOP)
        key = keys_in_stripe(table, stripe, 1, "after")[0]
        table.add(key, 1)                   # waits out the stall, takes it over
        assert table._stripes.takeovers == 1
        os.kill(taker.pid, signal.SIGCONT)
        parent.send("release")
        assert parent.poll(10) and parent.recv() == "released"
        taker.join(10)
        assert taker.exitcode == 0
        report = table.check()
        assert report and not report.repaired, str(report)
        assert table.read(key) == (1, True)
    finally:
        if taker.is_alive():
            os.kill(taker.pid, signal.SIGKILL)
        table.close()


def test_check_repairs_a_dead_holder(name):
    """With nobody waiting, `check` itself takes a dead holder's stripe over."""
    table = shmdict.open(name, shmdict.Counter(), capacity=CAPACITY, stripe_poll=0.05)
    try:
        table.add("x")
        empty = next(i for i in range(100) if table._core.slot_info(i)[0] == 0)
        parent, child = CTX.Pipe()
        holder = CTX.Process(target=_holder, args=(name, 3, True, empty, child))
        holder.start()
        assert parent.recv() == "holding"
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
        assert not _core.id_alive(table._core.stripe_holder(3))
        report = table.check()
        assert report, str(report)
        assert any("stripe 3" in r for r in report.repaired)
        assert table._core.stripe_holder(3) == 0
        assert table._stripes.semaphores[3].value == 1
        assert report.counted["claimed"] == 0 and report.live == 1
        assert table._core.slot_info(empty)[0] == 3      # the dead claim is a tombstone
    finally:
        table.close()


def test_recovery_bound_is_configurable(name):
    table = shmdict.open(name, shmdict.Counter(), stripe_poll=0.02, stall_timeout=0.3)
    try:
        assert table._stripes.poll == 0.02 and table._stripes.stall_timeout == 0.3
        assert table._stripes.bound == pytest.approx(0.32)
    finally:
        table.close()
    other = shmdict.open(name, shmdict.Counter())
    try:   # per table, per process: the defaults elsewhere are untouched
        assert other._stripes.poll == stripes.POLL
        assert other._stripes.stall_timeout == stripes.STALL_TIMEOUT
    finally:
        other.close()
    attached = shmdict.attach(name, stall_timeout=0.7)
    try:
        assert attached._stripes.stall_timeout == 0.7
    finally:
        attached.close()


@pytest.mark.parametrize("option,value,error", [
    ("stripe_poll", 0, ValueError), ("stripe_poll", -1, ValueError),
    ("stall_timeout", float("inf"), ValueError), ("stall_timeout", float("nan"), ValueError),
    ("stall_timeout", "2", TypeError), ("stripe_poll", True, TypeError),
])
def test_bad_recovery_settings(name, option, value, error):
    with pytest.raises(error, match=option):
        shmdict.open(name, shmdict.Counter(), **{option: value})
    assert name not in shmdict.list_tables()     # rejected before creating anything


def test_module_default_and_environment(name, monkeypatch):
    monkeypatch.setattr(stripes, "STALL_TIMEOUT", 0.9)
    table = shmdict.open(name, shmdict.Counter())
    try:
        assert table._stripes.stall_timeout == 0.9
    finally:
        table.close()
    code = ("import shmdict.stripes as s; print(s.POLL, s.STALL_TIMEOUT)")
    env = dict(os.environ, SHMDICT_STRIPE_POLL="0.03", SHMDICT_STALL_TIMEOUT="0.6")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["0.03", "0.6"]
    env["SHMDICT_STALL_TIMEOUT"] = "soon"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "SHMDICT_STALL_TIMEOUT" in bad.stderr
