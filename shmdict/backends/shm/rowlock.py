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

from typing import Callable, List, Optional, Tuple

from ...handles import LockHandle
from ...keys import Key
from ...verbs import LockVerbs
from . import _core
from .segment import Segment
from .table import Table


class ShmLockHandle(LockHandle):
    """The shared-memory backend's :class:`~shmdict.handles.LockHandle`.

    The documented class with one more slot, the table's C core: its
    ``acquire``, ``release``, ``__enter__``, ``__exit__``, ``locked`` and
    ``held_by_me`` are C methods (installed by ``_core.bind_lock_handle``)
    that take a free lock without releasing the GIL or calling Python, so
    ``with locks[key]:`` costs about what a ``threading.Lock`` does.  A
    recovered lock (``OwnerDiedWarning``), an async hold and a release of a
    lock not held go through the inherited Python methods, unchanged.
    """

    __slots__ = ("_core",)


class LockTable(LockVerbs, Table):
    """A table of row locks (``shmdict.open(name, shmdict.Lock())``)."""

    #: LockHandle's two hooks are the C core's own methods, bound per table
    #: (no Python frame): ``_acquire_lock(key, blocking, timeout, shared)``
    #: takes ``key``'s lock (creating the key) and returns ``(outcome,
    #: fence)``: Outcome.OK, RECOVERED or TIMEOUT, and the fencing token of
    #: an exclusive acquire (the table's counter, see format.h; else 0);
    #: ``_release_lock(key, shared)`` returns OK, or NOT_OWNER when this
    #: process doesn't hold it.
    _acquire_lock: Callable[[Key, bool, float, bool], Tuple[int, int]]
    _release_lock: Callable[[Key, bool], int]

    def __init__(self, segment: Segment) -> None:
        super().__init__(segment)
        self._acquire_lock = self._core.key_acquire
        self._release_lock = self._core.key_release

    # get(key) and d[key] are C (bind_lock_handle below): resolve the key,
    # then build a ShmLockHandle without a Python frame.

    def _handle(self, key: Key) -> ShmLockHandle:
        return ShmLockHandle(self, key)

    def readers(self, key: Key) -> List[int]:
        """Pids holding ``key`` in shared mode (``rw=True`` tables)."""
        found = self._core.locate(key, False)
        if found is None or not self.layout.rw:
            return []
        return self._core.rw_readers(found[0], found[1])

    def _snapshot_of_word0(self, word0: int) -> bool:
        return _core.id_pid(word0) != 0     # locked?

    def owner(self, key: Key) -> Optional[int]:
        """The pid holding ``key``'s lock, or None (never creates the key)."""
        found = self._core.locate(key, False)
        if found is None:
            return None
        pid = self._core.lock_owner(found[0], found[1])
        return pid if pid > 0 else None


_core.bind_lock_handle(ShmLockHandle, LockTable)
