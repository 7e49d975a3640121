"""The Redis backend: the same tables, verbs and errors on a Redis server.

``shmdict.open(name, layout, capacity, key_size, backend="redis://host:6379/0")``
returns a table whose verbs mean what they mean on shared memory, for
processes on any number of hosts that reach the same server.

Storage (see :mod:`shmdict.backends._lua` for the scripts)::

    shmdict:{NAME}:meta    hash: layout spec, capacity, key_size, created
    shmdict:{NAME}:data    hash: canonical key encoding -> value
    shmdict:{NAME}:rlock   hash: key -> lease of a Struct record being updated
    shmdict:{NAME}:fence   integer: the last fencing token of an exclusive lock

One Redis hash per table keeps ``len`` O(1) (``HLEN``), lets the capacity be
enforced atomically in the same script that inserts, and lets iteration use
``HSCAN`` (never ``KEYS``).  Keys are encoded by :func:`shmdict.keys.encode_key`,
so key types, ``KeyTooLong`` and ``TableFull`` mean exactly what they mean on
shared memory.

Every verb is one round trip: a plain command where one suffices (``HGET``
for ``read``, ``HEXISTS`` for ``in``), otherwise one Lua script (``EVALSHA``).

Locks are leases: the holder's token and an expiry in the server's clock.  A
daemon thread per table renews the leases this process holds every
``lease / 3`` seconds, so a live holder keeps its lock for as long as it
wants, and a holder that dies (or loses the server for longer than
``lease``) loses it ``lease`` seconds later at most; the next acquirer is
told (``recovered``, :class:`shmdict.OwnerDiedWarning`).  Ownership is per
process, as on shared memory: the token is ``host/pid/random``.

Options, as keyword arguments of ``shmdict.open`` or in the URL's query
(``redis://h:6379/0?socket_timeout=1&lease=5``):

* ``socket_timeout`` (seconds, default 5): how long a call waits for the
  server before raising :class:`shmdict.BackendError`;
* ``socket_connect_timeout`` (seconds, default 2): the same for connecting;
* ``lease`` (seconds, default 10): a lock's lease, the longest a dead
  holder can keep a lock.

Calls are never retried behind your back: a write that raises
``BackendError`` may or may not have been applied (the server may have
died after applying it), and one that returned has been applied once.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
import os
import secrets
import socket
import threading
import time
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ...errors import (
    BackendError,
    KeyTooLong,
    LayoutMismatch,
    LockHeld,
    NotOwner,
    OwnerDiedWarning,
    ShmDictError,
    TableFull,
    TableNotFound,
)
from ...handles import LockHandle
from ...keys import Key, decode_key, encode_key
from ...layouts import Counter, Layout, Lock, Outcome, Struct, from_spec
from ...records import MutableRecord, make_record, record_class
from ...report import Report
from ...table import BaseTable
from ...validate import seconds as validate_seconds
from ...verbs import CounterVerbs, LockVerbs, StructVerbs
from . import _lua

try:
    import redis as _redis
    import redis.cluster as _redis_cluster
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as _RedisConnectionError
    from redis.exceptions import (AskError, MovedError, NoScriptError, RedisClusterException,
                                  RedisError, ResponseError, TryAgainError)
    from redis.exceptions import TimeoutError as _RedisTimeoutError
    from redis.retry import Retry
except ImportError:  # pragma: no cover - exercised only without the extra
    _redis = None

#: Options a table accepts, with their defaults (seconds, but wait_replicas).
DEFAULT_OPTIONS: Dict[str, float] = {
    "socket_timeout": 5.0,
    "socket_connect_timeout": 2.0,
    "lease": 10.0,
    "wait_replicas": 0,
    "wait_timeout": 1.0,
}
#: URL schemes of a Redis Cluster: any one node's address stands for all.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
#: Attempts of a write-and-WAIT whose slot is moving (MOVED/ASK/TRYAGAIN:
#: nothing was applied, so trying again is safe).
REDIRECT_ATTEMPTS = 16
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
SCAN_COUNT = 1000
#: Longest wait for a release announcement before a waiter looks again
#: anyway (seconds): how late it may notice a dead holder's expired lease.
LEASE_RECHECK = 0.1


# ------------------------------------------------------------- connection
class Connection:
    """A parsed backend URL, its options and the (per-process) Redis client."""

    def __init__(self, url: str, options: Dict[str, Any]) -> None:
        if _redis is None:
            raise ImportError("the Redis backend needs the redis package: "
                              "pip install 'shmdict[redis]'")
        self.url = url
        self.explicit = dict(options)
        parts = urlsplit(url)
        rest, ours = [], {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key in DEFAULT_OPTIONS:
                ours[key] = value
            else:
                rest.append((key, value))
        for key, value in options.items():
            if key not in DEFAULT_OPTIONS:
                raise TypeError(f"unknown Redis backend option {key!r}; "
                                f"known: {', '.join(sorted(DEFAULT_OPTIONS))}")
            ours[key] = value
        self.options: Dict[str, float] = dict(DEFAULT_OPTIONS)
        for key, value in ours.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"Redis backend option {key}={value!r} is not a number"
                                 f"{'' if key == 'wait_replicas' else ' of seconds'}") from None
            if key == "wait_replicas":
                if number < 0 or number != int(number):
                    raise ValueError(f"Redis backend option wait_replicas={value!r} must "
                                     f"be a whole number >= 0")
                number = int(number)
            elif not number > 0:
                raise ValueError(f"Redis backend option {key}={value!r} must be > 0")
            self.options[key] = number
        scheme = parts.scheme.lower()
        self.cluster = scheme in CLUSTER_SCHEMES
        if self.cluster:
            parts = parts._replace(scheme=CLUSTER_SCHEMES[scheme])
            if parts.path not in ("", "/", "/0"):
                raise ValueError(f"a Redis Cluster has only database 0, not {url!r}")
        self.client_url = urlunsplit(parts._replace(query=urlencode(rest)))
        host = parts.hostname or parts.path or "localhost"
        self.where = (f"{scheme}://{host}:{parts.port or 6379}"
                      f"{'' if self.cluster else parts.path}"
                      if scheme != "unix" else f"unix://{parts.path}")
        self.lease_ms = max(1, int(self.options["lease"] * 1000))
        self.wait_replicas = int(self.options["wait_replicas"])
        self.wait_timeout_ms = max(1, int(self.options["wait_timeout"] * 1000))
        if self.wait_replicas and self.options["wait_timeout"] >= self.options["socket_timeout"]:
            raise ValueError(f"wait_timeout={self.options['wait_timeout']:g}s must be below "
                             f"socket_timeout={self.options['socket_timeout']:g}s: the WAIT "
                             f"after each write holds the reply that long")

    @property
    def client(self) -> Any:
        """This process's client for the URL (shared by the tables that use it)."""
        key = (os.getpid(), self.client_url, self.options["socket_timeout"],
               self.options["socket_connect_timeout"])
        client = _CLIENTS.get(key)
        if client is None:
            # Never retried behind the caller's back (Retry(..., 0)): a write
            # that failed in flight may have been applied.  A cluster client
            # still follows MOVED, ASK and TRYAGAIN (nothing was applied) and
            # refreshes its slot map after a failed node, so the next call goes
            # to the replica promoted in its place.
            factory = _redis_cluster.RedisCluster if self.cluster else _redis.Redis
            try:
                client = factory.from_url(
                    self.client_url,
                    socket_timeout=self.options["socket_timeout"],
                    socket_connect_timeout=self.options["socket_connect_timeout"],
                    retry=Retry(NoBackoff(), 0))
            except RedisClusterException as exc:
                raise BackendError(f"Redis Cluster at {self.where} cannot be reached: "
                                   f"{exc}") from None
            except ValueError as exc:
                raise ValueError(f"bad Redis URL {self.where!r}: {exc}") from None
            _CLIENTS[key] = client
        return client


