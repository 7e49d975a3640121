"""``limits`` storages on a shmdict table: Flask-Limiter, slowapi and ``limits.aio``.

`limits <https://limits.readthedocs.io>`_ is the library under Flask-Limiter
and slowapi.  Importing this module registers two storage schemes with it
(``limits`` has no plugin entry points, so this one import is needed, e.g.
at the top of the app module)::

    import shmdict.limits_storage          # registers shmdict:// and async+shmdict://
    from limits import parse, storage, strategies

    store = storage.storage_from_string("shmdict://myapp.limits?capacity=100000")
    strategies.FixedWindowRateLimiter(store).hit(parse("100/minute"), "10.0.0.7")

    # Flask-Limiter: Limiter(key_func, app=app, storage_uri="shmdict://myapp.limits")
    # slowapi:       Limiter(key_func, storage_uri="shmdict://myapp.limits")
    # limits.aio:    storage_from_string("async+shmdict://myapp.limits")

``async+shmdict://`` is the same storage for ``limits.aio`` strategies: its
coroutines call the table directly (a few microseconds of shared-memory
work, no thread hop); with a Redis ``backend`` they run the call in a thread.

URI options (query string, or keyword arguments of the storage):

* ``capacity`` (keys, default 100000) and ``key_size`` (bytes, default 160);
* ``on_full`` -- what a new client does when the table is full of live keys:
  ``evict`` (the default: the key closest to expiry is dropped, as Redis'
  ``volatile-ttl``; that client's window restarts), ``allow`` (fail open: the
  hit is allowed and not counted), ``raise`` (``shmdict.TableFull``).  The
  first ``evict`` and ``allow`` of a storage emit a :class:`FullTableWarning`;
* ``backend``: e.g. ``shmdict://NAME?backend=redis://10.0.0.5:6379/0`` (a
  backend URL with its own query must be percent-encoded);
* ``clock=`` (keyword only) takes a clock as in :mod:`shmdict.ratelimit`, for tests.

**State.**  Each key is one record of three int64s in the Struct table
``NAME`` (``Struct(w="q", x="q", y="q")``), updated by the table's
compare-and-swap, so counts are exact up to 2**63 - 1 hits per window:

* *fixed window*: ``(window end ns, count, 0)``; the window opens at the
  key's first hit and lasts the limit's period, as with the memory and Redis
  storages, and counts every hit (as they do);
* *sliding window counter*: ``(window index, previous count, current
  count)``; "is there room? then count it" is one CAS, exact under any
  concurrency (the memory and Redis storages increment first and take the
  increment back on overshoot);
* *moving window*: **mapped to the sliding window counter**, with a
  :class:`MovingWindowMapped` warning on first use (``limit`` timestamps per
  key do not fit a fixed-size slot).  The limit is the same; the sliding
  counter assumes the previous window's hits were evenly spread, so at worst
  it allows what a moving window would refuse by the weighted share of the
  previous window's hits.

**Keys.**  A ``limits`` key longer than the table's ``key_size`` can hold (with
the storage's own prefix) is replaced by its 20-byte BLAKE2b digest, so long
client ids work and two keys never share a state by accident.

**Expiry and a full table.**  Time is ``CLOCK_MONOTONIC`` (shared by the
host's processes; windows survive wall-clock changes); :meth:`get_expiry`
converts to the wall-clock timestamp ``limits`` expects.  An expired key
reads as absent.  On shared memory each record carries a TTL (its window's
end, or the end of the window after it for a sliding one): an expired record
is absent for the table too, and its slot is reused by the next insert that
needs room, in any process.  Each process also keeps a heap of the keys it
created, by expiry (for eviction, and for a storage on another clock or on
Redis); when a new key finds the table full, expired keys are taken from it
(and deleted) first, then ``on_full`` applies to the live key closest to
expiry, so a new client costs O(log n) whatever the table holds.  Only when
the heap is empty (keys made by other processes, or a restart) is the whole
table scanned once, refilling the heap.
"""
from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import threading
import time
import urllib.parse
import warnings
from typing import Any, Callable, List, Optional, Tuple

