"""Lock faults with a real server the test controls: the server paused
shorter and longer than the lease, and the holder alone cut off from it.

Each test has its own server (it is stopped with SIGSTOP, as a server
swapped out, frozen by a VM pause or stuck in a long fork would be), a
holder in another process, and a resource that both reach whatever happens
to the lock server: a shared-memory Counter table guarded by fencing tokens
(:func:`fenced_write`).  What must hold:

* a pause shorter than the lease changes nothing: the holder keeps the
  lock, nobody else gets it, the holder's fenced write is accepted;
* a pause longer than the lease, or a partition of the holder: the holder
  is told (``lease_lost``) while the server is still away, without asking
  it; the next acquirer gets a larger fence; the old holder's write is
  rejected by the fence and its ``release()`` raises ``NotOwner``.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
import warnings

import pytest
from helpers import TcpProxy, fenced_write, redis_server_binary, started_server

import shmdict

LEASE = 1.2
#: The holder's client gives up on a call after this long (the default, 5 s,
#: would outlast every pause here).
SOCKET_TIMEOUT = 0.3


@pytest.fixture
def server():
    with started_server(redis_server_binary()) as server:
        yield server


def _holder(url, name, ready, tell, write, outcome):
    """Take the lock, say so, wait for ``go``, then report what it knows
    (asked while the server may still be away), and try its fenced write."""
    locks = shmdict.open(name, shmdict.Lock(), backend=url, lease=LEASE,
                         socket_timeout=SOCKET_TIMEOUT)
    resource = shmdict.open(name + ".res", shmdict.Counter(), create=False)
    try:
        handle = locks["row"]
        handle.acquire()
        ready.put(handle.fence)
        assert tell.wait(60)
        outcome.put(("told", handle.lease_lost))
        assert write.wait(60)
        accepted = fenced_write(resource, handle.fence, 1)
        try:
            handle.release()
            released = "released"
        except shmdict.NotOwner as exc:
            released = f"NotOwner: {exc}"
        outcome.put(("wrote", accepted, released))
    finally:
        locks.close()
        resource.close()


class Holder:
    """The holder process and the events that step it."""

    def __init__(self, url, name):
        ctx = mp.get_context("spawn")
        self.ready, self.outcome = ctx.Queue(), ctx.Queue()
        self._tell, self._write = ctx.Event(), ctx.Event()
        self.process = ctx.Process(target=_holder, args=(url, name, self.ready, self._tell,
                                                         self._write, self.outcome))
        self.process.start()
        self.fence = self.ready.get(timeout=60)

    def told(self) -> bool:
        """Ask the holder whether it lost its lease."""
        self._tell.set()
        what, lost = self.outcome.get(timeout=60)
        assert what == "told"
        return lost

    def write_and_release(self):
        """Let the holder try its fenced write and release: (accepted, release)."""
        self._write.set()
        what, accepted, released = self.outcome.get(timeout=60)
        assert what == "wrote"
        self.process.join(30)
        assert self.process.exitcode == 0
        return accepted, released

    def stop(self):
        if self.process.is_alive():
            self.process.kill()
        self.process.join(10)


def pause(server, seconds: float) -> None:
    """SIGSTOP the server for ``seconds``."""
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


@pytest.fixture
def tables(server, name):
    locks = shmdict.open(name, shmdict.Lock(), backend=server.url, lease=LEASE)
    resource = shmdict.open(name + ".res", shmdict.Counter())
    yield locks, resource
    locks.close()
    resource.unlink()


def test_a_server_paused_shorter_than_the_lease_changes_nothing(server, tables, name):
    locks, resource = tables
    holder = Holder(server.url, name)
    try:
        pause(server, LEASE / 3)
        assert not locks["row"].acquire(blocking=False)      # still the holder's
        assert holder.told() is False
        accepted, released = holder.write_and_release()
        assert accepted and released == "released"
        assert resource.read("value") == (1, True)
        assert resource.read("fence") == (holder.fence, True)
    finally:
        holder.stop()


def _inherit(handle):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", shmdict.OwnerDiedWarning)
        assert handle.acquire(timeout=30)
    return handle


def test_a_server_paused_longer_than_the_lease_fences_the_old_holder(server, tables, name):
    locks, resource = tables
    holder = Holder(server.url, name)
    try:
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            time.sleep(2 * LEASE)
            # Told while the server is still stopped: from the lease it last
            # had confirmed, not from the server.
            assert holder.told() is True
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        handle = _inherit(locks["row"])
        assert handle.recovered and handle.fence > holder.fence
        assert fenced_write(resource, handle.fence, 2)
        accepted, released = holder.write_and_release()
        assert not accepted                                  # the fence refused it
        assert released.startswith("NotOwner")
        assert resource.read("value") == (2, True)
        handle.release()
    finally:
        holder.stop()


def test_a_holder_cut_off_from_the_server_is_fenced(server, tables, name):
    locks, resource = tables
    proxy = TcpProxy(server.port)
    holder = Holder(proxy.url(), name)
    try:
        proxy.cut()                          # the holder alone loses the server
        contender = locks["row"]
        assert not contender.acquire(timeout=LEASE / 3)      # its lease still runs
        time.sleep(LEASE)
        assert holder.told() is True         # told, with the server unreachable
        handle = _inherit(contender)
        assert handle.recovered and handle.fence > holder.fence
        assert fenced_write(resource, handle.fence, 2)
        proxy.heal()
        accepted, released = holder.write_and_release()
        assert not accepted
        assert released.startswith("NotOwner")
        assert resource.read("value") == (2, True)
        assert resource.read("fence") == (handle.fence, True)
        handle.release()
    finally:
        holder.stop()
        proxy.close()
