"""The Counter layout: an atomic int64 per key.

The verbs on an existing key run entirely in C (a per-process cache maps the
key to its slot, validated against the slot's state word on every call), so
``d.add(key)`` costs one C call and one 16-byte compare-and-swap.  Values are
exact Python ints in int64 range; an add that would leave it raises
``OverflowError`` and changes nothing.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Tuple

from ...keys import Key
from ...layouts import Outcome
from ...verbs import CounterVerbs
from .segment import Segment
from .table import _STALE, DELETE_TAKE_VALUE, Table


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
        self._value = core.value
        self._gcra_monotonic = core.gcra

    def _gcra_hit(self, emission_ns: int, tolerance_ns: int, burst: int, result_type: type,
                  fallback: Tuple[type, Callable[[Key, int], Any]]) -> Callable[..., Any]:
        """``hit(key, cost=1)`` of a RateLimiter as one C call, its settings bound."""
        return functools.partial(self._core.gcra_hit, emission_ns, tolerance_ns, burst,
                                 result_type, fallback)

    def _handle_cas(self, key: Key, old: int, new: int) -> bool:
        """CAS on a handle's key, which is re-created at 0 if it was deleted."""
        self._core.locate(key, True)
        return self._core.cas(key, old, new)

    def _delete_slot(self, slot: int, state: int, stripe: int) -> Any:
        code, word0 = self._core.delete(slot, state, stripe, DELETE_TAKE_VALUE)
        return _STALE if code == Outcome.STALE else word0
