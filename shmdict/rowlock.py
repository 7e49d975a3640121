"""The Lock layout: a cross-process row lock per key (Go's rowlock).

A lock word holds its owner's id (pid and start time).  Taking a free lock is
one compare-and-swap; a waiter sleeps on a futex in slices of at most 50 ms,
with the GIL released, and between slices checks Ctrl-C and whether the owner
is still alive.  The kernel does not tell us when a futex owner dies, so a
SIGKILLed holder's lock passes on within one slice: at most 50 ms, usually
at once if nobody was waiting.  The new holder is told: ``handle.recovered``
is True and :class:`shmdict.OwnerDiedWarning` is emitted, since whatever the
lock guarded may be half-written.

``Lock(rw=True)`` adds a shared mode: up to 8 readers at once per key (more
wait), writers exclusive.  Dead readers are cleared by whoever waits on them.

Ownership is per process, as the lock word records a pid: threads of one
process share it (like ``multiprocessing.Lock`` across forks, unlike
``threading.RLock``).  Acquiring a lock this process already holds blocks,
as ``threading.Lock`` does.
"""
from __future__ import annotations

import warnings
from typing import Any, Optional

from . import _core
from .errors import NotOwner, OwnerDiedWarning
from .keys import Key
from .table import Table


class LockTable(Table):
    """A table of row locks (``shmdict.open(name, shmdict.Lock())``)."""

    def _handle(self, key: Key) -> "LockHandle":
        return LockHandle(self, key)

    def _snapshot_of_word0(self, word0: int) -> bool:
        return (word0 & 0x3FFFFFFF) != 0     # locked?

    def owner(self, key: Key) -> Optional[int]:
        """The pid holding ``key``'s lock, or None (never creates the key)."""
        found = self._core.locate(key, False)
        if found is None:
            return None
        pid = self._core.lock_owner(found[0], found[1])
        return pid if pid > 0 else None


class LockHandle:
    """One key's lock, with the ``threading.Lock`` interface."""

    __slots__ = ("_table", "_core", "_key", "_shared", "_rw", "recovered")

    def __init__(self, table: LockTable, key: Key, shared: bool = False) -> None:
        self._table = table
        self._core = table._core
        self._key = key
        self._shared = shared
        self._rw = table.layout.rw
        #: True when the last acquire inherited the lock from a dead owner.
        self.recovered = False

    @property
    def key(self) -> Key:
        return self._key

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock; as ``threading.Lock.acquire``.  Returns whether it did."""
        if timeout != -1:
            if not blocking:
                raise ValueError("can't specify a timeout for a non-blocking call")
            if timeout < 0:
                raise ValueError("timeout value must be a non-negative number or -1")
        code = self._core.key_acquire(self._key, blocking, timeout, self._shared)
        if code == 0:                           # _core.OK
            self.recovered = False
            return True
        if code == _core.TIMEOUT:
            return False
        self.recovered = True                   # _core.RECOVERED
        warnings.warn(OwnerDiedWarning(
            f"lock {self._key!r} in table {self._table.name!r} was inherited from a "
            f"process that died holding it; what it guarded may be half-written"),
            stacklevel=2)
        return True

    def release(self) -> None:
        """Release; ``RuntimeError`` (``shmdict.NotOwner``) if this process doesn't hold it."""
        if self._core.key_release(self._key, self._shared) != 0:
            raise NotOwner(f"release of lock {self._key!r}, which this process does not hold")

    def locked(self) -> bool:
        """Whether anyone holds the lock exclusively."""
        return self.owner is not None

    @property
    def owner(self) -> Optional[int]:
        """The pid of the exclusive holder, or None."""
        return self._table.owner(self._key)

    @property
    def readers(self) -> list:
        """Pids holding the lock in shared mode (``rw=True`` tables)."""
        found = self._core.locate(self._key, False)
        if found is None or not self._rw:
            return []
        return self._table._core.rw_readers(found[0], found[1])

    def read(self) -> "LockHandle":
        """The shared side of an ``rw=True`` lock: ``with d[key].read(): ...``."""
        self._need_rw()
        return LockHandle(self._table, self._key, shared=True)

    def write(self) -> "LockHandle":
        """The exclusive side of an ``rw=True`` lock: ``with d[key].write(): ...``."""
        self._need_rw()
        return LockHandle(self._table, self._key, shared=False)

    def _need_rw(self) -> None:
        if not self._rw:
            raise TypeError(f"table {self._table.name!r} is Lock(); "
                            f"open it with Lock(rw=True) for read()/write()")

    def __enter__(self) -> "LockHandle":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        owner = self.owner
        state = f"held by pid {owner}" if owner else "free"
        return f"<lock {self._key!r} {state}>"
