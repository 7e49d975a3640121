"""The limiters: :class:`RateLimiter` (GCRA), :class:`FixedWindowLimiter`,
:class:`SlidingWindowLimiter`, on a Counter table of any backend.

The rules they apply are :mod:`shmdict.ratelimit.rules`; the contract, the
clocks and expiry are told in the docstring of :mod:`shmdict.ratelimit`.
"""
from __future__ import annotations

import functools
import math
import time
from typing import Any, Callable, Iterable, NamedTuple, Optional, Tuple

from ..errors import LayoutMismatch, TableFull
from ..keys import Key
from ..layouts import Counter
from .rules import (
    FW_COUNT_MAX,
    NS,
    SW_COUNT_MAX,
    emission_interval_ns,
    fixed_window_merge,
    fixed_window_open,
    fixed_window_pack,
    fixed_window_unpack,
    gcra_merge,
    gcra_step,
    sliding_window_merge,
    sliding_window_pack,
    sliding_window_unpack,
    sliding_window_weighted,
)

#: A clock: a callable returning integer nanoseconds, shared by the processes.
Clock = Callable[[], int]

#: The key of a limiter's table that holds its settings' fingerprint (the
#: table is opened with one slot more than ``capacity`` for it).
SETTINGS_KEY = b"\x00shmdict.limiter.settings"


def monotonic_clock() -> int:
    """``CLOCK_MONOTONIC`` in nanoseconds: one clock for every process of a Linux host."""
    return time.monotonic_ns()


class SimulatedClock:
    """A clock for tests: starts at ``start_ns`` and moves only when told.

    >>> clock = SimulatedClock()
    >>> limiter = RateLimiter("test.limits", rate=10, clock=clock)
    >>> clock.advance(0.1)     # a tenth of a second passes
    """

    def __init__(self, start_ns: int = 1_000 * NS) -> None:
        self.now_ns = int(start_ns)

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, seconds: float = 0.0, *, ns: int = 0) -> int:
        """Move forward by ``seconds`` plus ``ns`` nanoseconds; return the new time."""
        step = round(seconds * NS) + int(ns)
        if step < 0:
            raise ValueError("a monotonic clock never goes back")
        self.now_ns += step
        return self.now_ns

    def __repr__(self) -> str:
        return f"SimulatedClock(now_ns={self.now_ns})"


class RateLimitResult(NamedTuple):
    """The outcome of a hit (or a peek): truthy when allowed.

    ``limit`` is the burst; ``remaining`` how many hits of cost 1 would still
    be allowed right now, after this call; ``retry_after`` the seconds to wait
    before this hit would be allowed (0.0 when it was); ``reset_after`` the
    seconds until the key is back to its full ``limit``.
    """

    allowed: bool
    limit: int
    remaining: int
    retry_after: float
    reset_after: float

    def __bool__(self) -> bool:
        return self.allowed


# Building the named tuple through tuple.__new__ skips the generated
# __new__'s argument handling: a third of the cost of a hit.
_result = tuple.__new__


# ------------------------------------------------------------- sweeping
def sweep_table(table: Any, is_idle: Callable[[Key, int, int], bool],
                merge: Callable[[int, int, int], int], clock: Clock) -> int:
    """Delete the keys whose state is idle ("as if never hit"); return how many.

    ``is_idle(key, value, now)`` tells an idle value; ``merge(current, taken,
    now)`` combines two states into one at least as strict as both.  A key
    is first CASed from its idle value to 0 (which every encoding here reads
    as "no history", so a concurrent hit sees the same thing either way), then
    deleted with ``load_and_delete``.  If a hit slipped in between, the
    deleted value is not 0: it is put back, merged with whatever a concurrent
    hit may have inserted meanwhile, so no hit is ever forgotten (at worst a
    limit is momentarily stricter than it should be).
    """
    removed = 0
    now = clock()
    for key, value in table.items():
        if key == SETTINGS_KEY:
            continue
        if value != 0 and not is_idle(key, value, now):
            continue
        if value != 0 and not table.cas(key, value, 0):
            continue        # a hit changed it: it is live again
        taken, existed = table.load_and_delete(key)
        if not existed:
            continue
        if taken == 0:
            removed += 1
            continue
        while True:         # put the slipped-in hit back
            current, exists = table.read(key)
            merged = merge(current, taken, clock()) if exists else taken
            if table.cas(key, current, merged, set_on_not_exists=True):
                break
    return removed


