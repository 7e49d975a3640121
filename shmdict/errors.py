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


class PermissionDenied(ShmDictError, PermissionError):
    """This user may not open a table's segment or semaphores (the kernel said
    no): the message names their owner and mode and what the creator must pass
    (``owner=``, ``group=``/``mode=``) to share the table with this user."""


class UnsafeSegment(PermissionDenied):
    """shmdict refused a segment or semaphore it could open but does not trust:
    owned by another user, writable by users the caller did not choose to share
    with, a symlink or not a regular file.  Such a file may have been planted
    by another local user to read or change this user's values."""


class ResourceLimit(ShmDictError, OSError):
    """A system limit stopped a table from being created or attached: file
    descriptors, space or inodes in /dev/shm, memory or address space.  The
    message names the limit; nothing was left behind."""
