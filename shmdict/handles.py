"""Handles: what ``d[key]``, ``d.get(key)`` and ``d.load(key)`` return.

A handle holds a table and a key, never a value: every operation goes to the
table, through its verbs and a few hooks each backend's table provides, so
one handle class per layout serves every backend.

=============  =====================================  ==========================
handle         table verbs it calls                   hooks
=============  =====================================  ==========================
CounterHandle  ``add``, ``set``, ``exchange``         ``_value``, ``_handle_cas``
LockHandle     ``owner``, ``readers``                 ``_acquire_lock``, ``_release_lock``
StructHandle   ``read``, ``set``, ``cas``, ``update``
=============  =====================================  ==========================
"""
from __future__ import annotations

import warnings
from typing import Any, List, Optional

from . import aio
from .errors import NotOwner, OwnerDiedWarning
from .keys import Key
from .layouts import Outcome


class CounterHandle:
    """A key's counter: ``h.add()``, ``h.value``, ``int(h)``, ``d[key] += 1``."""

    __slots__ = ("_table", "_key")

    def __init__(self, table: Any, key: Key) -> None:
        self._table = table
        self._key = key

    @property
    def key(self) -> Key:
        return self._key

    @property
    def value(self) -> int:
        """The current value (the key is re-created at 0 if it was deleted)."""
        return self._table._value(self._key)

    def add(self, n: int = 1) -> int:
        return self._table.add(self._key, n)

    def set(self, value: int) -> None:
        self._table.set(self._key, value)

    def exchange(self, value: int) -> int:
        return self._table.exchange(self._key, value)

    def cas(self, old: int, new: int) -> bool:
        """Compare-and-swap on this key (re-created at 0 if it was deleted)."""
        return self._table._handle_cas(self._key, old, new)

    def __iadd__(self, n: int) -> "CounterHandle":
        self._table.add(self._key, n)
        return self

    def __isub__(self, n: int) -> "CounterHandle":
        self._table.add(self._key, -n)
        return self

    def __int__(self) -> int:
        return self.value

    __index__ = __int__

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CounterHandle):
            return self._table is other._table and self._key == other._key
        if isinstance(other, int):
            return self.value == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash((id(self._table), self._key))

    def __repr__(self) -> str:
        return f"<counter {self._key!r} = {self.value}>"


