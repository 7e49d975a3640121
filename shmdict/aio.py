"""asyncio on lock and record tables, without blocking the event loop.

::

    async with locks[key]:                 # Lock(): exclusive
        ...
    async with rw[key].read():             # Lock(rw=True): shared side (many coroutines)
        ...
    if await locks[key].acquire_async(timeout=2):
        try: ...
        finally: locks[key].release()      # or h.release() on the same handle
    async with state.update_async(key) as rec:   # Struct: read-modify-write
        rec.tokens -= 1

Why a layer of its own: a lock's owner is a *process* (its pid is what the
lock word or the Redis lease records), so two coroutines of one process are
the same owner to the lock, and a blocking wait in a coroutine stops the
whole event loop -- including the coroutine that would release.  So every
acquisition goes through two steps:

1. a **gate** per (table, key) and event loop, in this process: a fair
   (first come, first served) asyncio reader-writer gate that orders this
   process's coroutines.  Exclusive holders exclude everyone; coroutines on
   the shared side of an ``rw=True`` lock share the gate, and one
   process-level shared hold serves all of them (taken by the first, given
   back by the last), so 50 coroutines never need 50 reader cells.  A
   waiting writer stops new readers from joining (no writer starvation).
   A release hands the gate to the next coroutine at once: no polling.
2. the **process-level lock**, taken by whoever the gate lets through: first
   without waiting (one C call, no thread); if it is busy (held by another
   process), the blocking wait -- a futex wait that releases the GIL, woken
   by the holder's release -- runs in a thread of its own while the loop
   goes on, and its result is handed back with ``call_soon_threadsafe``.

Dead owners are recovered as by the blocking ``acquire``: the new holder's
``handle.recovered`` is True and :class:`shmdict.OwnerDiedWarning` is
emitted.

**Cancellation and timeouts.**  A coroutine cancelled (or timed out) while
queued at the gate leaves the queue; one cancelled while its thread waits
for the process-level lock marks the wait abandoned: if the thread wins the
lock afterwards, it releases it at once, so nothing is ever left held by a
coroutine that is gone.  An abandoned thread notices within
``THREAD_SLICE`` seconds even if the lock never comes free.

**Limits.**  The gate is per event loop: two loops in two threads of one
process are still excluded from each other by the process-level lock (its
wait blocks only that loop's thread), but they queue there, not fairly.
Releasing from another thread than the loop's is not supported.  A sync
``with d[key]:`` in the same process while coroutines hold the key blocks
that thread, as it always did.
"""
from __future__ import annotations

import asyncio
import threading
import weakref
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from .layouts import Outcome

#: Longest a waiting thread sleeps in one call, so that a wait abandoned by
#: its coroutine (cancelled, timed out) ends soon even if the lock stays
#: taken.  Wake-up on release does not depend on it (the futex is woken).
THREAD_SLICE = 0.25

_JOIN, _ACQUIRE = "join", "acquire"
_gates: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Dict[Any, _Gate]]" = \
    weakref.WeakKeyDictionary()


def _identity(table: Any, key: Any, kind: str) -> Tuple[Any, ...]:
    # Every table object of one name (and backend) in this process shares
    # the process-level lock, so it shares the gate too.
    return (kind, getattr(table, "backend", None), table.name, key)


def gate_for(table: Any, key: Any, kind: str = "lock") -> "_Gate":
    """The gate of ``key`` in ``table`` for the running loop (created on demand)."""
    loop = asyncio.get_running_loop()
    gates = _gates.get(loop)
    if gates is None:
        gates = _gates[loop] = {}
    ident = _identity(table, key, kind)
    gate = gates.get(ident)
    if gate is None:
        gate = gates[ident] = _Gate(loop, gates, ident)
    return gate