from limits.aio.storage.base import MovingWindowSupport as AsyncMovingWindowSupport
from limits.aio.storage.base import SlidingWindowCounterSupport as AsyncSlidingSupport
from limits.aio.storage.base import Storage as AsyncStorage
from limits.storage.base import MovingWindowSupport, SlidingWindowCounterSupport, Storage

from .errors import ShmDictError, TableFull
from .keys import encode_key
from .layouts import Struct
from .ratelimit.limiters import Clock
from .ratelimit.rules import NS

DEFAULT_CAPACITY = 100_000
DEFAULT_KEY_SIZE = 160
INT64_MAX = (1 << 63) - 1
ON_FULL = ("evict", "allow", "raise")
LAYOUT = Struct(w="q", x="q", y="q")
_OPTIONS = ("capacity", "key_size", "on_full", "backend")

_FIXED, _SLIDING, _MOVING = "f", "s", "m"
_DIGEST = b"#"            # digests are bytes keys; limits' keys are str: never equal


class FullTableWarning(UserWarning):
    """The storage's table was full of live keys: a key was evicted, or a hit allowed."""


class MovingWindowMapped(UserWarning):
    """The moving window strategy runs as the sliding window counter on this storage."""


def _period_ns(expiry: float) -> int:
    if isinstance(expiry, bool) or not isinstance(expiry, (int, float)) or not expiry > 0:
        raise ValueError(f"expiry must be a positive number of seconds, got {expiry!r}")
    return max(1, round(expiry * NS))


def _expiry_of(key: Any, rec: Any) -> int:
    """When a record stops mattering (clock ns): fixed windows end, sliding ones age out."""
    if key[0] == _FIXED:
        return rec[0]
    return (rec[0] + 2) * key[1]


def _sliding(rec: Any, now: int, period: int) -> Tuple[int, int, int, int]:
    """``(index, previous, current, elapsed)`` of a sliding record seen at ``now``."""
    index = now // period
    elapsed = now - index * period
    if rec[0] == index:
        return index, rec[1], rec[2], elapsed
    if rec[0] == index - 1:
        return index, rec[2], 0, elapsed
    return index, 0, 0, elapsed


def _merge(key: Any, current: Any, taken: Any, now: int) -> Tuple[int, int, int]:
    """Two records of one key -> one that has counted both (never laxer)."""
    if key[0] == _FIXED:
        c = (current[0], current[1]) if current[0] > now else (0, 0)
        t = (taken[0], taken[1]) if taken[0] > now else (0, 0)
        return max(c[0], t[0]), min(INT64_MAX, c[1] + t[1]), 0
    index, cp, cc, _ = _sliding(current, now, key[1])
    _, tp, tc, _ = _sliding(taken, now, key[1])
    return index, min(INT64_MAX, cp + tp), min(INT64_MAX, cc + tc)


