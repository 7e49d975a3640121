"""The verbs of each layout that every backend shares.

A backend's Counter table provides ``add``, ``set``, ``read``, ``cas``,
``exchange`` and ``values``; its Struct table ``set``, ``read``, ``cas`` and
``update``.  The conveniences built on those (``d[key] = v``, ``total()``,
``add`` on a Struct field) and the choice of handle live here once, as
mixins placed before the backend's table class.
"""
from __future__ import annotations

import os
from typing import Any

from .aio import AsyncUpdate
from .handles import CounterHandle, LockHandle, StructHandle
from .keys import Key
from .layouts import Struct


class CounterVerbs:
    """Counter conveniences on top of the table's ``set`` and ``values``."""

    def __setitem__(self, key: Key, value: Any) -> None:
        if isinstance(value, CounterHandle):
            if value._table is self and value._key == key:
                return   # the tail of `d[key] += n`: the add already happened
            value = value.value
        self.set(key, value)  # type: ignore[attr-defined]

    def total(self) -> int:
        """The sum of all values (a snapshot)."""
        return sum(self.values())  # type: ignore[attr-defined]

    def _handle(self, key: Key) -> CounterHandle:
        return CounterHandle(self, key)


class LockVerbs:
    """Lock tables hand out :class:`~shmdict.handles.LockHandle` objects, on
    top of the table's ``owner`` and ``readers``."""

    #: How an inherited lock is described in OwnerDiedWarning, and why a
    #: release can find the lock not held (backends say more).
    _inherited_from = "a process that died holding it"
    _not_held_because = ""

    def _handle(self, key: Key) -> LockHandle:
        return LockHandle(self, key)

    def held_by_me(self, key: Key, shared: bool = False) -> bool:
        """Whether this process holds ``key``'s lock (exclusively, or with
        ``shared`` in shared mode).  On one host a pid names one process; a
        backend whose holders live on several hosts compares more."""
        pid = os.getpid()
        return pid in self.readers(key) if shared else \
            self.owner(key) == pid  # type: ignore[attr-defined]


class StructVerbs:
    """Struct conveniences on top of the table's ``set`` and ``update``."""

    layout: Struct

    def __setitem__(self, key: Key, record: Any) -> None:
        self.set(key, record)  # type: ignore[attr-defined]

    def add(self, key: Key, field: str, n: int = 1) -> int:
        """Atomically add ``n`` to an integer field; return its new value."""
        if field not in self.layout.codes:
            raise AttributeError(f"no field {field!r}; fields: {list(self.layout.codes)}")
        if not self.layout.is_int_field(field):
            raise TypeError(f"field {field!r} is {self.layout.codes[field]!r}, not an integer")
        with self.update(key) as rec:  # type: ignore[attr-defined]
            value = getattr(rec, field) + n
            setattr(rec, field, value)
        return value

    def update_async(self, key: Key) -> AsyncUpdate:
        """``async with d.update_async(key) as rec: rec.tokens -= 1``: ``update()``
        for a coroutine, never blocking the event loop, exclusive among this
        process's coroutines as among processes (see :mod:`shmdict.aio`)."""
        return AsyncUpdate(self, key)

    def _handle(self, key: Key) -> StructHandle:
        return StructHandle(self, key)
