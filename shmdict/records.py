"""The Struct layout: a fixed-size record per key.

A record is guarded two ways:

* readers never lock: a sequence word (a seqlock) is odd while a writer
  copies, and a copy is kept only if the sequence was even and unchanged
  around it, so ``read`` always returns one whole write, never a torn mix;
* writers (``set``, ``cas``, ``update``, ``add``) take the record's lock
  word, an owner lock like the Lock layout's, so a writer SIGKILLed
  mid-update is replaced at once by the next one, which is told
  (``recovered``, :class:`shmdict.OwnerDiedWarning`).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Tuple

from . import _core
from .errors import NotOwner, OwnerDiedWarning
from .keys import Key
from .layouts import Struct
from .table import _STALE, DELETE_IF_MINE, Table


class MutableRecord:
    """The record inside ``with d.update(key) as rec:``; written back on a clean exit."""

    def __init__(self, layout: Struct, values: Tuple[Any, ...], recovered: bool) -> None:
        object.__setattr__(self, "_layout", layout)
        object.__setattr__(self, "_values", dict(zip(layout.codes, values)))
        object.__setattr__(self, "recovered", recovered)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"record has no field {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._values:
            raise AttributeError(f"record has no field {name!r}; fields: {list(self._values)}")
        self._values[name] = value

    def _asdict(self) -> dict:
        return dict(self._values)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"MutableRecord({inner})"


class StructTable(Table):
    """A table of records (``shmdict.open(name, shmdict.Struct(...))``)."""

    layout: Struct

    # ------------------------------------------------------------ reading
    def read(self, key: Key) -> Tuple[Any, bool]:
        """``(record, exists)``: a consistent snapshot; never creates the key."""
        while True:
            found = self._locate(key, False)
            if found is None:
                return self._default_snapshot(), False
            value = self._snapshot_at(found[0], found[1])
            if value is not _STALE:
                return value, True

    def _snapshot_at(self, slot: int, state: int) -> Any:
        try:
            data = self._core.record_read(slot, state)
        except BlockingIOError:
            # A writer died mid-copy: taking the lock recovers the record.
            if not self._lock(slot, state):
                return _STALE
            self._core.lock_release(slot, state)
            data = self._core.record_read(slot, state)
        return _STALE if data is None else self.layout.unpack(data)

    def _default_snapshot(self) -> Any:
        return self.layout.unpack(self.layout.default_extra()[8:])

    # ------------------------------------------------------------ writing
    def _lock(self, slot: int, state: int) -> bool:
        """Take the record lock; False if the slot changed.  Repairs after a dead writer."""
        code = self._core.lock_acquire(slot, state, True, -1.0)
        if code == _core.STALE:
            return False
        if code == _core.RECOVERED:
            warnings.warn(OwnerDiedWarning(
                f"a writer of table {self.name!r} died inside an update; the record "
                f"keeps whatever it had written"), stacklevel=3)
            # Make the sequence even again around what is there now.
            data = self._core.record_read(slot, state, True)
            if data is not None:
                self._core.record_write(slot, state, data)
            self._last_recovered = True
        else:
            self._last_recovered = False
        return True

    @contextmanager
    def _locked(self, key: Key, extra: Any = None) -> Iterator[Tuple[int, int, bool]]:
        """Hold ``key``'s record lock (creating the key); yields (slot, state, created)."""
        while True:
            slot, state, created = self._locate(key, True, extra=extra)  # type: ignore[misc]
            if self._lock(slot, state):
                break
        try:
            yield slot, state, created
        finally:
            self._core.lock_release(slot, state)

    def _write(self, slot: int, state: int, data: bytes) -> None:
        code = self._core.record_write(slot, state, data)
        if code != _core.OK:
            raise NotOwner("record lock lost during a write (the table was repaired?)")

    def set(self, key: Key, record: Any) -> None:
        """Store a whole record (a tuple, named tuple or mapping of fields)."""
        data = self.layout.pack(record)
        with self._locked(key, extra=bytes(8) + data) as (slot, state, created):
            if not created:
                self._write(slot, state, data)

    def __setitem__(self, key: Key, record: Any) -> None:
        self.set(key, record)

    def cas(self, key: Key, old: Any, new: Any, set_on_not_exists: bool = False) -> bool:
        """Replace the record with ``new`` if it equals ``old``.

        A missing key is created holding ``new`` (True) only with
        ``set_on_not_exists``; otherwise False and nothing is created.
        """
        old_data, new_data = self.layout.pack(old), self.layout.pack(new)
        if self._locate(key, False) is None:
            if not set_on_not_exists:
                return False
            with self._locked(key, extra=bytes(8) + new_data) as (slot, state, created):
                if created:
                    return True
                return self._cas_locked(slot, state, old_data, new_data)
        with self._locked(key) as (slot, state, _):
            return self._cas_locked(slot, state, old_data, new_data)

    def _cas_locked(self, slot: int, state: int, old: bytes, new: bytes) -> bool:
        current = self._core.record_read(slot, state, True)
        if current != old:
            return False
        self._write(slot, state, new)
        return True

    @contextmanager
    def update(self, key: Key) -> Iterator[MutableRecord]:
        """``with d.update(key) as rec: rec.tokens -= 1``: atomic read-modify-write.

        Holds the record lock for the block; writes back on a clean exit, not
        at all on an exception.  ``rec.recovered`` says whether the previous
        writer died inside its own update.
        """
        with self._locked(key) as (slot, state, _):
            data = self._core.record_read(slot, state, True)
            rec = MutableRecord(self.layout, self.layout.unpack(data), self._last_recovered)
            yield rec
            self._write(slot, state, self.layout.pack(rec._asdict()))

    def add(self, key: Key, field: str, n: int = 1) -> int:
        """Atomically add ``n`` to an integer field; return its new value."""
        if field not in self.layout.codes:
            raise AttributeError(f"no field {field!r}; fields: {list(self.layout.codes)}")
        if not self.layout.is_int_field(field):
            raise TypeError(f"field {field!r} is {self.layout.codes[field]!r}, not an integer")
        with self.update(key) as rec:
            value = getattr(rec, field) + n
            setattr(rec, field, value)
        return value

    # ------------------------------------------------------------ deleting
    def _delete_slot(self, slot: int, state: int, stripe: int) -> Any:
        # Take the record lock so no update is half-done, snapshot, and let
        # the tombstone release the lock in the same atomic step.  Never wait
        # for the record lock while holding the stripe: its holder may be
        # inserting a key of this stripe inside its update() block.
        code = self._core.lock_acquire(slot, state, False, -1.0)
        if code not in (_core.OK, _core.RECOVERED):
            return _STALE                    # _wait_before_retry waits for it
        snapshot = self.layout.unpack(self._core.record_read(slot, state, True) or
                                      self.layout.default_extra()[8:])
        code, _ = self._core.delete(slot, state, stripe, DELETE_IF_MINE)
        if code != _core.OK:
            self._core.lock_release(slot, state)
            return _STALE
        return snapshot

    def _wait_before_retry(self, slot: int, state: int) -> None:
        if self._lock(slot, state):
            self._core.lock_release(slot, state)

    def _handle(self, key: Key) -> "StructHandle":
        return StructHandle(self, key)


class StructHandle:
    """A key's record: ``h.read()``, ``h.set(...)``, ``with h.update() as rec``, ``h.tokens``."""

    __slots__ = ("_table", "_key")

    def __init__(self, table: StructTable, key: Key) -> None:
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

    def update(self):
        return self._table.update(self._key)

    def add(self, field: str, n: int = 1) -> int:
        return self._table.add(self._key, field, n)

    def __getattr__(self, name: str) -> Any:
        if name in self._table.layout.codes:
            return getattr(self.read(), name)
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"<record {self._key!r} = {self.read()!r}>"
