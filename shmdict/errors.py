"""The exceptions and warnings of shmdict.

Every error shmdict raises on purpose derives from :class:`ShmDictError`.  Where
Python users expect a standard type (a too-long key is a ``ValueError``,
releasing a lock you do not hold is a ``RuntimeError``), the class derives from
that as well, so both ``except`` clauses work.
"""
from __future__ import annotations


class ShmDictError(Exception):
    """Base class of every shmdict error."""


class LayoutMismatch(ShmDictError):
    """A table exists under this name with another layout, capacity or key size."""


class CorruptSegment(ShmDictError):
    """The segment's header or slots are not what shmdict wrote."""


class TableFull(ShmDictError):
    """The table holds ``capacity`` keys; nothing was changed."""


class KeyTooLong(ShmDictError, ValueError):
    """A key's encoding is longer than the table's ``key_size``."""


class TableNotFound(ShmDictError, FileNotFoundError):
    """No table exists under this name (and the call would not create one)."""


class NotOwner(ShmDictError, RuntimeError):
    """Release of a lock this process does not hold (as ``threading.Lock``)."""


class LockHeld(ShmDictError):
    """A held lock (or a record being updated) cannot be deleted."""


class BackendError(ShmDictError, ConnectionError):
    """The backend (e.g. a Redis server) could not be reached or failed."""


class OwnerDiedWarning(UserWarning):
    """A lock was inherited from a process that died holding it.

    The data the lock guarded may be half-written: check it before trusting it.
    """