class LockHandle:
    """One key's lock, with the ``threading.Lock`` interface.

    The table's ``_acquire_lock(key, blocking, timeout, shared)`` returns
    ``(outcome, fence)``: an :class:`~shmdict.layouts.Outcome` (OK, RECOVERED
    or TIMEOUT) and the fencing token of an exclusive acquire (else 0);
    ``_release_lock(key, shared)`` returns OK or NOT_OWNER.
    """

    __slots__ = ("_table", "_key", "_shared", "recovered", "fence", "_holding", "_gate")

    def __init__(self, table: Any, key: Key, shared: bool = False) -> None:
        self._table = table
        self._key = key
        self._shared = shared
        #: True when the last acquire inherited the lock from a dead owner.
        self.recovered = False
        #: The fencing token of the last exclusive acquire through this
        #: handle (0 before it, and for the shared side): every acquire of
        #: the key gets a larger one than all before it, so a resource the
        #: lock protects can refuse a write that carries a smaller token than
        #: one it has seen (a stale holder whose lock passed on).
        self.fence = 0
        self._holding = False       # acquired through this handle, not released
        self._gate: Any = None      # the asyncio gate held, after acquire_async

    @property
    def key(self) -> Key:
        return self._key

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock; as ``threading.Lock.acquire``.  Returns whether it did."""
        if timeout != timeout:              # NaN: would wait forever
            raise ValueError("timeout value must be a number, not NaN")
        if timeout != -1:
            _check_timeout(blocking, timeout)
        code, fence = self._table._acquire_lock(self._key, blocking, timeout, self._shared)
        if code == _OK:                          # the common case, inline
            self.recovered = False
            self._holding = True
            self.fence = fence
            return True
        return self._took((code, fence))

    def _took(self, acquired: Any) -> bool:
        """Record what ``_acquire_lock`` gave: ``(outcome, fence)``, or None."""
        if acquired is None:
            return False
        code, fence = acquired
        if code == Outcome.TIMEOUT:
            return False
        self._holding = True
        self.fence = fence
        if code == Outcome.OK:
            self.recovered = False
            return True
        self.recovered = True                   # Outcome.RECOVERED
        warnings.warn(OwnerDiedWarning(
            f"lock {self._key!r} in table {self._table.name!r} was inherited from "
            f"{self._table._inherited_from}; what it guarded may be half-written"),
            stacklevel=3)
        return True

    async def acquire_async(self, blocking: bool = True, timeout: float = -1) -> bool:
        """``acquire`` for a coroutine: never blocks the event loop.

        Excludes this process's other coroutines as well as other processes
        (see :mod:`shmdict.aio`); release with ``release()`` on this handle,
        or use ``async with d[key]:``.
        """
        _check_timeout(blocking, timeout)
        if self._gate is not None:
            raise RuntimeError(f"this handle of lock {self._key!r} already holds it; "
                               f"use one handle per holder (d[key] gives a new one)")
        return self._took(await aio.acquire_lock(self, blocking, timeout))

    async def __aenter__(self) -> "LockHandle":
        await self.acquire_async()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.release()

    def release(self) -> None:
        """Release; ``RuntimeError`` (``shmdict.NotOwner``) if this process doesn't hold it."""
        self._holding = False
        if self._gate is not None:
            code = aio.release_lock(self)
        else:
            code = self._table._release_lock(self._key, self._shared)
        if code != _OK:
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

    @property
    def held_by_me(self) -> bool:
        """Whether this process holds this side of the lock now."""
        return self._table.held_by_me(self._key, self._shared)

    @property
    def lease_lost(self) -> bool:
        """True when this handle acquired the lock, has not released it, and no
        longer holds it: on Redis its lease ran out while the process was
        paused or cut off from the server, and another process may hold the
        lock now, so what it protects must not be written as its holder."""
        return self._holding and not self.held_by_me

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
        # acquire() without its arguments and frame: `with d[key]:` is the
        # lock as users write it, so its cost is the lock's cost.
        code, fence = self._table._acquire_lock(self._key, True, -1, self._shared)
        if code == _OK:
            self.recovered = False
            self._holding = True
            self.fence = fence
        else:
            self._took((code, fence))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._holding = False
        if self._gate is not None or self._table._release_lock(self._key, self._shared) != _OK:
            self._release_slow()

    def _release_slow(self) -> None:
        """release() of an async hold, or of a lock found not held (raises)."""
        if self._gate is not None:
            code = aio.release_lock(self)
            if code == _OK:
                return
        raise NotOwner(f"release of lock {self._key!r}, which this process does not hold"
                       f"{self._table._not_held_because}")

    def __repr__(self) -> str:
        owner = self.owner
        state = f"held by pid {owner}" if owner else "free"
        return f"<lock {self._key!r} {state}>"


_OK = int(Outcome.OK)    # a plain int: compared on every acquire


def _check_timeout(blocking: bool, timeout: float) -> None:
    if timeout != -1:
        if not blocking:
            raise ValueError("can't specify a timeout for a non-blocking call")
        if timeout < 0:
            raise ValueError("timeout value must be a non-negative number or -1")


class StructHandle:
    """A key's record: ``h.read()``, ``h.set(...)``, ``with h.update() as rec``, ``h.tokens``."""

    __slots__ = ("_table", "_key")

    def __init__(self, table: Any, key: Key) -> None:
        self._table = table
        self._key = key

    @property
    def key(self) -> Key:
        return self._key

    def read(self) -> Any:
        return self._table.read(self._key)[0]

    value = property(read)

    def set(self, record: Any) -> None:
        self._table.set(self._key, record)

    def cas(self, old: Any, new: Any) -> bool:
        return self._table.cas(self._key, old, new, set_on_not_exists=False)

    def update(self) -> Any:
        return self._table.update(self._key)

    def update_async(self) -> Any:
        """``async with h.update_async() as rec``: see ``d.update_async(key)``."""
        return self._table.update_async(self._key)

    def add(self, field: str, n: int = 1) -> int:
        return self._table.add(self._key, field, n)

    def __getattr__(self, name: str) -> Any:
        if name in self._table.layout.codes:
            return getattr(self.read(), name)
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"<record {self._key!r} = {self.read()!r}>"