class _Gate:
    """A fair asyncio reader-writer gate; grants say who takes the process lock."""

    __slots__ = ("loop", "_registry", "_ident", "x", "s", "s_pending", "proc_s", "waiters",
                 "release_shared")

    def __init__(self, loop: asyncio.AbstractEventLoop, registry: Dict[Any, "_Gate"],
                 ident: Any) -> None:
        self.loop = loop
        self._registry = registry
        self._ident = ident
        self.x = False            # an exclusive grantee (taking or holding the lock)
        self.s = 0                # shared grantees holding (the process hold is theirs)
        self.s_pending = False    # a shared grantee is taking the process-level hold
        self.proc_s = False       # this process holds the lock's shared side
        self.waiters: Deque[List[Any]] = deque()
        #: How to give back the process-level shared hold (set when it is taken).
        self.release_shared: Callable[[], Any] = lambda: Outcome.OK

    # ----------------------------------------------------------- granting
    def _grantable(self, shared: bool) -> Optional[str]:
        if self.x or self.s_pending:
            return None
        if shared:
            return _JOIN if self.proc_s else _ACQUIRE
        return None if self.s else _ACQUIRE

    def _take(self, shared: bool, role: str) -> None:
        if not shared:
            self.x = True
        elif role == _JOIN:
            self.s += 1
        else:
            self.s_pending = True

    def try_enter(self, shared: bool) -> Optional[str]:
        """A grant without waiting, if nobody is queued and the gate allows it."""
        if self.waiters:
            return None
        role = self._grantable(shared)
        if role is not None:
            self._take(shared, role)
        return role

    def grant(self) -> None:
        """Let the waiters at the head of the queue through, in order."""
        waiters = self.waiters
        while waiters:
            fut, shared = waiters[0]
            if fut.done():            # timed out or cancelled while queued
                waiters.popleft()
                continue
            role = self._grantable(shared)
            if role is None:
                return
            waiters.popleft()
            self._take(shared, role)
            fut.set_result(role)
        self._forget_if_idle()

    def _forget_if_idle(self) -> None:
        if not (self.x or self.s or self.s_pending or self.proc_s or self.waiters):
            if self._registry.get(self._ident) is self:
                del self._registry[self._ident]

    async def enter(self, shared: bool, blocking: bool, deadline: Optional[float]
                    ) -> Optional[str]:
        """Wait for a grant: the role (join, acquire), or None (not blocking, timed out)."""
        role = self.try_enter(shared)
        if role is not None or not blocking:
            return role
        loop = self.loop
        fut = loop.create_future()
        self.waiters.append([fut, shared])
        timer = None
        if deadline is not None:
            timer = loop.call_at(deadline, _expire, fut)
        try:
            return await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.result() is not None:
                self.undo(shared, fut.result())      # granted, then cancelled
            else:
                fut.cancel()
                self.grant()
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if fut.done() and not fut.cancelled() and fut.result() is None:
                self.grant()                          # timed out: let others on

    # --------------------------------------------------------- outcomes
    def undo(self, shared: bool, role: str) -> None:
        """A grantee that never got (or gave up) the process-level lock."""
        if not shared:
            self.x = False
        elif role == _JOIN:
            self.release(True, self.release_shared)      # granted a join, then cancelled
            return
        else:
            self.s_pending = False
        self.grant()

    def acquired_shared(self, release_process: Callable[[], Any]) -> None:
        self.release_shared = release_process
        self.s_pending = False
        self.proc_s = True
        self.s += 1
        self.grant()

    def release(self, shared: bool, release_process: Callable[[], Any]) -> Any:
        """Give the gate back; the process-level lock too when the last holder goes."""
        if not shared:
            try:
                return release_process()
            finally:
                self.x = False
                self.grant()
        self.s -= 1
        if self.s:
            return Outcome.OK
        self.proc_s = False
        try:
            return release_process()
        finally:
            self.grant()


def _expire(fut: "asyncio.Future[Any]") -> None:
    if not fut.done():
        fut.set_result(None)


# ------------------------------------------------ waiting in a thread
async def wait_in_thread(attempt: Callable[[float], Any], succeeded: Callable[[Any], bool],
                         undo: Callable[[Any], Any], deadline: Optional[float]) -> Any:
    """Run the blocking ``attempt(timeout)`` in a thread until it succeeds or
    ``deadline`` (loop time) passes; return its last result.

    ``attempt`` is called with at most ``THREAD_SLICE`` seconds at a time.  If
    the coroutine is cancelled, the thread stops at its next slice, and a
    success that comes after the cancellation is undone with ``undo(result)``
    (in the thread, or here when the result was already on its way).
    """
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    mutex = threading.Lock()
    state = {"abandoned": False, "delivered": None}
    # The thread measures time on the loop's clock (time.monotonic by default).
    clock = loop.time

    def deliver(result: Any) -> None:
        if not fut.done():
            fut.set_result(result)

    def run() -> None:
        try:
            while True:
                if deadline is None:
                    slice_ = THREAD_SLICE
                else:
                    slice_ = min(THREAD_SLICE, max(0.0, deadline - clock()))
                result = attempt(slice_)
                won = succeeded(result)
                with mutex:
                    if state["abandoned"]:
                        if won:
                            undo(result)
                        return
                    if won or (deadline is not None and clock() >= deadline):
                        state["delivered"] = result
                        try:
                            loop.call_soon_threadsafe(deliver, result)
                        except RuntimeError:    # the loop is closed: nobody will take it
                            if won:
                                undo(result)
                        return
        except BaseException as exc:            # noqa: BLE001 - handed to the coroutine
            with mutex:
                if state["abandoned"]:
                    return
                state["delivered"] = exc
            try:
                loop.call_soon_threadsafe(_fail, fut, exc)
            except RuntimeError:
                pass

    threading.Thread(target=run, daemon=True, name="shmdict-aio-wait").start()
    try:
        return await fut
    except BaseException:
        with mutex:
            state["abandoned"] = True
            result = state["delivered"]
        if result is not None and not isinstance(result, BaseException) \
                and succeeded(result):
            undo(result)          # it won just before the cancellation reached us
        raise


