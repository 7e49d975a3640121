"""A ``limits`` storage on a shmdict table: Flask-Limiter and slowapi across workers.

`limits <https://limits.readthedocs.io>`_ is the library under Flask-Limiter
and slowapi.  Importing this module registers the storage scheme
``shmdict://NAME`` with it, so every worker of a host shares one table::

    import shmdict.limits_storage          # registers shmdict://
    from limits import parse, storage, strategies

    store = storage.storage_from_string("shmdict://myapp.limits?capacity=100000")
    limiter = strategies.FixedWindowRateLimiter(store)
    limiter.hit(parse("100/minute"), "client", "10.0.0.7")

    # Flask-Limiter: Limiter(key_func, app=app, storage_uri="shmdict://myapp.limits")
    # (import shmdict.limits_storage first, e.g. in the app module)

URI options (query string, or keyword arguments of the storage):
``capacity`` (keys, default 100000) and ``key_size`` (bytes of a key,
default 160: ``limits`` keys read like ``LIMITER/10.0.0.7/100/1/minute``).
``clock=`` (keyword only) takes a clock as in :mod:`shmdict.ratelimit`, for
tests.

**Strategies.**

- *fixed window*: supported.  A key's word is ``window end (ms) << 24 |
  count`` (:func:`shmdict.ratelimit.rules.fixed_window_pack`), updated by one CAS:
  the window opens at the key's first hit and lasts the limit's period, as
  with the Redis and memory storages.  Counts saturate at 16777215, which is
  only ever reached by keys already far over any sensible limit.
- *sliding window counter*: supported.  The previous and current window
  counts and the window index share one word (20 bits per count, so a limit
  can be at most 1048575 per period), so "is there room? then count it" is one
  CAS: exact under any concurrency, where the memory and Redis storages
  increment first and take the increment back on overshoot.
- *moving window*: **not supported.**  It needs the timestamp of each of the
  last ``limit`` hits of a key -- a list as long as the limit -- and a table
  slot is a fixed-size int64; a table of ``capacity * limit`` timestamps
  would be the honest alternative, and :class:`shmdict.RateLimiter` (GCRA)
  gives the same "no edge between windows" guarantee in one int64.
  ``MovingWindowRateLimiter(store)`` raises ``NotImplementedError`` (limits'
  own check, since this class has no ``acquire_entry``).

**Expiry.**  Time is ``CLOCK_MONOTONIC`` (shared by the host's processes;
windows survive wall-clock changes); :meth:`get_expiry` converts to the
wall-clock timestamp ``limits`` expects.  An expired key reads as absent.
When a new key finds the table full, the storage sweeps expired keys
(:meth:`expire`, also callable at any time) and retries once; a table full of
live keys raises ``shmdict.TableFull``.
"""
from __future__ import annotations

import time
import urllib.parse
from typing import Any, Callable, Optional, Tuple

from limits.storage.base import SlidingWindowCounterSupport, Storage

from .errors import ShmDictError, TableFull
from .layouts import Counter
from .ratelimit.limiters import Clock, sweep_table
from .ratelimit.rules import (
    NS,
    SW_COUNT_MAX,
    fixed_window_merge,
    fixed_window_open,
    fixed_window_pack,
    fixed_window_unpack,
    sliding_window_merge,
    sliding_window_pack,
    sliding_window_unpack,
    sliding_window_weighted,
)

DEFAULT_CAPACITY = 100_000
DEFAULT_KEY_SIZE = 160

_FIXED, _SLIDING = "f", "s"


def _period_ns(expiry: float) -> int:
    if isinstance(expiry, bool) or not isinstance(expiry, (int, float)) or not expiry > 0:
        raise ValueError(f"expiry must be a positive number of seconds, got {expiry!r}")
    return max(1, round(expiry * NS))