_CLIENTS: Dict[Tuple[Any, ...], Any] = {}
_TOKEN: Tuple[int, str] = (0, "")


def process_token() -> str:
    """This process's lock-owner token: ``host/pid/random`` (new after a fork)."""
    global _TOKEN
    pid = os.getpid()
    if _TOKEN[0] != pid:
        _TOKEN = (pid, f"{socket.gethostname()}/{pid}/{secrets.token_hex(6)}")
    return _TOKEN[1]


def token_pid(token: Any) -> Optional[int]:
    """The pid inside a lock-owner token (None if it is not one)."""
    if isinstance(token, bytes):
        token = token.decode("utf-8", "replace")
    try:
        return int(str(token).rsplit("/", 2)[1])
    except (IndexError, ValueError):
        return None


def _int64(value: Any, what: str = "value") -> int:
    if not isinstance(value, int):
        raise TypeError(f"a counter {what} is an int, not {type(value).__name__}")
    value = int(value)
    if not INT64_MIN <= value <= INT64_MAX:
        raise OverflowError(f"{what} {value} is outside the int64 range")
    return value


# ------------------------------------------------------------------ table
class RedisTable(BaseTable):
    """What every layout's table on Redis shares.  Use :func:`shmdict.open`."""

    layout: Layout

    def __init__(self, conn: Connection, name: str, layout: Layout, capacity: int,
                 key_size: int) -> None:
        self.name = name
        self.layout = layout
        self.capacity = capacity
        #: Redis has no slot array to grow: its limit is the capacity it was
        #: opened with (shmdict.open passes max_capacity as that).
        self.max_capacity = capacity
        self.key_size = key_size
        self.backend = conn.url
        self._conn = conn
        self._r = conn.client
        prefix = f"shmdict:{{{name}}}:"
        self._keys = (prefix + "meta", prefix + "data", prefix + "rlock", prefix + "fence",
                      prefix + "exp")
        self._data = self._keys[1]
        self._closed = False
        self._keeper = _LeaseKeeper(self)

    # ----------------------------------------------------------- plumbing
    def _eval(self, script: _lua.Script, *args: Any, closed_ok: bool = False) -> Any:
        """Run one script on this table's keys (one round trip)."""
        if self._closed and not closed_ok:
            self._check_open()
        try:
            if self._conn.wait_replicas:
                return self._eval_and_wait(script, args)
            try:
                return self._r.execute_command("EVALSHA", script.sha, len(self._keys),
                                               *self._keys, *args)
            except NoScriptError:   # a new or restarted server: send the source
                return self._r.execute_command("EVAL", script.source, len(self._keys),
                                               *self._keys, *args)
        except (RedisError, RedisClusterException) as exc:
            raise self._error(exc) from None

    def _eval_and_wait(self, script: _lua.Script, args: Tuple[Any, ...]) -> Any:
        """The script, then ``WAIT wait_replicas wait_timeout`` on the same
        connection (WAIT counts that connection's writes), as one pipeline
        to the table's master: a reply means the write reached the replicas."""
        conn = self._conn
        for attempt in range(REDIRECT_ATTEMPTS):
            node_client = self._r
            if conn.cluster:
                node_client = self._r.get_redis_connection(
                    self._r.get_node_from_key(self._keys[0]))
            pipe = node_client.pipeline(transaction=False)
            pipe.execute_command("EVALSHA", script.sha, len(self._keys), *self._keys,
                                 *args)
            pipe.execute_command("WAIT", conn.wait_replicas, conn.wait_timeout_ms)
            try:
                reply, acked = pipe.execute(raise_on_error=False)
            except (_RedisConnectionError, _RedisTimeoutError):
                if conn.cluster:     # as the cluster client does: find the new master
                    self._r.nodes_manager.initialize()
                raise                # not retried: the write may have been applied
            if isinstance(reply, NoScriptError):
                node_client.execute_command("SCRIPT", "LOAD", script.source)
                continue
            if isinstance(reply, (MovedError, AskError, TryAgainError)):
                time.sleep(0.01 * attempt)       # the slot moves: nothing was applied
                if conn.cluster:
                    self._r.nodes_manager.initialize()
                continue
            if isinstance(reply, Exception):
                raise reply
            if isinstance(acked, Exception) or int(acked) < conn.wait_replicas:
                raise BackendError(
                    f"Redis at {conn.where} applied a write to table {self.name!r} but only "
                    f"{acked} of the wait_replicas={conn.wait_replicas} replicas confirmed "
                    f"it within wait_timeout={conn.wait_timeout_ms / 1000:g}s: a failover "
                    f"now could lose it")
            return reply
        raise BackendError(f"Redis at {conn.where}: table {self.name!r}'s slot kept moving")

    def _cmd(self, *args: Any) -> Any:
        """Run one plain Redis command."""
        if self._closed:
            self._check_open()
        try:
            return self._r.execute_command(*args)
        except (RedisError, RedisClusterException) as exc:
            raise self._error(exc) from None

    def _error(self, exc: Exception) -> Exception:
        """The shmdict exception for a Redis one."""
        if isinstance(exc, ResponseError):
            message = str(exc)
            # The reply starts with the script's SHMDICT_ word, except on
            # Redis 6, which puts the script's position in front of it.
            at = message.find("SHMDICT_")
            if at > 0:
                message = message[at:]
            word = message.split(" ", 1)[0]
            if word == "SHMDICT_FULL":
                _, live, capacity = message.split()[:3]
                return TableFull(f"table {self.name!r} is full: {live} of {capacity} keys "
                                 f"in use; delete keys or open a table with a larger capacity")
            if word == "SHMDICT_NOTABLE":
                return TableNotFound(
                    f"table {self.name!r} no longer exists on {self._conn.where}: it was "
                    f"unlinked, or the server lost its data (restarted without "
                    f"persistence); open it again to create it")
            if word == "SHMDICT_HELD":
                return LockHeld(f"key in table {self.name!r} is locked by "
                                f"{message.split(' ', 1)[-1]}; release it before deleting it")
            if word == "SHMDICT_OVERFLOW":
                return OverflowError("the add would leave the int64 range; nothing changed")
            return BackendError(f"Redis at {self._conn.where} failed on table "
                                f"{self.name!r}: {message}")
        if isinstance(exc, (_RedisConnectionError, _RedisTimeoutError)):
            what = "did not answer in time" if isinstance(exc, _RedisTimeoutError) \
                else "cannot be reached"
            opts = self._conn.options
            return BackendError(
                f"Redis at {self._conn.where} {what} (table {self.name!r}): {exc}. Is the "
                f"server up? Timeouts: socket_timeout={opts['socket_timeout']:g}s, "
                f"socket_connect_timeout={opts['socket_connect_timeout']:g}s (set them in "
                f"the URL query or as shmdict.open(..., socket_timeout=...))")
        return BackendError(f"Redis at {self._conn.where} (table {self.name!r}): {exc}")

    def _field(self, key: Any) -> bytes:
        return encode_key(key, self.key_size)

    def _open(self, create: bool) -> None:
        spec = self.layout.spec_json()
        reply = self._eval(_lua.OPEN, spec, self.capacity, self.key_size, int(create))
        if reply[0] == 0:
            raise TableNotFound(f"no table {self.name!r} on {self._conn.where}; "
                                f"open it with create=True to create it")
        if reply[0] == 2:
            theirs = (reply[1].decode(), int(reply[2]), int(reply[3]))
            if theirs != (spec, self.capacity, self.key_size):
                try:
                    layout: Any = from_spec(json.loads(theirs[0]))
                except (ValueError, KeyError, TypeError):
                    layout = theirs[0]
                raise LayoutMismatch(
                    f"table {self.name!r} on {self._conn.where} is {layout!r} with "
                    f"capacity={theirs[1]}, key_size={theirs[2]}; you asked for "
                    f"{self.layout!r} with capacity={self.capacity}, "
                    f"key_size={self.key_size}")

    def _wait(self, attempt: Callable[[], Tuple[bool, Any]], blocking: bool = True,
              timeout: float = -1) -> Tuple[bool, Any]:
        """Call ``attempt`` until it succeeds: ``(True, value)``; ``(False, None)``
        when not ``blocking`` or past ``timeout``.

        Between attempts it waits for a release to be announced on the table's
        wake channel (every release and record commit publishes there), so a
        waiter looks again as soon as the lock is free, not after a polling
        interval.  It also looks again every ``LEASE_RECHECK`` seconds at
        most, for the one change nobody announces: a dead holder's lease
        running out.  Ctrl-C interrupts the wait.
        """
        done, value = attempt()
        if done or not blocking:
            return done, (value if done else None)
        deadline = None if timeout < 0 else time.monotonic() + timeout
        wake = self._r.pubsub(ignore_subscribe_messages=True)
        try:
            wake.subscribe(self._keys[0] + ":wake")
            while True:
                done, value = attempt()      # after subscribing: no release is missed
                if done:
                    return True, value
                wait = LEASE_RECHECK
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False, None
                    wait = min(wait, left)
                wake.get_message(timeout=wait)
        except (RedisError, RedisClusterException) as exc:
            raise self._error(exc) from None
        finally:
            wake.close()

    # ------------------------------------------------------ layout hooks
    def _default_value(self) -> Any:
        raise NotImplementedError

    def _snapshot(self, raw: Optional[bytes]) -> Any:
        raise NotImplementedError

    def _take(self, field: bytes) -> Tuple[bool, Any]:
        """Delete ``field``: ``(existed, snapshot taken atomically with it)``."""
        raw = self._eval(_lua.TAKE, field)
        return (raw is not None), self._snapshot(raw)

    # ------------------------------------------- BaseTable's primitives
    def _ensure(self, field: bytes) -> bool:
        """Get-or-create ``field`` with the default; True if this call created it."""
        return self._eval(_lua.ENSURE, field, self._default_value()) == 1

    def _create(self, key: Key) -> bool:
        return self._ensure(self._field(key))

    def _remove(self, key: Key) -> Tuple[bool, Any]:
        return self._take(self._field(key))

    # -------------------------------------------------------------- Range
    def _scan(self) -> Iterator[Tuple[bytes, bytes]]:
        """Every (field, raw value) pair, by ``HSCAN`` (each key once)."""
        seen: Dict[bytes, bytes] = {}
        cursor = 0
        while True:
            cursor, batch = self._cmd("HSCAN", self._data, cursor, "COUNT", SCAN_COUNT)
            if isinstance(batch, dict):
                seen.update(batch)
            else:   # a flat [field, value, ...] list
                seen.update(zip(batch[::2], batch[1::2]))
            if int(cursor) == 0:
                return iter(seen.items())

    def keys(self) -> List[Key]:
        """A snapshot list of the keys (never creates)."""
        return [decode_key(field) for field, _ in self._scan()]

    def items(self) -> List[Tuple[Key, Any]]:
        """A snapshot list of ``(key, value snapshot)`` (never creates)."""
        return [(decode_key(field), self._snapshot(raw)) for field, raw in self._scan()]

    def __len__(self) -> int:
        return int(self._cmd("HLEN", self._data))

    def __contains__(self, key: object) -> bool:
        try:
            field = self._field(key)
        except (TypeError, KeyTooLong):     # not a key, or too long to be one here
            return False
        return bool(self._cmd("HEXISTS", self._data, field))

    # --------------------------------------------------------- inspection
    def check(self) -> Report:
        """A consistency report (truthy when consistent): metadata, every key's
        encoding and size, every value's format, the live count against the
        capacity, and leftover record leases (expired ones are removed)."""
        report = Report(self.name, slots=self.capacity)
        meta = self._cmd("HMGET", self._keys[0], "layout", "capacity", "key_size")
        if meta[0] is None:
            report.problems.append(f"no metadata: the table is gone from {self._conn.where}")
        elif (meta[0].decode(), int(meta[1]), int(meta[2])) != \
                (self.layout.spec_json(), self.capacity, self.key_size):
            report.problems.append("metadata differs from this table's layout or geometry")
        live = 0
        for field, raw in self._scan():
            live += 1
            if len(field) > self.key_size:
                report.problems.append(f"key {field!r}: {len(field)} bytes > key_size")
            try:
                decode_key(field)
            except ValueError as exc:
                report.problems.append(f"key {field!r}: undecodable ({exc})")
                continue
            problem = self._check_value(raw)
            if problem:
                report.problems.append(f"key {decode_key(field)!r}: {problem}")
        report.live = live
        report.counted = {"published": live}
        if live > self.capacity:
            report.problems.append(f"{live} keys exceed the capacity {self.capacity}")
        leases = self._cmd("HGETALL", self._keys[2]) or {}
        if not isinstance(leases, dict):
            leases = dict(zip(leases[::2], leases[1::2]))
        for field in leases:
            if not self._cmd("HEXISTS", self._data, field):
                holders = self._eval(_lua.LEASE_INFO, field, "r")
                if holders[0]:
                    report.problems.append(f"record lease on missing key {field!r}")
                else:
                    self._cmd("HDEL", self._keys[2], field)
                    report.repaired.append(f"removed an expired lease on missing key {field!r}")
        return report

    def _check_value(self, raw: bytes) -> Optional[str]:
        return None

    def stats(self) -> Dict[str, Any]:
        """Numbers for ``shmdict stat``."""
        live = len(self)
        return {"name": self.name, "layout": repr(self.layout), "capacity": self.capacity,
                "key_size": self.key_size, "live": live, "backend": self._conn.where,
                "load_factor": live / self.capacity}

    # ---------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Detach (the table stays on the server).  Stops renewing leases."""
        if not self._closed:
            self._keeper.stop()
            self._closed = True

    def unlink(self) -> None:
        """Destroy the table on the server (all its keys).  Also closes it."""
        self._eval(_lua.UNLINK, closed_ok=True)
        self.close()

    def __reduce__(self) -> Any:
        return (_reattach, (self._conn.url, self.name, self.layout, self.capacity,
                            self.key_size, self._conn.explicit))

    def _describe_state(self) -> str:
        return self._conn.where