def _fail(fut: "asyncio.Future[Any]", exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def deadline_of(timeout: float) -> Optional[float]:
    """The loop-time deadline of a ``timeout`` in seconds (-1: none)."""
    if timeout is None or timeout < 0:
        return None
    return asyncio.get_running_loop().time() + timeout


# ----------------------------------------------------- lock handles
_TAKEN = (Outcome.OK, Outcome.RECOVERED)


async def acquire_lock(handle: Any, blocking: bool,
                       timeout: float) -> Optional[Tuple[int, int]]:
    """The async acquisition of a LockHandle: ``(outcome, fence)`` as the
    table's ``_acquire_lock`` gives it (OK or RECOVERED), or None.

    On success the handle is given the gate it holds (``handle._gate``), and
    its ``release()`` gives both back.
    """
    table, key, shared = handle._table, handle._key, handle._shared
    deadline = deadline_of(timeout)
    gate = gate_for(table, key)
    role = await gate.enter(shared, blocking, deadline)
    if role is None:
        return None
    if role == _JOIN:
        handle._gate = gate
        return Outcome.OK, 0          # joined this process's shared hold
    try:
        code = await _process_acquire(table, key, shared, blocking, deadline)
    except BaseException:
        gate.undo(shared, role)
        raise
    if code[0] not in _TAKEN:
        gate.undo(shared, role)
        return None
    if shared:
        gate.acquired_shared(lambda: table._release_lock(key, True))
    handle._gate = gate
    return code


async def _process_acquire(table: Any, key: Any, shared: bool, blocking: bool,
                           deadline: Optional[float]) -> Tuple[int, int]:
    native = getattr(table, "_acquire_lock_async", None)
    if native is not None:                  # a backend with an asyncio client
        return await native(key, blocking, deadline, shared)
    code = table._acquire_lock(key, False, -1, shared)     # one C call, no thread
    if code[0] in _TAKEN or not blocking:
        return code
    return await wait_in_thread(
        lambda t: table._acquire_lock(key, True, t, shared),
        lambda code: code[0] in _TAKEN,
        lambda code: table._release_lock(key, shared),
        deadline)


def release_lock(handle: Any) -> int:
    """Release an async hold: the gate, and the process lock when it is the last."""
    gate = handle._gate
    handle._gate = None
    table, key, shared = handle._table, handle._key, handle._shared
    return gate.release(shared, lambda: table._release_lock(key, shared))


# -------------------------------------------------------- Struct updates
class AsyncUpdate:
    """``async with d.update_async(key) as rec``: the table's ``update()`` block,
    entered without blocking the loop, exclusive among this process's coroutines.

    The record lock is taken in a thread (it may be held by another process);
    the write-back on a clean exit (or the release on an exception) is one
    short call.
    """

    __slots__ = ("_table", "_key", "_gate", "_cm")

    def __init__(self, table: Any, key: Any) -> None:
        self._table = table
        self._key = key
        self._gate: Optional[_Gate] = None
        self._cm: Any = None

    async def __aenter__(self) -> Any:
        gate = gate_for(self._table, self._key, "record")
        await gate.enter(False, True, None)
        try:
            cm = self._table.update(self._key)
            rec = await wait_in_thread(lambda t: (cm, cm.__enter__()), lambda r: True,
                                       _abandon_update, None)
        except BaseException:
            gate.undo(False, _ACQUIRE)
            raise
        self._gate, self._cm = gate, cm
        return rec[1]

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        gate, cm = self._gate, self._cm
        self._gate = self._cm = None
        if gate is None:
            raise RuntimeError("update_async block exited without being entered")
        gate.release(False, lambda: cm.__exit__(exc_type, exc, tb))


def _abandon_update(entered: Tuple[Any, Any]) -> None:
    """The coroutine went away after the record lock was taken: write nothing."""
    cm = entered[0]
    error = asyncio.CancelledError()
    try:
        cm.__exit__(asyncio.CancelledError, error, None)
    except asyncio.CancelledError:
        pass


__all__ = ["AsyncUpdate", "THREAD_SLICE", "acquire_lock", "gate_for", "release_lock",
           "wait_in_thread"]
