"""The Struct layout: a fixed-size record per key.

A record is guarded two ways:

* the slot keeps two copies of the record and a sequence word saying which
  is current (format.h, "A Struct slot's extra area"): a writer fills the
  other copy and publishes it with one store, so a writer SIGKILLed
  mid-copy leaves the current copy whole, and ``read`` (lock-free: it
  copies the current copy and checks the sequence around it) always
  returns one whole write, never a torn mix, without waiting for writers;
* writers (``set``, ``cas``, ``update``, ``add``) take the record's lock
  word, an owner lock like the Lock layout's, so a writer SIGKILLed
  mid-update is replaced at once by the next one, which is told
  (``recovered``, :class:`shmdict.OwnerDiedWarning`).
"""
from __future__ import annotations

import struct
import threading
import warnings
from typing import Any, Dict, Optional, Tuple

from ...errors import LockHeld, NotOwner, OwnerDiedWarning
from ...keys import Key
from ...layouts import Outcome, Struct
from ...records import MutableRecord, record_class
from ...validate import seconds as validate_seconds
from ...verbs import StructVerbs
from . import _core
from .table import _STALE, DELETE_IF_MINE, Table

_new_tuple = tuple.__new__     # a named tuple from values, without _make's checks


def record_codec(layout: Struct) -> _core.RecordCodec:
    """The layout's :class:`_core.RecordCodec` (made once per layout):
    ``make(data, recovered)`` unpacks a slot's record bytes into a new
    :class:`MutableRecord`, ``pack(rec)`` packs one back, padded
    (``ValueError`` naming the values when a field does not fit), as
    :func:`shmdict.records.make_record` and ``Struct.pack_in_order`` do."""
    codec = layout.__dict__.get("_record_codec")
    if codec is None:
        codec = _core.RecordCodec(record_class(layout), layout._struct.unpack_from,
                                  layout._struct.pack, layout._padding, struct.error)
        layout._record_codec = codec  # type: ignore[attr-defined]
    return codec


class StructTable(StructVerbs, Table):
    """A table of records (``shmdict.open(name, shmdict.Struct(...))``)."""

    layout: Struct

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._record_class = record_class(self.layout)
        self._default_record = self.layout.unpack(self.layout.default_extra()[8:])
        #: update()'s record from bytes, and back: C, without a Python frame.
        codec = record_codec(self.layout)
        self._make_record, self._pack_record = codec.make, codec.pack
        #: slot -> thread ident of the update() blocks open in this process:
        #: a verb on such a key from the same thread would wait for itself.
        self._updating: Dict[int, int] = {}

    def _refuse_self_deadlock(self, key: Key) -> None:
        """Raise LockHeld if this thread is inside ``with self.update(key)``."""
        found = self._core.locate(key, False)
        if found is not None and self._updating.get(found[0]) == threading.get_ident():
            raise LockHeld(f"key {key!r} of table {self.name!r} is being updated by this "
                           f"thread (inside `with d.update(key)`); a verb on it here would "
                           f"wait for itself forever: change the record through the "
                           f"update's record, or finish the block first")

    def _remove(self, key: Key) -> Tuple[bool, Any]:
        if self._updating:
            self._refuse_self_deadlock(key)
        return super()._remove(key)

    # ------------------------------------------------------------ reading
    def read(self, key: Key) -> Tuple[Any, bool]:
        """``(record, exists)``: a consistent snapshot; never creates the key."""
        try:
            data = self._core.record_get(key)
        except _core.TornRecord:         # writers kept it changing: read under its lock
            return self._read_locked(key)
        if data is None:
            return self._default_record, False
        return _new_tuple(self.layout.record, self.layout.unpack_values(data)), True

    def _read_locked(self, key: Key) -> Tuple[Any, bool]:
        while True:
            found = self._core.locate(key, False)
            if found is None:
                return self._default_record, False
            value = self._snapshot_at(found[0], found[1])
            if value is not _STALE:
                return value, True

    def _snapshot_at(self, slot: int, state: int) -> Any:
        try:
            data = self._core.record_read(slot, state)
        except _core.TornRecord:
            # Writers completed writes faster than the record could be
            # copied, every time: under the record lock none can, and the
            # current copy is whole (nothing to repair: release, no write).
            if self._lock(slot, state) is None:
                return _STALE
            data = self._core.record_read(slot, state, True)
            self._core.record_commit(slot, state, None)
        return _STALE if data is None else self.layout.unpack(data)

    def _default_snapshot(self) -> Any:
        return self._default_record

    # ------------------------------------------------------------ writing
    def _lock(self, slot: int, state: int, blocking: bool = True) -> Optional[bool]:
        """Take slot's record lock: None if the slot changed (or, not
        blocking, the lock is taken), else whether it was inherited from a
        writer that died."""
        code = self._core.lock_acquire(slot, state, blocking, -1.0)
        if code not in (Outcome.OK, Outcome.RECOVERED):
            return None
        if code == Outcome.RECOVERED:
            _warn_inherited(self.name)
        return code == Outcome.RECOVERED

    def _begin(self, key: Key) -> Tuple[int, int, bool, bytes]:
        """Lock ``key``'s record (creating the key) and copy it:
        (slot, state, recovered, data).  Finish with :meth:`_commit`."""
        if self._updating:
            self._refuse_self_deadlock(key)
        slot, state, recovered, data = self._core.record_begin(key)
        if recovered:
            _warn_inherited(self.name)
        return slot, state, recovered, data

    def _commit(self, slot: int, state: int, data: Optional[bytes]) -> None:
        """Write ``data`` (None: nothing) and release the record lock."""
        if self._core.record_commit(slot, state, data) != Outcome.OK:
            raise NotOwner("record lock lost during a write (the table was repaired?)")

    def _create_holding(self, key: Key, data: bytes) -> bool:
        """Create ``key`` holding ``data`` in one insert; False if it exists."""
        if self._core.locate(key, False) is not None:
            return False
        return self._locate(key, True, extra=self.layout.slot_extra(data))[2]  # type: ignore[index]

    def set(self, key: Key, record: Any, *, ttl: Optional[float] = None) -> None:
        """Store a whole record (a tuple, named tuple or mapping of fields).

        ``ttl``: seconds until the key expires (None: keep its expiry); set
        right after the write, with the record lock held for an existing key.
        """
        data = self.layout.pack(record)
        if ttl is not None:
            validate_seconds(ttl, "ttl")
        if self._create_holding(key, data):
            if ttl is not None:
                self._core.set_ttl(key, ttl)
            return
        slot, state, _, _ = self._begin(key)
        try:
            if ttl is not None:
                self._core.set_ttl(key, ttl)
        finally:
            self._commit(slot, state, data)

    def cas(self, key: Key, old: Any, new: Any, set_on_not_exists: bool = False, *,
            ttl: Optional[float] = None) -> bool:
        """Replace the record with ``new`` if it equals ``old``.

        A missing key is created holding ``new`` (True) only with
        ``set_on_not_exists``; otherwise False and nothing is created.
        ``ttl`` (seconds; None: keep the key's expiry) is set only on success.
        """
        old_data, new_data = self.layout.pack(old), self.layout.pack(new)
        if ttl is not None:
            validate_seconds(ttl, "ttl")
        if self._core.locate(key, False) is None:
            if not set_on_not_exists:
                return False
            if self._create_holding(key, new_data):
                if ttl is not None:
                    self._core.set_ttl(key, ttl)
                return True
        slot, state, _, current = self._begin(key)
        swapped = current == old_data
        try:
            if swapped and ttl is not None:
                self._core.set_ttl(key, ttl)
        finally:
            self._commit(slot, state, new_data if swapped else None)
        return swapped

    def update(self, key: Key) -> "_Update":
        """``with d.update(key) as rec: rec.tokens -= 1``: atomic read-modify-write.

        Holds the record lock for the block; writes back on a clean exit, not
        at all on an exception.  ``rec.recovered`` says whether the previous
        writer died inside its own update.

        (Replaced at import by the C core's equivalent, which makes the same
        ``_Update`` without a Python frame: see ``bind_record_update`` below.)
        """
        return _Update(self, key)

    def _recovered_warning(self) -> None:
        """The C update's OwnerDiedWarning (the previous writer died inside)."""
        _warn_inherited(self.name, 2)

    def _lost_record_lock(self) -> None:
        """The C update's error when the commit found the record lock not held."""
        raise NotOwner("record lock lost during a write (the table was repaired?)")

    # ------------------------------------------------------------ deleting
    def _delete_slot(self, slot: int, state: int, stripe: int) -> Any:
        # Take the record lock so no update is half-done, snapshot, and let
        # the tombstone release the lock in the same atomic step.  Never wait
        # for the record lock while holding the stripe: its holder may be
        # inserting a key of this stripe inside its update() block.
        if self._lock(slot, state, blocking=False) is None:
            return _STALE                    # _wait_before_retry waits for it
        data = self._core.record_read(slot, state, True)
        snapshot = self._default_record if data is None else self.layout.unpack(data)
        code, _ = self._core.delete(slot, state, stripe, DELETE_IF_MINE)
        if code != Outcome.OK:
            self._core.lock_release(slot, state)
            return _STALE
        return snapshot

    def _wait_before_retry(self, slot: int, state: int) -> None:
        if self._lock(slot, state) is not None:
            self._core.lock_release(slot, state)


