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
from typing import Any, List, Optional

from . import _core
from .errors import NotOwner, OwnerDiedWarning
from .keys import Key
from .table import Table


class LockTable(Table):
    """A table of row locks (``shmdict.open(name, shmdict.Lock())``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # LockHandle's two hooks, bound to the C calls (no Python frame).
        self._acquire_lock = self._core.key_acquire   # type: ignore[method-assign]
        self._release_lock = self._core.key_release   # type: ignore[method-assign]

    def _acquire_lock(self, key: Key, blocking: bool, timeout: float,  # type: ignore[no-redef]
                      shared: bool) -> int:
        """Take ``key``'s lock (creating the key): OK, RECOVERED or TIMEOUT."""
        return self._core.key_acquire(key, blocking, timeout, shared)

    def _release_lock(self, key: Key, shared: bool) -> int:  # type: ignore[no-redef]
        """Release ``key``'s lock: OK, or NOT_OWNER when this process doesn't hold it."""
        return self._core.key_release(key, shared)

    #: How an inherited lock is described in OwnerDiedWarning, and why a
    #: release can find the lock not held (backends say more).
    _inherited_from = "a process that died holding it"
    _not_held_because = ""

    def readers(self, key: Key) -> List[int]:
        """Pids holding ``key`` in shared mode (``rw=True`` tables)."""
        found = self._core.locate(key, False)
        if found is None or not self.layout.rw:
            return []
        return self._core.rw_readers(found[0], found[1])

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
    """One key's lock, with the ``threading.Lock`` interface.

    It uses two table hooks (``_acquire_lock``, ``_release_lock``) and
    ``owner``/``readers``, so it serves every backend's lock table.
    """

    __slots__ = ("_table", "_key", "_shared", "recovered")

    def __init__(self, table: Any, key: Key, shared: bool = False) -> None:
        self._table = table
        self._key = key
        self._shared = shared
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
        code = self._table._acquire_lock(self._key, blocking, timeout, self._shared)
        if code == 0:                           # _core.OK
            self.recovered = False
            return True
        if code == _core.TIMEOUT:
            return False
        self.recovered = True                   # _core.RECOVERED
        warnings.warn(OwnerDiedWarning(
            f"lock {self._key!r} in table {self._table.name!r} was inherited from "
            f"{self._table._inherited_from}; what it guarded may be half-written"),
            stacklevel=2)
        return True

    def release(self) -> None:
        """Release; ``RuntimeError`` (``shmdict.NotOwner``) if this process doesn't hold it."""
        if self._table._release_lock(self._key, self._shared) != 0:
            raise NotOwner(f"release of lock {self._key!r}, which this process does not hold"
                           f"{self._table._not_held_because}")

    def locked(self) -> bool:
        """Whether anyone holds the lock exclusively."""
        return self.owner is not None

    @property
    def owner(self) -> Optional[int]:
        """The pid of the exclusive holder, or None."""
        return self._table.owner(self._key)

    @property
    def readers(self) -> List[int]:
        """Pids holding the lock in shared mode (``rw=True`` tables)."""
        return self._table.readers(self._key)

    def read(self) -> "LockHandle":
        """The shared side of an ``rw=True`` lock: ``with d[key].read(): ...``."""
        self._need_rw()
        return type(self)(self._table, self._key, shared=True)

    def write(self) -> "LockHandle":
        """The exclusive side of an ``rw=True`` lock: ``with d[key].write(): ...``."""
        self._need_rw()
        return type(self)(self._table, self._key, shared=False)

    def _need_rw(self) -> None:
        if not self._table.layout.rw:
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
