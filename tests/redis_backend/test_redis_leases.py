"""Integers that stay exact on Redis, and leases a paused holder cannot break.

A holder is paused with SIGSTOP (its renewal thread stops with it), as a
process descheduled, swapped out or stopped in a debugger would be; the
test then acts as the other process, and SIGCONTs the holder.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
import warnings

import pytest
from helpers import fenced_write

import shmdict

LEASE = 0.6


def test_add_returns_exact_int64_values(redis_url, name):
    d = shmdict.open(name, shmdict.Counter(), backend=redis_url)
    try:
        assert d.add("k", 2 ** 53) == 2 ** 53
        assert d.add("k", 1) == 2 ** 53 + 1          # a Lua double would say 2**53
        assert d.add("j", 2 ** 63 - 1) == 2 ** 63 - 1
        assert d.add("m", -2 ** 63) == -2 ** 63
        assert d.add("m", 0) == -2 ** 63
        assert d.read("k") == (2 ** 53 + 1, True)
        assert d["k"].add(2) == 2 ** 53 + 3
        with pytest.raises(OverflowError):
            d.add("j", 1)
        assert d.read("j") == (2 ** 63 - 1, True)
    finally:
        d.unlink()


def _paused_updater(url, name, ready, outcome):
    d = shmdict.open(name, shmdict.Struct(n="q", x="d"), backend=url, lease=LEASE)
    try:
        with d.update("k") as rec:
            rec.n, rec.x = 1, 0.0
            ready.set()
            time.sleep(4 * LEASE)        # SIGSTOPped in here, past its lease
        outcome.put("committed")
    except shmdict.NotOwner as exc:
        outcome.put(f"refused: {exc}")
    finally:
        d.close()


def inherit(handle):
    """Acquire ``handle`` from a stopped holder whose lease runs out (the
    OwnerDiedWarning that says so is expected); return it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", shmdict.OwnerDiedWarning)
        assert handle.acquire(timeout=10)
    return handle


def _resume(proc):
    """SIGCONT ``proc`` if it still runs (cleanup after a failed assertion)."""
    try:
        os.kill(proc.pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def test_a_paused_update_cannot_overwrite_an_acknowledged_write(redis_url, name):
    d = shmdict.open(name, shmdict.Struct(n="q", x="d"), backend=redis_url, lease=LEASE)
    ctx = mp.get_context("spawn")
    ready, outcome = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_paused_updater, args=(redis_url, name, ready, outcome))
    proc.start()
    try:
        assert ready.wait(30)
        os.kill(proc.pid, signal.SIGSTOP)
        d.set("k", (2, 2.0))                # waits out the paused holder's lease
        assert d.read("k")[0] == (2, 2.0)   # acknowledged
        time.sleep(LEASE)                   # longer than its renewal interval
        os.kill(proc.pid, signal.SIGCONT)
        assert outcome.get(timeout=30).startswith("refused")
        proc.join(30)
        assert d.read("k")[0] == (2, 2.0)   # the late commit did not land
    finally:
        _resume(proc)
        proc.join(5)
        d.unlink()


def _paused_holder(url, name, ready, outcome):
    locks = shmdict.open(name, shmdict.Lock(), backend=url, lease=LEASE)
    try:
        handle = locks["row"]
        handle.acquire()
        assert not handle.lease_lost
        ready.set()
        time.sleep(4 * LEASE)            # SIGSTOPped in here
        lost = handle.lease_lost
        try:
            handle.release()
            outcome.put(("released", lost))
        except shmdict.NotOwner as exc:
            outcome.put((str(exc), lost))
    finally:
        locks.close()


def test_a_holder_that_lost_its_lease_is_told(redis_url, name):
    locks = shmdict.open(name, shmdict.Lock(), backend=redis_url, lease=LEASE)
    ctx = mp.get_context("spawn")
    ready, outcome = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_paused_holder, args=(redis_url, name, ready, outcome))
    proc.start()
    try:
        assert ready.wait(30)
        os.kill(proc.pid, signal.SIGSTOP)
        handle = inherit(locks["row"])
        assert handle.recovered
        os.kill(proc.pid, signal.SIGCONT)
        message, lost = outcome.get(timeout=30)
        assert lost is True
        assert "lease" in message and "not hold" in message
        handle.release()
        proc.join(30)
    finally:
        _resume(proc)
        proc.join(5)
        locks.unlink()