class _PyUpdate:
    """The context manager of ``StructTable.update``: lock, read, yield, write back.

    The reference implementation, in Python; the table hands out
    :class:`_Update`, whose ``__enter__`` and ``__exit__`` are the C core's
    (``bind_record_update``), doing the same with the same callbacks.
    """

    __slots__ = ("_table", "_key", "_slot", "_state", "_rec")

    def __init__(self, table: StructTable, key: Key) -> None:
        self._table = table
        self._key = key

    # __enter__ and __exit__ inline _begin and _commit: the with-block is
    # the verb as users write it, so its cost is the verb's cost.
    def __enter__(self) -> MutableRecord:
        table = self._table
        if table._updating:
            table._refuse_self_deadlock(self._key)
        self._slot, self._state, recovered, data = table._core.record_begin(self._key)
        if recovered:
            _warn_inherited(table.name, 3)
        table._updating[self._slot] = _get_ident()
        try:
            self._rec = rec = table._make_record(data, recovered)
        except BaseException:
            table._updating.pop(self._slot, None)
            table._commit(self._slot, self._state, None)
            raise
        return rec

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        table = self._table
        table._updating.pop(self._slot, None)
        data = None
        if exc_type is None:
            try:
                data = table._pack_record(self._rec)
            except BaseException:
                table._commit(self._slot, self._state, None)
                raise
        if table._core.record_commit(self._slot, self._state, data) != _OK:
            raise NotOwner("record lock lost during a write (the table was repaired?)")


_OK = int(Outcome.OK)
_get_ident = threading.get_ident


class _Update(_PyUpdate):
    """``_PyUpdate`` with C ``__enter__`` / ``__exit__`` (the with-block as users
    write it is the verb, so its cost is the verb's cost)."""

    __slots__ = ()


_core.bind_record_update(_Update, StructTable)


def _warn_inherited(table_name: str, stacklevel: int = 4) -> None:
    warnings.warn(OwnerDiedWarning(
        f"a writer of table {table_name!r} died inside an update; the record "
        f"keeps whatever it had written"), stacklevel=stacklevel)