# ----------------------------------------------------------- RateLimiter
def _check_cost(cost: object, most: int) -> int:
    if not isinstance(cost, int) or isinstance(cost, bool):
        raise TypeError(f"cost must be an int, not {type(cost).__name__}")
    if cost < 0:
        raise ValueError(f"cost must be >= 0, got {cost}")
    if cost > most:
        raise ValueError(f"cost {cost} exceeds the limit's burst of {most}: "
                         f"such a hit could never be allowed")
    return cost


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


class _Limiter:
    """What the limiters share: the table, the clock, sweeping, lifecycle."""

    def __init__(self, name: str, capacity: int, key_size: int, backend: Optional[str],
                 clock: Optional[Clock]) -> None:
        from ..api import open as open_table
        if clock is not None and not callable(clock):
            raise TypeError("clock must be a callable returning nanoseconds")
        self.name = name
        self.clock: Clock = clock if clock is not None else time.monotonic_ns
        self.table = open_table(name, Counter(), capacity + 1, key_size, backend=backend)
        #: Keys carry a TTL (their state's own end: a window's, a TAT) when the
        #: limiter runs on the table's clock, so a table of clients that come
        #: and go never fills; sweep() stays for limiters on another clock.
        self._expiring = clock is None and getattr(self.table, "_supports_ttl", False)
        # A table on a server keeps its time rules on the server's clock: the
        # one clock every host shares (each host's CLOCK_MONOTONIC counts
        # from its own boot).
        server_clock = getattr(self.table, "_server_clock", None)
        if server_clock is not None:
            if clock is not None:
                self.table.close()
                raise ValueError(f"a limiter on backend {backend!r} runs on the server's "
                                 f"clock, which every host shares; clock= is for limiters "
                                 f"on shared memory")
            self.clock = server_clock
        self._claim_settings()

    def _settings(self) -> Tuple[Any, ...]:
        """What makes two limiters on one table the same limiter."""
        raise NotImplementedError

    def _claim_settings(self) -> None:
        """Record this limiter's settings in its table, or refuse other ones.

        The rate is part of the table's identity: two processes opening one
        name with different rates would otherwise each enforce their own
        reading of the same state.
        """
        import hashlib
        digest = hashlib.blake2b(repr(self._settings()).encode(), digest_size=8).digest()
        mine = int.from_bytes(digest, "big") >> 1 or 1
        if self.table.cas(SETTINGS_KEY, 0, mine, True):
            return
        theirs = self.table.read(SETTINGS_KEY)[0]
        if theirs == mine:
            return
        if theirs == 0 and self.table.cas(SETTINGS_KEY, 0, mine):
            return
        self.table.close()
        raise LayoutMismatch(f"rate limiter {self.name!r} exists with other settings than "
                             f"{self!r}; open it with the settings it was created with, or "
                             f"shmdict.unlink({self.name!r}) first")

    # An encoding's idea of an idle value, and how to merge two values.
    def _is_idle(self, key: Key, value: int, now: int) -> bool:
        raise NotImplementedError

    def _merge(self, current: int, taken: int, now: int) -> int:
        raise NotImplementedError

    def sweep(self) -> int:
        """Delete keys whose state has fully expired; return how many were removed.

        Keys expire by themselves (their TTL) on the table's clock, and a full
        table reclaims expired keys on insert, so this is needed only by a
        limiter on a clock of its own (``clock=``, tests); it also reclaims
        expired slots now, counting them."""
        reclaimed = 0
        reclaim = getattr(self.table, "reclaim_expired", None)
        if reclaim is not None:
            reclaimed = reclaim()
        return reclaimed + sweep_table(self.table, self._is_idle, self._merge, self.clock)

    def _cas_or_sweep(self, key: Key, old: int, new: int, ttl_ns: int = 0) -> bool:
        """The table's CAS (creating the key), sweeping once if the table is full;
        with ``ttl_ns`` (on the table's clock) the key expires that much later."""
        if self._expiring and ttl_ns > 0:
            cas: Callable[..., bool] = functools.partial(self.table.cas, ttl=ttl_ns / NS)
        else:
            cas = self.table.cas
        try:
            return cas(key, old, new, True)
        except TableFull:
            if not self.sweep():
                raise
            return cas(key, old, new, True)

    def hit(self, key: Key, cost: int = 1) -> RateLimitResult:
        raise NotImplementedError

    def allow(self, key: Key, cost: int = 1) -> bool:
        """``hit(key, cost).allowed``."""
        return self.hit(key, cost).allowed

    def reset(self, key: Key) -> None:
        """Forget ``key``'s history: its next hit sees a full limit."""
        self.table.delete(key)

    def keys(self) -> Iterable[Key]:
        return [key for key in self.table.keys() if key != SETTINGS_KEY]

    def close(self) -> None:
        """Detach from the table (the shared state stays)."""
        self.table.close()

    def unlink(self) -> None:
        """Destroy the table and with it every key's state."""
        self.table.unlink()

    def __enter__(self) -> "_Limiter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class RateLimiter(_Limiter):
    """GCRA: ``rate`` hits per ``period`` seconds per key, bursts of ``burst``.

    ``burst`` (default: ``rate`` rounded down, at least 1) hits pass at once
    from an idle key; after that one hit per ``period / rate``.  The state of
    every key is one int64 in the Counter table ``name`` (created with
    ``capacity`` and ``key_size``, or attached to); see the module docstring
    for the rule, the backend contract and expiry.
    """

    def __init__(self, name: str, rate: float, period: float = 1.0,
                 burst: Optional[int] = None, capacity: int = 10_000, key_size: int = 64,
                 backend: Optional[str] = None, *, clock: Optional[Clock] = None) -> None:
        self.rate = _positive("rate", rate)
        self.period = _positive("period", period)
        if burst is None:
            burst = max(1, int(self.rate))
        if isinstance(burst, bool) or not isinstance(burst, int):
            raise TypeError(f"burst must be an int, not {type(burst).__name__}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self.burst = burst
        self.emission_interval_ns = emission_interval_ns(self.rate, self.period)
        self.tolerance_ns = burst * self.emission_interval_ns
        if self.tolerance_ns >= 1 << 62:
            raise ValueError("period / rate * burst is too long to count in nanoseconds")
        super().__init__(name, capacity, key_size, backend, clock)
        # A table may run the step itself (see the backend contract in
        # shmdict.ratelimit): a server on its own clock (``_gcra``), or
        # shared memory in C on CLOCK_MONOTONIC, the default clock, where
        # hit() itself becomes one C call with its settings bound in advance.
        self._remote = getattr(self.table, "_gcra", None)
        if self._remote is None and clock is None:
            native = getattr(self.table, "_gcra_monotonic", None)
            if native is not None:
                self._remote = native
                self.hit = self.table._gcra_hit(  # type: ignore[method-assign]
                    self.emission_interval_ns, self.tolerance_ns, self.burst,
                    RateLimitResult, (TableFull, self._hit_after_sweep))

    def _settings(self) -> Tuple[Any, ...]:
        return ("gcra", self.emission_interval_ns, self.tolerance_ns)

    def _hit_after_sweep(self, key: Key, cost: int) -> "RateLimitResult":
        """The C hit found the table full: the Python path sweeps and retries."""
        return RateLimiter.hit(self, key, cost)

    def _remote_after_sweep(self, key: Key, cost: int) -> Tuple[bool, int, int, int]:
        """The table was full: sweep expired keys and try once more."""
        if not self.sweep():
            raise TableFull(f"rate limiter {self.name!r} is full of keys with live state; "
                            f"open it with a larger capacity")
        return self._remote(key, self.emission_interval_ns, self.tolerance_ns, cost)

    def _step(self, key: Key, cost: int) -> Tuple[bool, int, int, int]:
        """One GCRA step on ``key``: (allowed, remaining, retry_after_ns, reset_after_ns).

        Done by the table when it can (the C core on the default clock, or a
        backend's server), else here with :func:`gcra_step` and the table's
        CAS: ``add(key, 0)`` reads the TAT, creating a new key at 0 ("no
        history"), and a cost of 0 only reads.
        """
        if self._remote is not None:
            try:
                return self._remote(key, self.emission_interval_ns, self.tolerance_ns, cost)
            except TableFull:
                return self._remote_after_sweep(key, cost)
        while True:
            try:
                tat = self.table.add(key, 0) if cost else self.table.read(key)[0]
            except TableFull:
                if not self.sweep():
                    raise
                continue
            tat_after, allowed, remaining, retry_ns, reset_ns = gcra_step(
                tat, self.clock(), self.emission_interval_ns, self.tolerance_ns, cost)
            if tat_after == tat or self.table.cas(key, tat, tat_after):
                return allowed, remaining, retry_ns, reset_ns

    def hit(self, key: Key, cost: int = 1) -> RateLimitResult:
        """Try to spend ``cost`` on ``key``; the result says whether it was allowed.

        A refused hit spends nothing.  ``cost`` 0 changes nothing (see :meth:`peek`).
        """
        if type(cost) is not int or cost != 1:      # bool is an int, not a cost
            _check_cost(cost, self.burst)
        allowed, remaining, retry_ns, reset_ns = self._step(key, cost)
        return _result(RateLimitResult, (bool(allowed), self.burst, remaining,
                                         retry_ns / NS, reset_ns / NS))

    def peek(self, key: Key) -> RateLimitResult:
        """Would a hit of cost 1 be allowed now?  Spends nothing, creates nothing.

        ``remaining`` is the number of cost-1 hits available right now.
        """
        _, remaining, _, reset_ns = self._step(key, 0)
        retry_ns = max(0, reset_ns + self.emission_interval_ns - self.tolerance_ns)
        return RateLimitResult(remaining >= 1, self.burst, remaining, retry_ns / NS,
                               reset_ns / NS)

    def _is_idle(self, key: Key, value: int, now: int) -> bool:
        return value <= now          # a TAT in the past: as if never hit

    def _merge(self, current: int, taken: int, now: int) -> int:
        return gcra_merge(current, taken, now)

    def __repr__(self) -> str:
        return (f"<RateLimiter {self.name!r} {self.rate:g}/{self.period:g}s "
                f"burst={self.burst}>")


#: Where window limiters on a server's clock count from (2025-01-01 UTC): a
#: fixed window word has 39 bits of milliseconds, 17 years from here.
WINDOW_EPOCH_NS = 1_735_689_600 * NS


class _WindowLimiter(_Limiter):
    def __init__(self, name: str, limit: int, period: float, capacity: int, key_size: int,
                 backend: Optional[str], clock: Optional[Clock], most: int) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise TypeError(f"limit must be an int, not {type(limit).__name__}")
        if not 1 <= limit <= most:
            raise ValueError(f"limit must be between 1 and {most}, got {limit}")
        self.limit = limit
        self.period = _positive("period", period)
        self.period_ns = max(1, round(self.period * NS))
        super().__init__(name, capacity, key_size, backend, clock)
        if getattr(self.table, "_server_clock", None) is not None:
            # The server's clock counts from 1970: a window word holds
            # milliseconds in 39 bits, so count them from WINDOW_EPOCH_NS.
            server = self.clock
            self.clock = lambda: server() - WINDOW_EPOCH_NS

    def _settings(self) -> Tuple[Any, ...]:
        return (type(self).__name__, self.limit, self.period_ns)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.limit}/{self.period:g}s>"