# ----------------------------------------------------------------- leases
class _LeaseKeeper:
    """Renews the leases this process holds on one table, from a daemon thread.

    The thread runs only while some lease is held, and renews them all in
    one script call every ``lease / 3`` seconds.  A renewal that fails (the
    server is away) is retried at the next tick; if the server stays away
    longer than the lease, the lock is lost and its release raises
    ``NotOwner``.

    It also keeps, per lease, when the server last confirmed it (this host's
    monotonic clock when the confirming call was *sent*, so earlier than the
    server's own reading): the lease cannot have expired on the server
    before ``confirmed + lease``.  Past that, the holder is told it may have
    lost the lock without asking the server, which a partition or a stopped
    server would keep from answering (:meth:`valid_until`).
    """

    def __init__(self, table: RedisTable) -> None:
        self._table = table
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._mutex = threading.Lock()
        self._held: Dict[Tuple[str, bytes, bool], int] = {}
        #: entry -> monotonic time the server last confirmed the lease (the
        #: time its confirming call was sent); -inf once a renewal was refused.
        self._confirmed: Dict[Tuple[str, bytes, bool], float] = {}
        self._thread: Optional[threading.Thread] = None
        self._stopped = threading.Event()

    def hold(self, where: str, field: bytes, shared: bool, sent_at: float) -> None:
        """Count a lease taken by a call sent at ``sent_at`` (monotonic)."""
        if self._pid != os.getpid():    # forked: the parent's leases are not ours
            self._reset()
        with self._mutex:
            entry = (where, field, shared)
            self._held[entry] = self._held.get(entry, 0) + 1
            self._confirmed[entry] = sent_at
            if self._thread is None and not self._stopped.is_set():
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"shmdict-lease-{self._table.name}")
                self._thread.start()

    def drop(self, where: str, field: bytes, shared: bool) -> None:
        if self._pid != os.getpid():
            self._reset()
        with self._mutex:
            entry = (where, field, shared)
            count = self._held.get(entry, 0) - 1
            if count > 0:
                self._held[entry] = count
            else:
                self._held.pop(entry, None)
                self._confirmed.pop(entry, None)

    def valid_until(self, where: str, field: bytes, shared: bool) -> Optional[float]:
        """The monotonic time up to which this process's lease on ``field``
        is sure to be live on the server (None: it holds none)."""
        if self._pid != os.getpid():
            return None
        with self._mutex:
            confirmed = self._confirmed.get((where, field, shared))
        return None if confirmed is None else confirmed + self._table._conn.options["lease"]

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        table = self._table
        interval = table._conn.options["lease"] / 3
        token = process_token()
        while not self._stopped.wait(interval):
            with self._mutex:
                if not self._held:
                    self._thread = None
                    return
                entries = list(self._held)
                args: List[Any] = [table._conn.lease_ms]
                for where, field, shared in entries:
                    args += [where, field, token, int(shared)]
            sent_at = time.monotonic()
            try:
                renewed = table._eval(_lua.LEASE_RENEW, *args)
            except (ShmDictError, ValueError):
                continue    # the server is away: try again at the next tick
            with self._mutex:
                for entry, ok in zip(entries, renewed):
                    # (An entry taken again since the call was sent has a
                    # later confirmation of its own: leave it.)
                    if self._confirmed.get(entry, sent_at) <= sent_at:
                        # A refused renewal: the lease had expired (it may be
                        # another's now); never confirmed again.
                        self._confirmed[entry] = sent_at if ok == 1 else float("-inf")
        with self._mutex:
            self._thread = None