def test_an_expired_lease_is_not_renewed_behind_the_takers_back(redis_url, name):
    """The stopped holder's renewal thread, resuming first, must not extend a
    lease that expired while it was stopped (whether or not it was taken)."""
    d = shmdict.open(name, shmdict.Struct(n="q", x="d"), backend=redis_url, lease=LEASE)
    ctx = mp.get_context("spawn")
    ready, outcome = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_paused_updater, args=(redis_url, name, ready, outcome))
    proc.start()
    try:
        assert ready.wait(30)
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(2 * LEASE)               # expired, nobody took it yet
        os.kill(proc.pid, signal.SIGCONT)
        assert outcome.get(timeout=30).startswith("refused")
        proc.join(30)
        assert d.read("k") == (d.read("absent")[0], True)   # still the default record
    finally:
        _resume(proc)
        proc.join(5)
        d.unlink()


def test_ownership_compares_the_whole_token(redis_url, name):
    """A process elsewhere with this process's pid does not make us the holder."""
    import redis as redis_py
    from shmdict.backends.redis.table import process_token
    locks = shmdict.open(name, shmdict.Lock(), backend=redis_url, lease=5)
    try:
        handle = locks["row"]
        assert handle.acquire()
        assert handle.held_by_me and locks.held_by_me("row")
        handle.release()
        # Another host's process with our pid holds it: same pid, other token.
        client = redis_py.Redis.from_url(redis_url)
        other = f"otherhost/{os.getpid()}/{'0' * 12}"
        assert other != process_token()
        field = list(client.hkeys(f"shmdict:{{{name}}}:data"))[0]
        now_ms = int(client.time()[0]) * 1000
        client.hset(f"shmdict:{{{name}}}:data", field,
                    '{"w": "%s", "x": %d}' % (other, now_ms + 60_000))
        assert handle.owner == os.getpid()        # the pid alone says "us"...
        assert not handle.held_by_me              # ...the token does not
        assert not locks.held_by_me("row")
        with pytest.raises(shmdict.NotOwner):
            handle.release()
        assert handle.locked()
    finally:
        locks.unlink()


def _paused_fenced_writer(url, name, ready, outcome):
    locks = shmdict.open(name, shmdict.Lock(), backend=url, lease=LEASE)
    resource = shmdict.open(name + ".res", shmdict.Counter(), backend=url)
    try:
        handle = locks["row"]
        handle.acquire()
        ready.set()
        time.sleep(4 * LEASE)            # SIGSTOPped in here: the lock passes on
        outcome.put((handle.fence, fenced_write(resource, handle.fence, 1)))
    finally:
        locks.close()
        resource.close()


def test_the_fence_rejects_a_paused_holders_write(redis_url, name):
    locks = shmdict.open(name, shmdict.Lock(), backend=redis_url, lease=LEASE)
    resource = shmdict.open(name + ".res", shmdict.Counter(), backend=redis_url)
    ctx = mp.get_context("spawn")
    ready, outcome = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_paused_fenced_writer, args=(redis_url, name, ready, outcome))
    proc.start()
    try:
        assert ready.wait(30)
        os.kill(proc.pid, signal.SIGSTOP)
        handle = inherit(locks["row"])
        assert fenced_write(resource, handle.fence, 2)
        os.kill(proc.pid, signal.SIGCONT)
        stale_fence, accepted = outcome.get(timeout=30)
        assert stale_fence < handle.fence and not accepted
        assert resource.read("value") == (2, True)
        handle.release()
        proc.join(30)
    finally:
        _resume(proc)
        proc.join(5)
        locks.unlink()
        resource.unlink()


def _waiter(url, name, started, out):
    from shmdict.backends.redis import table as redis_table
    redis_table.LEASE_RECHECK = 60.0        # only an announced release can wake it
    locks = shmdict.open(name, shmdict.Lock(), backend=url, lease=30)
    started.set()
    with locks["row"]:
        out.put(time.monotonic())           # CLOCK_MONOTONIC: one clock for the host
    locks.close()


def test_a_release_wakes_a_waiter_at_once(redis_url, name):
    """A waiter sleeps until the release is announced, not a polling interval:
    with its fallback re-check set to a minute, it still gets the lock as soon
    as the holder lets go."""
    locks = shmdict.open(name, shmdict.Lock(), backend=redis_url, lease=30)
    ctx = mp.get_context("spawn")
    started, out = ctx.Event(), ctx.Queue()
    handle = locks["row"]
    handle.acquire()
    proc = ctx.Process(target=_waiter, args=(redis_url, name, started, out))
    proc.start()
    try:
        assert started.wait(30)
        time.sleep(1.0)                     # the waiter is asleep on the channel
        released_at = time.monotonic()
        handle.release()
        got_at = out.get(timeout=30)
        # After the release (not before), and far sooner than the 60 s re-check.
        assert released_at <= got_at < released_at + 20, got_at - released_at
        proc.join(30)
        assert proc.exitcode == 0
    finally:
        _resume(proc)
        proc.join(5)
        locks.unlink()
