"""The Counter layout: an atomic int64 per key.

The verbs on an existing key run entirely in C (a per-process cache maps the
key to its slot, validated against the slot's state word on every call), so
``d.add(key)`` costs one C call and one 16-byte compare-and-swap.  Values are
exact Python ints in int64 range; an add that would leave it raises
``OverflowError`` and changes nothing.
"""
from __future__ import annotations

import functools
import struct
from typing import Any, Callable, List, Tuple

from ...handles import CounterHandle
from ...keys import Key
from ...layouts import Outcome
from ...verbs import CounterVerbs
from . import _core
from .segment import Segment
from .table import _STALE, DELETE_TAKE_VALUE, Table

_WORD = struct.Struct("<q")
_FLOAT = struct.Struct("<d")


def float_of_word(word: int) -> float:
    """The float64 whose bits a value word of ``add_float`` holds."""
    return _FLOAT.unpack(_WORD.pack(word))[0]


def word_of_float(x: float) -> int:
    """The value word (a signed int64) holding the bits of ``x``."""
    return _WORD.unpack(_FLOAT.pack(x))[0]


class ShmCounterHandle(CounterHandle):
    """The shared-memory backend's :class:`~shmdict.handles.CounterHandle`:
    the documented class with the table's C core in one more slot, and a C
    ``add`` (installed by ``_core.bind_counter_handle``), so ``h.add()``
    costs what ``d.add(key)`` does."""

    __slots__ = ("_core",)


_core.bind_counter_handle(ShmCounterHandle)


class CounterTable(CounterVerbs, Table):
    """A table of atomic int64 counters (``shmdict.open(name, shmdict.Counter())``).

    The hot verbs are the C core's own methods, bound per table so that a call
    costs no Python frame (their documentation is the core's, see
    ``_core.pyi``):

    * ``add(key, n=1) -> int``: atomically add ``n`` (get-or-create at 0);
      return the new value;
    * ``read(key) -> (value, exists)``: a missing key reads ``(0, False)``
      and is not created;
    * ``set(key, value)``, ``exchange(key, value) -> old`` (creating the key);
    * ``cas(key, old, new, set_on_not_exists=False) -> bool``: a missing key
      is set to ``new`` (True) only with ``set_on_not_exists``;
    * ``add_float(key, x=1.0) -> float`` and ``set_float(key, x)``: the value
      word read as the IEEE-754 bits of a float64 (a CAS loop: exact for
      integers up to 2**53, no increment lost across processes); for tables
      that hold only floats, as :mod:`shmdict.prometheus` does (``read`` and
      ``items`` then return the bits: decode with :func:`float_of_word`);
    * ``add_many({key: n, ...})`` (or ``(key, n)`` pairs) ``-> [new values]``
      and ``read_many(keys) -> [(value, exists)]``: the batch verbs, one C
      call for the whole batch;
    * ``_value(key) -> int``: the handle's value, creating the key at 0;
    * ``_gcra_monotonic(key, emission_ns, tolerance_ns, cost)``: one GCRA
      step on ``CLOCK_MONOTONIC`` (the rate limiters' contract, see
      :mod:`shmdict.ratelimit`).
    """

    add: Callable[..., int]
    read: Callable[[Key], Tuple[int, bool]]
    set: Callable[[Key, int], None]
    exchange: Callable[[Key, int], int]
    cas: Callable[..., bool]
    add_many: Callable[[Any], List[int]]
    read_many: Callable[[Any], List[Tuple[int, bool]]]
    add_float: Callable[..., float]
    set_float: Callable[[Key, float], None]
    _value: Callable[[Key], int]
    _gcra_monotonic: Callable[[Key, int, int, int], Tuple[bool, int, int, int]]

    def __init__(self, segment: Segment) -> None:
        super().__init__(segment)
        core = self._core
        self.add = core.add
        self.read = core.read
        self.set = core.set
        self.exchange = core.exchange
        self.cas = core.cas
        self.add_many = core.add_many
        self.read_many = core.read_many
        self.add_float = core.add_float
        self.set_float = core.set_float
        self._value = core.value
        self._gcra_monotonic = core.gcra

    def _gcra_hit(self, emission_ns: int, tolerance_ns: int, burst: int, result_type: type,
                  fallback: Tuple[type, Callable[[Key, int], Any]]) -> Callable[..., Any]:
        """``hit(key, cost=1)`` of a RateLimiter as one C call, its settings bound."""
        return functools.partial(self._core.gcra_hit, emission_ns, tolerance_ns, burst,
                                 result_type, fallback)

    def _handle(self, key: Key) -> ShmCounterHandle:
        return ShmCounterHandle(self, key)

    def float_cells(self, keys: Tuple[Key, ...], **options: Any) -> Any:
        """A :class:`_core.FloatCells` on ``keys`` (float64 value words): the
        series of one metric child, each key's slot cached, updated in one C
        call (``inc``, ``add``, ``sub``, ``set``, ``observe``; see ``_core.pyi``)."""
        return _core.FloatCells(self._core, tuple(keys), **options)

    def _handle_cas(self, key: Key, old: int, new: int) -> bool:
        """CAS on a handle's key, which is re-created at 0 if it was deleted."""
        self._core.locate(key, True)
        return self._core.cas(key, old, new)

    def _delete_slot(self, slot: int, state: int, stripe: int) -> Any:
        code, word0 = self._core.delete(slot, state, stripe, DELETE_TAKE_VALUE)
        return _STALE if code == Outcome.STALE else word0