# ---------------------------------------------------------------- Counter
def _ttl_ms(ttl: Optional[float]) -> str:
    """A ttl= argument as the scripts' ttl_ms ('' for None: keep the expiry)."""
    if ttl is None:
        return ""
    seconds = validate_seconds(ttl, "ttl")
    if seconds > 1e9:
        raise ValueError(f"ttl must be at most 1e9 seconds, got {ttl!r}")
    return str(max(1, math.ceil(seconds * 1000)))


class RedisCounterTable(CounterVerbs, RedisTable):
    """Atomic int64 counters on Redis (``HINCRBY`` inside a capacity check).

    Keys may expire (``ttl=``, :meth:`expire`): deadlines on the server's
    clock in a side hash that every script consults (format: see _lua.py),
    so it works on Redis 6 as on Valkey 9, with ms resolution.
    """

    _supports_ttl = True

    def _default_value(self) -> Any:
        return 0

    def _snapshot(self, raw: Optional[bytes]) -> int:
        return 0 if raw is None else int(raw)

    def _check_value(self, raw: bytes) -> Optional[str]:
        try:
            value = int(raw)
        except ValueError:
            return f"value {raw!r} is not an integer"
        if not INT64_MIN <= value <= INT64_MAX or str(value).encode() != raw:
            return f"value {raw!r} is not a canonical int64"
        return None

    def add(self, key: Key, n: int = 1, *, ttl: Optional[float] = None) -> int:
        """Atomically add ``n`` (get-or-create at 0); return the new value.
        ``ttl``: seconds until the key expires (None: keep its expiry)."""
        n = _int64(n, "increment")       # the value first, as on shared memory
        return int(self._eval(_lua.COUNTER_ADD, self._field(key), n, _ttl_ms(ttl)))

    def add_float(self, key: Key, x: float = 1.0) -> float:
        """Not on Redis: shared memory's float counters keep float64 bits in an
        int64 word, which a Redis Counter (a decimal int64) cannot hold."""
        raise NotImplementedError(
            "add_float is a shared-memory Counter verb (shmdict.prometheus); "
            "Redis Counter values are decimal int64s")

    def set_float(self, key: Key, x: float) -> None:
        """Not on Redis (see :meth:`add_float`)."""
        raise NotImplementedError(
            "set_float is a shared-memory Counter verb (shmdict.prometheus); "
            "Redis Counter values are decimal int64s")

    def read(self, key: Key) -> Tuple[int, bool]:
        """``(value, exists)``; a missing key reads ``(0, False)`` and is not created."""
        raw = self._eval(_lua.READ, self._field(key))
        return (0, False) if raw is None else (int(raw), True)

    # Expiry-aware Range, count and membership (an expired key is absent).
    def _scan(self) -> Iterator[Tuple[bytes, bytes]]:
        pairs = list(super()._scan())
        deadlines = self._cmd("HGETALL", self._keys[4]) or {}
        if not deadlines:
            return iter(pairs)
        now_ms = self._server_clock() // 1_000_000
        return iter([(f, raw) for f, raw in pairs
                     if f not in deadlines or int(deadlines[f]) > now_ms])

    def __len__(self) -> int:
        return int(self._eval(_lua.LENGTH))

    def __contains__(self, key: object) -> bool:
        try:
            field = self._field(key)
        except (TypeError, KeyTooLong):
            return False
        return self._eval(_lua.READ, field) is not None

    def _expire(self, key: Key, seconds: Optional[float]) -> bool:
        return self._eval(_lua.SET_TTL, self._field(key), _ttl_ms(seconds)) == 1

    def ttl(self, key: Key) -> Optional[float]:
        """Seconds until ``key`` expires; None when it has no expiry or is absent."""
        reply = self._eval(_lua.TTL, self._field(key))
        return int(reply[1]) / 1000 if int(reply[0]) == 2 else None

    def reclaim_expired(self) -> int:
        """Drop every expired key now; how many."""
        return int(self._eval(_lua.PURGE))

    def add_many(self, batch: Any, *, ttl: Optional[float] = None) -> List[int]:
        """``add`` of each ``key -> n`` of a mapping (or ``(key, n)`` pairs), in
        order, in one script: one round trip.  Returns the new values."""
        items = list(batch.items()) if isinstance(batch, Mapping) else list(batch)
        args: List[Any] = [_ttl_ms(ttl)]
        for pair in items:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise TypeError("add_many() takes a mapping of key -> n, or (key, n) pairs")
            args += [self._field(pair[0]), _int64(pair[1], "increment")]
        if len(args) == 1:
            return []
        return [int(v) for v in self._eval(_lua.COUNTER_ADD_MANY, *args)]

    def read_many(self, keys: Any) -> List[Tuple[int, bool]]:
        """``read`` of each key, in one ``HMGET`` (never creates)."""
        fields = [self._field(key) for key in keys]
        if not fields:
            return []
        raws = self._cmd("HMGET", self._data, *fields)
        deadlines = self._cmd("HMGET", self._keys[4], *fields)
        if any(d is not None for d in deadlines):      # some may have expired
            now_ms = self._server_clock() // 1_000_000
            raws = [None if d is not None and int(d) <= now_ms else raw
                    for raw, d in zip(raws, deadlines)]
        return [(0, False) if raw is None else (int(raw), True) for raw in raws]

    def set(self, key: Key, value: int, *, ttl: Optional[float] = None) -> None:
        """Store ``value`` (creating the key)."""
        value = _int64(value)
        self._eval(_lua.COUNTER_EXCHANGE, self._field(key), value, _ttl_ms(ttl))

    def exchange(self, key: Key, value: int, *, ttl: Optional[float] = None) -> int:
        """Store ``value`` and return the previous one (creating the key)."""
        value = _int64(value)
        return int(self._eval(_lua.COUNTER_EXCHANGE, self._field(key), value, _ttl_ms(ttl)))

    def cas(self, key: Key, old: int, new: int, set_on_not_exists: bool = False, *,
            ttl: Optional[float] = None) -> bool:
        """Compare-and-swap ``old`` -> ``new``; a missing key is set to ``new``
        only with ``set_on_not_exists`` (otherwise False, nothing created).
        ``ttl`` is set only when the swap happens."""
        old, new = _int64(old), _int64(new)
        return self._eval(_lua.COUNTER_CAS, self._field(key), old, new,
                          int(bool(set_on_not_exists)), _ttl_ms(ttl)) == 1

    # CounterHandle's hooks besides the verbs.
    def _value(self, key: Key) -> int:
        """The value of ``key``, creating it at 0."""
        return int(self._eval(_lua.COUNTER_VALUE, self._field(key)))

    def _handle_cas(self, key: Key, old: int, new: int) -> bool:
        """CAS on a handle's key, which is re-created at 0 if it was deleted."""
        self._ensure(self._field(key))
        return self.cas(key, old, new)

    def _server_clock(self) -> int:
        """The server's clock (``TIME``) in nanoseconds since the epoch: the
        clock the rate limiters' time rules use on this backend."""
        seconds, micros = self._cmd("TIME")
        return int(seconds) * 1_000_000_000 + int(micros) * 1_000

    def _gcra(self, key: Key, emission_interval_ns: int, tolerance_ns: int,
              cost: int) -> Tuple[bool, int, int, int]:
        """One GCRA decision for ``RateLimiter``, atomically on the server's clock.

        The key's value is its theoretical arrival time (ns since the epoch).
        Returns ``(allowed, remaining, retry_after_ns, reset_after_ns)``.
        """
        allowed, remaining, retry_after, reset_after = self._eval(
            _lua.GCRA, self._field(key), int(emission_interval_ns), int(tolerance_ns),
            int(cost))
        return bool(allowed), int(remaining), int(retry_after), int(reset_after)