class ShmDictStorage(Storage, SlidingWindowCounterSupport):
    """``limits`` storage on the shmdict Counter table ``NAME`` of ``shmdict://NAME``."""

    STORAGE_SCHEME = ["shmdict"]

    def __init__(self, uri: Optional[str] = None, wrap_exceptions: bool = False, *,
                 capacity: Optional[int] = None, key_size: Optional[int] = None,
                 clock: Optional[Clock] = None, backend: Optional[str] = None,
                 **options: Any) -> None:
        from .api import open as open_table
        name, query = _parse_uri(uri)
        capacity = _option(query, "capacity", capacity, DEFAULT_CAPACITY)
        key_size = _option(query, "key_size", key_size, DEFAULT_KEY_SIZE)
        if clock is not None and not callable(clock):
            raise TypeError("clock must be a callable returning nanoseconds")
        self.clock: Clock = clock if clock is not None else time.monotonic_ns
        self.table = open_table(name, Counter(), capacity, key_size, backend=backend)
        self.name = name
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)

    @property
    def base_exceptions(self) -> Any:
        return ShmDictError

    # --------------------------------------------------------- helpers
    def _update(self, key: Any, step: Callable[[int, int], Optional[int]]) -> Tuple[int, int]:
        """CAS loop: ``step(word, now)`` gives the new word (None: leave it).

        Returns ``(word it decided on, now)``; sweeps once when the table is full.
        """
        read, clock = self.table.read, self.clock
        swept = False
        while True:
            word = read(key)[0]
            now = clock()
            new = step(word, now)
            if new is None or new == word:
                return word, now
            try:
                if self.table.cas(key, word, new, True):
                    return new, now
            except TableFull:
                if swept or not self.expire():
                    raise
                swept = True

    def _is_idle(self, key: Any, value: int, now: int) -> bool:
        if isinstance(key, tuple) and key and key[0] == _SLIDING:
            previous, current, _ = sliding_window_unpack(value, now, key[1])
            return previous == 0 and current == 0
        return fixed_window_unpack(value, now)[1] == 0

    def _merge(self, key: Any) -> Callable[[int, int, int], int]:
        if isinstance(key, tuple) and key and key[0] == _SLIDING:
            period = key[1]
            return lambda current, taken, now: sliding_window_merge(current, taken, now, period)
        return fixed_window_merge

    def expire(self) -> int:
        """Delete every expired key now; return how many."""
        removed = sweep_table(_KindView(self.table, _FIXED), self._is_idle, fixed_window_merge,
                              self.clock)
        # Sliding keys carry their period, which their merge needs: one pass each.
        periods = {key[1] for key in self.table.keys()
                   if isinstance(key, tuple) and key and key[0] == _SLIDING}
        for period in periods:
            removed += sweep_table(_KindView(self.table, _SLIDING, period), self._is_idle,
                                   self._merge((_SLIDING, period)), self.clock)
        return removed

    # ---------------------------------------------------- fixed window
    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        """Add ``amount`` to ``key``'s window (opening one of ``expiry`` s if none); the count."""
        period = _period_ns(expiry)

        def step(word: int, now: int) -> int:
            count, end = fixed_window_unpack(word, now)
            return fixed_window_pack(count + amount,
                                     end or fixed_window_open(now, period))

        word, now = self._update((_FIXED, key), step)
        return fixed_window_unpack(word, now)[0]

    def get(self, key: str) -> int:
        """The count of ``key``'s current window (0 if none)."""
        return fixed_window_unpack(self.table.read((_FIXED, key))[0], self.clock())[0]

    def get_expiry(self, key: str) -> float:
        """When ``key``'s window ends, as a ``time.time()`` timestamp (now if none)."""
        now = self.clock()
        _, end = fixed_window_unpack(self.table.read((_FIXED, key))[0], now)
        return time.time() + (end - now) / NS if end else time.time()

    def clear(self, key: str) -> None:
        self.table.delete((_FIXED, key))

    def check(self) -> bool:
        """Healthy while the table is attached."""
        return not self.table.closed

    def reset(self) -> Optional[int]:
        """Delete every key of the table; return how many there were."""
        removed = 0
        for key in self.table.keys():
            if self.table.load_and_delete(key)[1]:
                removed += 1
        return removed

    # ------------------------------------------- sliding window counter
    def acquire_sliding_window_entry(self, key: str, limit: int, expiry: int,
                                     amount: int = 1) -> bool:
        """Count ``amount`` if the weighted count leaves room for it (one CAS)."""
        if limit > SW_COUNT_MAX:
            raise ValueError(f"the shmdict storage's sliding windows count up to "
                             f"{SW_COUNT_MAX} hits per period, not {limit}")
        if amount > limit:
            return False
        period = _period_ns(expiry)
        fits = []

        def step(word: int, now: int) -> Optional[int]:
            previous, current, elapsed = sliding_window_unpack(word, now, period)
            fits[:] = [sliding_window_weighted(previous, current, elapsed, period)
                       + amount <= limit]
            if not fits[0]:
                return None
            return sliding_window_pack(previous, current + amount, now, period)

        self._update((_SLIDING, period, key), step)
        return fits[0]

    def get_sliding_window(self, key: str, expiry: int) -> Tuple[int, float, int, float]:
        """``(previous count, previous ttl, current count, current ttl)``, ttls in seconds."""
        period = _period_ns(expiry)
        now = self.clock()
        previous, current, elapsed = sliding_window_unpack(
            self.table.read((_SLIDING, period, key))[0], now, period)
        left = (period - elapsed) / NS
        return previous, (left if previous else 0.0), current, left + period / NS

    def clear_sliding_window(self, key: str, expiry: int) -> None:
        self.table.delete((_SLIDING, _period_ns(expiry), key))

    # -------------------------------------------------------- lifecycle
    def close(self) -> None:
        self.table.close()

    def __repr__(self) -> str:
        return f"<ShmDictStorage shmdict://{self.name}>"


class _KindView:
    """The keys of one kind (and period) of a storage's table, for sweeping."""

    def __init__(self, table: Any, kind: str, period: Optional[int] = None) -> None:
        self._table, self._kind, self._period = table, kind, period
        self.read, self.cas, self.load_and_delete = table.read, table.cas, table.load_and_delete

    def items(self):
        for key, value in self._table.items():
            if isinstance(key, tuple) and key and key[0] == self._kind \
                    and (self._period is None or key[1] == self._period):
                yield key, value


def _parse_uri(uri: Optional[str]) -> Tuple[str, dict]:
    if not uri:
        raise ValueError("the shmdict storage needs a URI: shmdict://TABLE_NAME")
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme != "shmdict":
        raise ValueError(f"not a shmdict storage URI: {uri!r} (use shmdict://TABLE_NAME)")
    name = parsed.netloc or parsed.path.lstrip("/")
    if not name or (parsed.netloc and parsed.path not in ("", "/")):
        raise ValueError(f"bad shmdict storage URI {uri!r}: use shmdict://TABLE_NAME"
                         f"[?capacity=N&key_size=N]")
    query = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
    unknown = set(query) - {"capacity", "key_size"}
    if unknown:
        raise ValueError(f"unknown shmdict storage options {sorted(unknown)} in {uri!r} "
                         f"(known: capacity, key_size)")
    return name, query


def _option(query: dict, option: str, given: Optional[int], default: int) -> int:
    if given is not None:
        return given
    if option not in query:
        return default
    try:
        return int(query[option])
    except ValueError:
        raise ValueError(f"shmdict storage option {option}={query[option]!r} "
                         f"is not an integer") from None