class _Engine:
    """The storage's logic on the table, shared by the sync and async storages."""

    def __init__(self, uri: Optional[str], schemes: Tuple[str, ...], capacity: Optional[int],
                 key_size: Optional[int], on_full: Optional[str], clock: Optional[Clock],
                 backend: Optional[str]) -> None:
        from .api import open as open_table
        name, query = _parse_uri(uri, schemes)
        capacity = _int_option(query, "capacity", capacity, DEFAULT_CAPACITY)
        key_size = _int_option(query, "key_size", key_size, DEFAULT_KEY_SIZE)
        on_full = on_full if on_full is not None else query.get("on_full", "evict")
        if on_full not in ON_FULL:
            raise ValueError(f"on_full must be one of {', '.join(ON_FULL)}, not {on_full!r}")
        backend = backend if backend is not None else query.get("backend") or None
        if clock is not None and not callable(clock):
            raise TypeError("clock must be a callable returning nanoseconds")
        # Room left for a limits key once the storage's prefix is in: longer
        # keys are stored as their digest.  A table too narrow even for a
        # digest is refused now, not at the first hit.
        prefix = len(encode_key((_SLIDING, INT64_MAX, ""), 1 << 16)) + 4
        self.raw_max = key_size - prefix
        if self.raw_max < len(_DIGEST) + 20:
            raise ValueError(f"key_size={key_size} is too small for the limits storage: "
                             f"use at least {prefix + 21}")
        self.clock: Clock = clock if clock is not None else time.monotonic_ns
        self.table = open_table(name, LAYOUT, capacity, key_size, backend=backend)
        self.name, self.on_full, self.capacity = name, on_full, capacity
        self.remote = backend is not None
        # Records carry a TTL (their window's end) on the table's own clock,
        # so expired keys leave by themselves and their slots are reused;
        # the expiry heap below is then only for eviction and other clocks.
        self._expiring = clock is None and getattr(self.table, "_supports_ttl", False)
        self._default = self.table.read(("\x00", "absent"))[0]
        self._mutex = threading.Lock()
        # (expiry ns, tie-breaker, table key) of the keys this process made
        self._heap: List[Tuple[int, int, Any]] = []
        self._seq = itertools.count()
        self._next_scan = 0
        self._warned = False
        self._moving_warned = False

    # ------------------------------------------------------------ keys
    def _id(self, key: str) -> Any:
        if len(key) * 4 <= self.raw_max or len(key.encode("utf-8", "surrogatepass")) \
                <= self.raw_max:
            return key
        return _DIGEST + hashlib.blake2b(key.encode("utf-8", "surrogatepass"),
                                         digest_size=20).digest()

    # ------------------------------------------------------ the CAS loop
    def _update(self, tkey: Any, step: Callable[[Any, int], Optional[Tuple[int, int, int]]]
                ) -> Tuple[Any, int, bool]:
        """``step(record, now)`` gives the new record (None: leave it); returns
        ``(record decided on, now, stored)``; ``stored`` is False only when a
        full table failed open."""
        read, cas = self.table.read, self.table.cas
        while True:
            rec, exists = read(tkey)
            now = self.clock()
            new = step(rec, now)
            if new is None or new == tuple(rec):
                return rec, now, True
            try:
                expires = _expiry_of(tkey, new) - now if self._expiring else 0
                if (cas(tkey, rec, new, True, ttl=expires / NS) if expires > 0
                        else cas(tkey, rec, new, True)):
                    if not exists:
                        self._created(tkey, new)
                    return new, now, True
            except TableFull:
                if not self._make_room(tkey):
                    return new, now, False

    def _created(self, tkey: Any, rec: Any) -> None:
        with self._mutex:
            if len(self._heap) > 2 * self.capacity:
                self._heap = []         # mostly stale entries: a scan refills it
            heapq.heappush(self._heap, (_expiry_of(tkey, rec), next(self._seq), tkey))

    # ------------------------------------------------------ a full table
    def _make_room(self, for_key: Any) -> bool:
        """The table is full: free a slot (True) or fail open (False), per ``on_full``."""
        with self._mutex:
            for attempt in range(2):
                freed = self._pop_expired()
                if freed:
                    return True
                if self._heap and self.on_full == "evict":
                    victim = heapq.heappop(self._heap)[2]
                    self.table.delete(victim)
                    self._warn(f"evicting the key closest to expiry ({victim!r}); its "
                               f"window restarts")
                    return True
                if attempt or self.clock() < self._next_scan:
                    break
                self._scan()
            if self.on_full == "raise":
                raise TableFull(f"limits storage {self.name!r} is full of live keys "
                                f"(capacity {self.capacity}); open it with a larger capacity "
                                f"or on_full=evict / allow")
            self._warn(f"allowing new clients without counting them (on_full={self.on_full})")
            return False

    def _pop_expired(self) -> int:
        """Delete expired keys from the top of the heap; re-file renewed ones."""
        heap, now, freed = self._heap, self.clock(), 0
        while heap:
            expiry, _, tkey = heap[0]
            rec, exists = self.table.read(tkey)
            if not exists:
                heapq.heappop(heap)
                continue
            real = _expiry_of(tkey, rec)
            if real > now:
                if real != expiry:
                    heapq.heapreplace(heap, (real, next(self._seq), tkey))  # renewed: refile
                    continue
                return freed
            heapq.heappop(heap)
            freed += self._delete_expired(tkey, rec)
        return freed

    def _delete_expired(self, tkey: Any, rec: Any) -> int:
        """Delete an expired key without losing a hit that slips in (put it back)."""
        if tuple(rec) != tuple(self._default) and not self.table.cas(tkey, rec, self._default):
            return 0                      # a hit renewed it
        taken, existed = self.table.load_and_delete(tkey)
        if not existed:
            return 0
        if tuple(taken) == tuple(self._default):
            return 1
        while True:                       # a hit came in between: keep what it counted
            current, exists = self.table.read(tkey)
            merged = _merge(tkey, current, taken, self.clock()) if exists else tuple(taken)
            if self.table.cas(tkey, current, merged, True):
                return 0

    def _scan(self) -> None:
        """Read the whole table once: delete expired keys, file the live ones."""
        now = self.clock()
        heap = []
        for tkey, rec in self.table.items():
            if not (isinstance(tkey, tuple) and tkey and tkey[0] in (_FIXED, _SLIDING, _MOVING)):
                continue
            expiry = _expiry_of(tkey, rec)
            if expiry <= now:
                self._delete_expired(tkey, rec)
            else:
                heap.append((expiry, next(self._seq), tkey))
        heapq.heapify(heap)
        self._heap = heap
        self._next_scan = now + NS          # at most one scan a second per process

    def _warn(self, what: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(FullTableWarning(
                f"limits storage {self.name!r} is full of live keys (capacity "
                f"{self.capacity}): {what}. Open it with a larger capacity"), stacklevel=2)

    def expire(self) -> int:
        """Delete every expired key now; return how many."""
        with self._mutex:
            before = len(self.table)
            self._scan()
            return max(0, before - len(self.table))

    # ---------------------------------------------------- fixed window
    def incr(self, key: str, expiry: float, amount: int) -> int:
        period = _period_ns(expiry)

        def step(rec: Any, now: int) -> Tuple[int, int, int]:
            end, count = rec[0], rec[1]
            if end <= now:
                end, count = now + period, 0
            return end, min(INT64_MAX, count + amount), 0
        rec, _, stored = self._update((_FIXED, self._id(key)), step)
        return rec[1] if stored else amount

    def get(self, key: str) -> int:
        rec = self.table.read((_FIXED, self._id(key)))[0]
        return rec[1] if rec[0] > self.clock() else 0

    def get_expiry(self, key: str) -> float:
        now = self.clock()
        end = self.table.read((_FIXED, self._id(key)))[0][0]
        return time.time() + (end - now) / NS if end > now else time.time()

    def clear(self, key: str) -> None:
        self.table.delete((_FIXED, self._id(key)))

    def reset(self) -> int:
        removed = 0
        for tkey in self.table.keys():
            if self.table.load_and_delete(tkey)[1]:
                removed += 1
        with self._mutex:
            self._heap = []
        return removed

    # ------------------------------------------- sliding window counter
    def acquire_sliding(self, kind: str, key: str, limit: int, expiry: float,
                        amount: int) -> bool:
        if amount > limit:
            return False
        period = _period_ns(expiry)
        fits = [False]

        def step(rec: Any, now: int) -> Optional[Tuple[int, int, int]]:
            index, previous, current, elapsed = _sliding(rec, now, period)
            fits[0] = previous * (period - elapsed) // period + current + amount <= limit
            if not fits[0]:
                return None
            return index, previous, min(INT64_MAX, current + amount)
        stored = self._update((kind, period, self._id(key)), step)[2]
        return fits[0] or not stored

    def sliding_window(self, kind: str, key: str, expiry: float
                       ) -> Tuple[int, float, int, float]:
        period = _period_ns(expiry)
        now = self.clock()
        _, previous, current, elapsed = _sliding(
            self.table.read((kind, period, self._id(key)))[0], now, period)
        left = (period - elapsed) / NS
        return previous, (left if previous else 0.0), current, left + period / NS

    def clear_sliding(self, kind: str, key: str, expiry: float) -> None:
        self.table.delete((kind, _period_ns(expiry), self._id(key)))

    # --------------------------------------- moving window (mapped)
    def _moving(self) -> None:
        if not self._moving_warned:
            self._moving_warned = True
            warnings.warn(MovingWindowMapped(
                f"limits storage {self.name!r}: the moving window strategy runs as the "
                f"sliding window counter (same limits; the previous window's hits are "
                f"weighted as if evenly spread)"), stacklevel=3)

    def acquire_entry(self, key: str, limit: int, expiry: float, amount: int) -> bool:
        self._moving()
        return self.acquire_sliding(_MOVING, key, limit, expiry, amount)

    def get_moving_window(self, key: str, limit: int, expiry: float) -> Tuple[float, int]:
        self._moving()
        period = _period_ns(expiry)
        now = self.clock()
        _, previous, current, elapsed = _sliding(
            self.table.read((_MOVING, period, self._id(key)))[0], now, period)
        count = previous * (period - elapsed) // period + current
        # limits reads start + expiry as the reset time: the current window's end
        return time.time() - elapsed / NS, count


class ShmDictStorage(Storage, MovingWindowSupport, SlidingWindowCounterSupport):
    """``limits`` storage on the shmdict table ``NAME`` of ``shmdict://NAME``."""

    STORAGE_SCHEME = ["shmdict"]

    def __init__(self, uri: Optional[str] = None, wrap_exceptions: bool = False, *,
                 capacity: Optional[int] = None, key_size: Optional[int] = None,
                 on_full: Optional[str] = None, clock: Optional[Clock] = None,
                 backend: Optional[str] = None, **options: Any) -> None:
        self._engine = _Engine(uri, ("shmdict",), capacity, key_size, on_full, clock, backend)
        self.table, self.name, self.clock = self._engine.table, self._engine.name, \
            self._engine.clock
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)

    @property
    def base_exceptions(self) -> Any:
        return ShmDictError

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        """Add ``amount`` to ``key``'s window (opening one of ``expiry`` s if none); the count."""
        return self._engine.incr(key, expiry, amount)

    def get(self, key: str) -> int:
        """The count of ``key``'s current window (0 if none)."""
        return self._engine.get(key)

    def get_expiry(self, key: str) -> float:
        """When ``key``'s window ends, as a ``time.time()`` timestamp (now if none)."""
        return self._engine.get_expiry(key)

    def clear(self, key: str) -> None:
        self._engine.clear(key)

    def check(self) -> bool:
        """Healthy while the table is attached."""
        return not self.table.closed

    def reset(self) -> Optional[int]:
        """Delete every key of the table; return how many there were."""
        return self._engine.reset()

    def expire(self) -> int:
        """Delete every expired key now; return how many."""
        return self._engine.expire()

    def acquire_sliding_window_entry(self, key: str, limit: int, expiry: int,
                                     amount: int = 1) -> bool:
        """Count ``amount`` if the weighted count leaves room for it (one CAS)."""
        return self._engine.acquire_sliding(_SLIDING, key, limit, expiry, amount)

    def get_sliding_window(self, key: str, expiry: int) -> Tuple[int, float, int, float]:
        """``(previous count, previous ttl, current count, current ttl)``, ttls in seconds."""
        return self._engine.sliding_window(_SLIDING, key, expiry)

    def clear_sliding_window(self, key: str, expiry: int) -> None:
        self._engine.clear_sliding(_SLIDING, key, expiry)

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        """The moving window, run as the sliding window counter (see the module doc)."""
        return self._engine.acquire_entry(key, limit, expiry, amount)

    def get_moving_window(self, key: str, limit: int, expiry: int) -> Tuple[float, int]:
        return self._engine.get_moving_window(key, limit, expiry)

    def close(self) -> None:
        self.table.close()

    def __repr__(self) -> str:
        return f"<ShmDictStorage shmdict://{self.name}>"