class RedisLockTable(LockVerbs, RedisTable):
    """Row locks on Redis: leases owned by a process token."""

    def _default_value(self) -> Any:
        return b""

    def _snapshot(self, raw: Optional[bytes]) -> bool:
        # Whether the key is held; a lease the server has let expire is
        # still reported held until someone takes it over.
        return bool(raw) and bool(json.loads(raw).get("w"))

    def _check_value(self, raw: bytes) -> Optional[str]:
        if raw == b"":
            return None
        try:
            state = json.loads(raw)
        except ValueError:
            return f"lock state {raw!r} is not JSON"
        if not isinstance(state, dict):
            return f"lock state {raw!r} is not an object"
        return None

    def _take(self, field: bytes) -> Tuple[bool, Any]:
        return self._eval(_lua.LOCK_DELETE, field) == 1, False

    def _holders(self, key: Key) -> Tuple[Optional[str], List[str]]:
        """(exclusive holder's token or None, shared holders' tokens), live leases."""
        field = self._field(key)
        if not self._cmd("HEXISTS", self._data, field):
            return None, []
        info = [t.decode() for t in self._eval(_lua.LEASE_INFO, field, "d")]
        return (info[0] or None), info[1:]

    def owner(self, key: Key) -> Optional[int]:
        """The pid holding ``key``'s lock, or None (never creates the key).

        A pid alone names a process only on its own host: ask
        :meth:`held_by_me` whether this process holds it.
        """
        token = self._holders(key)[0]
        return None if token is None else token_pid(token)

    def held_by_me(self, key: Key, shared: bool = False) -> bool:
        """Whether this process holds a live lease on ``key`` (the exclusive
        side, or with ``shared`` the shared one), judged by its whole token.

        A lease the server has not confirmed for ``lease`` seconds (renewals
        failed: the server was stopped, or this host cut off from it) is
        answered False without asking the server, which may not answer; one
        confirmed less than ``lease`` ago is True even when the server
        cannot be reached, since it cannot have expired there yet."""
        valid_until = self._keeper.valid_until("d", self._field(key), shared)
        if valid_until is not None and time.monotonic() >= valid_until:
            return False
        try:
            writer, readers = self._holders(key)
        except BackendError:
            if valid_until is None:
                raise
            return True
        return process_token() in readers if shared else writer == process_token()

    # LockHandle's hooks.
    _inherited_from = "a holder whose lease expired (it died or lost the server)"
    _not_held_because = " (never taken, or its lease expired and was taken over)"

    def _acquire_lock(self, key: Key, blocking: bool, timeout: float,
                      shared: bool) -> Tuple[int, int]:
        """Take ``key``'s lease (creating the key): ``(outcome, fence)``, the
        outcome OK, RECOVERED or TIMEOUT, the fence the table's next token
        for an exclusive acquire (0 otherwise)."""
        field = self._field(key)
        args = (field, process_token(), self._conn.lease_ms, int(shared))
        sent_at = 0.0

        def attempt() -> Tuple[bool, Any]:
            nonlocal sent_at
            sent_at = time.monotonic()
            reply = self._eval(_lua.LOCK_ACQUIRE, *args)
            return reply[0] == 1, reply

        got, reply = self._wait(attempt, blocking, timeout)
        if not got:
            return Outcome.TIMEOUT, 0
        self._keeper.hold("d", field, shared, sent_at)
        return (Outcome.RECOVERED if reply[1] == 1 else Outcome.OK), int(reply[2])

    def _release_lock(self, key: Key, shared: bool) -> int:
        """Release ``key``'s lease: OK, or NOT_OWNER (never taken, or taken over)."""
        field = self._field(key)
        done = self._eval(_lua.LOCK_RELEASE, field, process_token(), int(shared), "d")
        self._keeper.drop("d", field, shared)
        return Outcome.OK if done == 1 else Outcome.NOT_OWNER

    def readers(self, key: Key) -> List[int]:
        """Pids holding ``key`` in shared mode (``rw=True`` tables)."""
        if not self.layout.rw:
            return []
        return [token_pid(t) for t in self._holders(key)[1]]

    def _handle(self, key: Key) -> "RedisLockHandle":
        return RedisLockHandle(self, key)


