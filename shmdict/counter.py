"""The Counter layout: an atomic int64 per key.

The verbs on an existing key run entirely in C (a per-process cache maps the
key to its slot, validated against the slot's state word on every call), so
``d.add(key)`` costs one C call and one 16-byte compare-and-swap.  Values are
exact Python ints in int64 range; an add that would leave it raises
``OverflowError`` and changes nothing.
"""
from __future__ import annotations

from typing import Any, Tuple

from . import _core
from .keys import Key
from .table import _STALE, DELETE_TAKE_VALUE, Table


class CounterVerbs:
    """The Counter verbs every backend's counter table shares, on top of its
    ``set`` and ``values``."""

    def __setitem__(self, key: Key, value: Any) -> None:
        if isinstance(value, CounterHandle):
            if value._table is self and value._key == key:
                return   # the tail of `d[key] += n`: the add already happened
            value = value.value
        self.set(key, value)  # type: ignore[attr-defined]

    def total(self) -> int:
        """The sum of all values (a snapshot)."""
        return sum(self.values())  # type: ignore[attr-defined]

    def _handle(self, key: Key) -> "CounterHandle":
        return CounterHandle(self, key)


class CounterTable(CounterVerbs, Table):
    """A table of atomic int64 counters (``shmdict.open(name, shmdict.Counter())``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The hot verbs are the C core's own methods, bound per instance so
        # a call costs no Python frame.  The definitions below document them
        # and serve subclasses.
        core = self._core
        self.add = core.add                 # type: ignore[method-assign]
        self.read = core.read               # type: ignore[method-assign]
        self.cas = core.cas                 # type: ignore[method-assign]
        self.exchange = core.exchange       # type: ignore[method-assign]
        self.set = core.set                 # type: ignore[method-assign]
        self._value = core.value            # type: ignore[method-assign]

    def add(self, key: Key, n: int = 1) -> int:  # type: ignore[no-redef]
        """Atomically add ``n`` (get-or-create at 0); return the new value."""
        return self._core.add(key, n)

    def read(self, key: Key) -> Tuple[int, bool]:  # type: ignore[no-redef]
        """``(value, exists)``; a missing key reads ``(0, False)`` and is not created."""
        return self._core.read(key)

    def set(self, key: Key, value: int) -> None:  # type: ignore[no-redef]
        """Store ``value`` (creating the key)."""
        self._core.set(key, value)

    def exchange(self, key: Key, value: int) -> int:  # type: ignore[no-redef]
        """Store ``value`` and return the previous one (creating the key)."""
        return self._core.exchange(key, value)

    def cas(self, key: Key, old: int, new: int,  # type: ignore[no-redef]
            set_on_not_exists: bool = False) -> bool:
        """Compare-and-swap: ``old`` -> ``new`` if the value is ``old``.

        A missing key is set to ``new`` (True) only with ``set_on_not_exists``;
        otherwise the result is False and nothing is created.
        """
        return self._core.cas(key, old, new, set_on_not_exists)

    # The two hooks CounterHandle needs besides the verbs above (a backend's
    # counter table provides the same ones, so the handle serves both).
    def _value(self, key: Key) -> int:  # type: ignore[no-redef]
        """The value of ``key``, creating it at 0."""
        return self._core.value(key)

    def _handle_cas(self, key: Key, old: int, new: int) -> bool:
        """CAS on a handle's key, which is re-created at 0 if it was deleted."""
        self._core.locate(key, True)
        return self._core.cas(key, old, new)

    def _delete_slot(self, slot: int, state: int, stripe: int) -> Any:
        code, word0 = self._core.delete(slot, state, stripe, DELETE_TAKE_VALUE)
        return _STALE if code == _core.STALE else word0



class CounterHandle:
    """A key's counter, as returned by ``d[key]``, ``d.get`` and ``d.load``.

    Every operation goes to the shared slot: the handle holds no value.  It
    only uses the table's verbs (``add``, ``set``, ``exchange``) and two hooks
    (``_value``, ``_handle_cas``), so it serves every backend's counter table.
    """

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