class FixedWindowLimiter(_WindowLimiter):
    """``limit`` hits per key per window of ``period`` seconds.

    A key's window opens at its first hit and lasts ``period`` (so windows of
    different keys do not all reset at the same instant); refused hits are
    not counted.  Simple and exact, but up to ``2 * limit`` hits can pass
    around a window's end; :class:`RateLimiter` has no such edge.
    """

    def __init__(self, name: str, limit: int, period: float = 1.0, capacity: int = 10_000,
                 key_size: int = 64, backend: Optional[str] = None, *,
                 clock: Optional[Clock] = None) -> None:
        if _positive("period", period) < 0.001:
            raise ValueError("a fixed window lasts at least 1 ms")
        super().__init__(name, limit, period, capacity, key_size, backend, clock, FW_COUNT_MAX)

    def hit(self, key: Key, cost: int = 1) -> RateLimitResult:
        """Count ``cost`` against ``key``'s window if it fits; say whether it did."""
        _check_cost(cost, self.limit)
        read, clock = self.table.read, self.clock
        while True:
            word = read(key)[0]
            now = clock()
            count, end = fixed_window_unpack(word, now)
            if not end:
                end = fixed_window_open(now, self.period_ns)
            if count + cost > self.limit:
                return RateLimitResult(False, self.limit, self.limit - count,
                                       (end - now) / NS, (end - now) / NS)
            if cost == 0 or self._cas_or_sweep(key, word, fixed_window_pack(count + cost, end),
                                               end - now):
                return RateLimitResult(True, self.limit, self.limit - count - cost, 0.0,
                                       (end - now) / NS)

    def peek(self, key: Key) -> RateLimitResult:
        """Would a hit of cost 1 be allowed now?  Spends nothing."""
        now = self.clock()
        count, end = fixed_window_unpack(self.table.read(key)[0], now)
        left = (end - now) / NS if end else 0.0
        allowed = count < self.limit
        return RateLimitResult(allowed, self.limit, self.limit - count,
                               0.0 if allowed else left, left)

    def _is_idle(self, key: Key, value: int, now: int) -> bool:
        return fixed_window_unpack(value, now)[1] == 0

    def _merge(self, current: int, taken: int, now: int) -> int:
        return fixed_window_merge(current, taken, now)