class RedisLockHandle(LockHandle):
    """A key's lock on Redis: LockHandle, plus the holder's full token."""

    __slots__ = ()

    @property
    def holder(self) -> Optional[str]:
        """The exclusive holder's token ``host/pid/random``, or None."""
        return self._table._holders(self._key)[0]


# ----------------------------------------------------------------- Struct
class RedisStructTable(StructVerbs, RedisTable):
    """Records on Redis: one value per key, so every read is consistent.

    ``update()`` holds a lease on the record (in the ``rlock`` hash) for the
    block; ``set``, ``cas`` and ``delete`` wait while another process holds
    it, so an update never overwrites a write made during its block.
    """

    layout: Struct

    def _default_value(self) -> bytes:
        return self.layout.default_extra()[8:]

    def _snapshot(self, raw: Optional[bytes]) -> Any:
        return self.layout.unpack(raw if raw is not None else self._default_value())

    def _check_value(self, raw: bytes) -> Optional[str]:
        if len(raw) != self.layout.padded:
            return f"record of {len(raw)} bytes, expected {self.layout.padded}"
        return None

    def _writing(self, script: _lua.Script, *args: Any) -> Any:
        """Run a write script, waiting while another process updates the record."""
        def attempt() -> Tuple[bool, Any]:
            reply = self._eval(script, *args)
            busy = isinstance(reply, list) and reply and reply[0] == b"busy"
            return not busy, reply
        return self._wait(attempt)[1]

    def read(self, key: Key) -> Tuple[Any, bool]:
        """``(record, exists)``: a consistent snapshot; never creates the key."""
        raw = self._cmd("HGET", self._data, self._field(key))
        return self._snapshot(raw), raw is not None

    def set(self, key: Key, record: Any) -> None:
        """Store a whole record (a tuple, named tuple or mapping of fields)."""
        data = self.layout.pack(record)
        self._writing(_lua.STRUCT_SET, self._field(key), process_token(), data)

    def cas(self, key: Key, old: Any, new: Any, set_on_not_exists: bool = False) -> bool:
        """Replace the record with ``new`` if it equals ``old``; a missing key is
        created holding ``new`` only with ``set_on_not_exists``."""
        old_data, new_data = self.layout.pack(old), self.layout.pack(new)
        return self._writing(_lua.STRUCT_CAS, self._field(key), process_token(), old_data,
                             new_data, int(bool(set_on_not_exists))) == 1

    @contextmanager
    def update(self, key: Key) -> Iterator[MutableRecord]:
        """``with d.update(key) as rec: rec.tokens -= 1``: atomic read-modify-write.

        Holds the record's lease for the block; writes back on a clean exit,
        not at all on an exception.  ``rec.recovered`` is True when the
        previous updater's lease expired mid-update (it died).
        """
        field = self._field(key)
        token = process_token()
        args = (field, token, self._conn.lease_ms, self._default_value())

        sent_at = 0.0

        def attempt() -> Tuple[bool, Any]:
            nonlocal sent_at
            sent_at = time.monotonic()
            reply = self._eval(_lua.STRUCT_BEGIN, *args)
            return reply[0] == 1, reply

        _, reply = self._wait(attempt)
        recovered = reply[1] == 1
        if recovered:
            warnings.warn(OwnerDiedWarning(
                f"an updater of table {self.name!r} died inside an update; the record "
                f"keeps whatever it had written"), stacklevel=3)
        self._keeper.hold("r", field, False, sent_at)
        try:
            try:
                rec = make_record(record_class(self.layout), self.layout.unpack_values(reply[2]),
                                  recovered)
                yield rec
                data = self.layout.pack(rec._asdict())
            except BaseException:
                self._eval(_lua.LOCK_RELEASE, field, token, 0, "r")
                raise
            if self._eval(_lua.STRUCT_COMMIT, field, token, data) != 1:
                raise NotOwner(f"the update of {key!r} in table {self.name!r} lost its lease "
                               f"(held longer than the server could confirm); nothing "
                               f"was written")
        finally:
            self._keeper.drop("r", field, False)

    def _take(self, field: bytes) -> Tuple[bool, Any]:
        raw = self._writing(_lua.STRUCT_TAKE, field, process_token())
        return raw is not None, self._snapshot(raw)