class AsyncShmDictStorage(AsyncStorage, AsyncMovingWindowSupport, AsyncSlidingSupport):
    """The same storage for ``limits.aio``: ``async+shmdict://NAME``.

    On shared memory the coroutines call the table directly (each call is a
    few microseconds and never waits for the loop); with a Redis
    ``backend`` each call runs in a thread, so the loop never waits for the
    network.
    """

    STORAGE_SCHEME = ["async+shmdict"]

    def __init__(self, uri: Optional[str] = None, wrap_exceptions: bool = False, *,
                 capacity: Optional[int] = None, key_size: Optional[int] = None,
                 on_full: Optional[str] = None, clock: Optional[Clock] = None,
                 backend: Optional[str] = None, **options: Any) -> None:
        self._engine = _Engine(uri, ("async+shmdict", "shmdict"), capacity, key_size, on_full,
                               clock, backend)
        self.table, self.name, self.clock = self._engine.table, self._engine.name, \
            self._engine.clock
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)

    @property
    def base_exceptions(self) -> Any:
        return ShmDictError

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._engine.remote:
            return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
        return fn(*args)

    async def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        return await self._call(self._engine.incr, key, expiry, amount)

    async def get(self, key: str) -> int:
        return await self._call(self._engine.get, key)

    async def get_expiry(self, key: str) -> float:
        return await self._call(self._engine.get_expiry, key)

    async def check(self) -> bool:
        return not self.table.closed

    async def reset(self) -> Optional[int]:
        return await self._call(self._engine.reset)

    async def clear(self, key: str) -> None:
        await self._call(self._engine.clear, key)

    async def expire(self) -> int:
        return await self._call(self._engine.expire)

    async def acquire_sliding_window_entry(self, key: str, limit: int, expiry: int,
                                           amount: int = 1) -> bool:
        return await self._call(self._engine.acquire_sliding, _SLIDING, key, limit, expiry,
                                amount)

    async def get_sliding_window(self, key: str, expiry: int
                                 ) -> Tuple[int, float, int, float]:
        return await self._call(self._engine.sliding_window, _SLIDING, key, expiry)

    async def clear_sliding_window(self, key: str, expiry: int) -> None:
        await self._call(self._engine.clear_sliding, _SLIDING, key, expiry)

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return await self._call(self._engine.acquire_entry, key, limit, expiry, amount)

    async def get_moving_window(self, key: str, limit: int, expiry: int
                                ) -> Tuple[float, int]:
        return await self._call(self._engine.get_moving_window, key, limit, expiry)

    def close(self) -> None:
        self.table.close()

    def __repr__(self) -> str:
        return f"<AsyncShmDictStorage async+shmdict://{self.name}>"


def _parse_uri(uri: Optional[str], schemes: Tuple[str, ...]) -> Tuple[str, dict]:
    if not uri:
        raise ValueError(f"the shmdict storage needs a URI: {schemes[0]}://TABLE_NAME")
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme not in schemes:
        raise ValueError(f"not a shmdict storage URI: {uri!r} (use {schemes[0]}://TABLE_NAME)")
    name = parsed.netloc or parsed.path.lstrip("/")
    if not name or (parsed.netloc and parsed.path not in ("", "/")):
        raise ValueError(f"bad shmdict storage URI {uri!r}: use {schemes[0]}://TABLE_NAME"
                         f"[?capacity=N&key_size=N&on_full=evict&backend=URL]")
    query = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
    unknown = set(query) - set(_OPTIONS)
    if unknown:
        raise ValueError(f"unknown shmdict storage options {sorted(unknown)} in {uri!r} "
                         f"(known: {', '.join(_OPTIONS)})")
    return name, query


def _int_option(query: dict, option: str, given: Optional[int], default: int) -> int:
    if given is not None:
        return given
    if option not in query:
        return default
    try:
        return int(query[option])
    except ValueError:
        raise ValueError(f"shmdict storage option {option}={query[option]!r} "
                         f"is not an integer") from None