class SlidingWindowLimiter(_WindowLimiter):
    """The sliding window counter: ``limit`` hits per ``period``, approximately.

    Windows are aligned to the clock (window ``i`` is ``[i*period,
    (i+1)*period)``); a hit is allowed when ``floor(previous * (1 - elapsed /
    period)) + current + cost <= limit`` -- the rule of the ``limits``
    library.  It smooths the fixed window's edge at the cost of assuming the
    previous window's hits were evenly spread.  Refused hits are not counted.
    """

    def __init__(self, name: str, limit: int, period: float = 1.0, capacity: int = 10_000,
                 key_size: int = 64, backend: Optional[str] = None, *,
                 clock: Optional[Clock] = None) -> None:
        super().__init__(name, limit, period, capacity, key_size, backend, clock, SW_COUNT_MAX)

    def _state(self, word: int, now: int) -> Tuple[int, int, int]:
        return sliding_window_unpack(word, now, self.period_ns)

    def _retry_ns(self, previous: int, current: int, elapsed: int, cost: int) -> int:
        """Nanoseconds until ``cost`` fits, if nobody else hits meanwhile."""
        p, limit = self.period_ns, self.limit
        room = limit - current - cost            # what the previous window may weigh
        if room >= 0:
            if previous <= room:
                return 0
            # previous * (p - e) // p <= room  <=>  previous * (p - e) < (room + 1) * p
            e = p - ((room + 1) * p - 1) // previous
            return max(0, e - elapsed)
        # Wait for the next window, where the current count becomes "previous".
        room = limit - cost
        e = 0 if current <= room else p - ((room + 1) * p - 1) // current
        return (p - elapsed) + e

    def hit(self, key: Key, cost: int = 1) -> RateLimitResult:
        """Count ``cost`` against ``key`` if the weighted count allows; say whether it did."""
        _check_cost(cost, self.limit)
        read, clock, p = self.table.read, self.clock, self.period_ns
        while True:
            word = read(key)[0]
            now = clock()
            previous, current, elapsed = self._state(word, now)
            weighted = sliding_window_weighted(previous, current, elapsed, p)
            if weighted + cost > self.limit:
                retry = self._retry_ns(previous, current, elapsed, cost)
                return RateLimitResult(False, self.limit, max(0, self.limit - weighted),
                                       retry / NS, self._reset_ns(previous, current, elapsed) / NS)
            new = sliding_window_pack(previous, current + cost, now, p)
            # Idle once this window and the next are over.
            if cost == 0 or self._cas_or_sweep(key, word, new, 2 * p - elapsed):
                return RateLimitResult(True, self.limit, self.limit - weighted - cost, 0.0,
                                       self._reset_ns(previous, current + cost, elapsed) / NS)

    def _reset_ns(self, previous: int, current: int, elapsed: int) -> int:
        if current:
            return 2 * self.period_ns - elapsed
        return self.period_ns - elapsed if previous else 0

    def peek(self, key: Key) -> RateLimitResult:
        """Would a hit of cost 1 be allowed now?  Spends nothing."""
        now = self.clock()
        previous, current, elapsed = self._state(self.table.read(key)[0], now)
        weighted = sliding_window_weighted(previous, current, elapsed, self.period_ns)
        allowed = weighted + 1 <= self.limit
        retry = 0 if allowed else self._retry_ns(previous, current, elapsed, 1)
        return RateLimitResult(allowed, self.limit, max(0, self.limit - weighted), retry / NS,
                               self._reset_ns(previous, current, elapsed) / NS)

    def _is_idle(self, key: Key, value: int, now: int) -> bool:
        previous, current, _ = self._state(value, now)
        return previous == 0 and current == 0

    def _merge(self, current: int, taken: int, now: int) -> int:
        p = self.period_ns
        return sliding_window_merge(current, taken, now, p)