_TABLE_CLASSES = {"Counter": RedisCounterTable, "Lock": RedisLockTable,
                  "Struct": RedisStructTable}


# ----------------------------------------------------------- entry points
def open_table(url: str, name: str, layout: Layout, capacity: int, key_size: int, *,
               create: bool = True, **options: Any) -> RedisTable:
    """Create table ``name`` on the Redis at ``url`` or attach to it."""
    if not isinstance(layout, (Counter, Lock, Struct)):
        raise TypeError(f"the Redis backend has no table for layout {layout!r}")
    conn = Connection(url, options)
    table = _TABLE_CLASSES[layout.kind](conn, name, layout, capacity, key_size)
    table._open(create)
    return table


def unlink_table(url: str, name: str, **options: Any) -> bool:
    """Destroy table ``name`` on the Redis at ``url``; True if it existed."""
    conn = Connection(url, options)
    table = RedisCounterTable(conn, name, Counter(), 1, 1)
    try:
        return table._eval(_lua.UNLINK) == 1
    finally:
        table.close()


def _reattach(url: str, name: str, layout: Layout, capacity: int, key_size: int,
              options: Dict[str, Any]) -> RedisTable:
    """Unpickling a table: attach to it (never silently create a new one)."""
    return open_table(url, name, layout, capacity, key_size, create=False, **options)
