"""Rate limiting: shmdict's limiters against a plain dict, ``limits`` storages, gunicorn.

    .venv/bin/python benchmarks/bench_ratelimit.py            # everything
    .venv/bin/python benchmarks/bench_ratelimit.py --no-http  # skip gunicorn

1. ns per call, medians of interleaved rounds in one run:
   a plain-dict increment (the floor), ``RateLimiter.allow`` and ``.hit``,
   ``FixedWindowLimiter.hit``, and the ``limits`` library's fixed-window
   strategy on its memory storage, on ``shmdict://`` and on Redis (when
   ``SHMDICT_REDIS_URL`` is set or a ``redis-server`` can be started).
2. gunicorn requests/s, 4 workers, the example app with and without shmdict
   counting and limiting (``SHMDICT_EXAMPLE_COUNTING=0``), from client
   processes on the same host.
"""
from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import uuid
from pathlib import Path
from typing import Callable, Dict, List, Optional

import shmdict
from shmdict.ratelimit import FixedWindowLimiter, RateLimiter

ROOT = Path(__file__).resolve().parent.parent
KEY = "client-42"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ns_per_op(fn: Callable[[], object], number: int) -> float:
    return timeit.timeit(fn, number=number) / number * 1e9


def start_redis() -> Optional[tuple]:
    """(url, process or None): SHMDICT_REDIS_URL, or a redis-server of our own."""
    url = os.environ.get("SHMDICT_REDIS_URL")
    if url:
        return url, None
    binary = shutil.which("redis-server")
    if not binary:
        return None
    port = free_port()
    workdir = tempfile.mkdtemp()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return f"redis://127.0.0.1:{port}/0", proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    return None


def micro(rounds: int, number: int) -> None:
    prefix = f"bench.rl.{os.getpid()}.{uuid.uuid4().hex[:6]}"
    cases: Dict[str, Callable[[], object]] = {}
    cleanup: List[Callable[[], object]] = []

    plain: Dict[str, int] = {}

    def dict_increment(key: str = KEY) -> None:
        plain[key] = plain.get(key, 0) + 1

    cases["plain dict increment"] = dict_increment
    # Limits high enough that every hit is allowed: the common, fast case.
    gcra = RateLimiter(f"{prefix}.gcra", rate=1e9, burst=10**9)
    cleanup.append(gcra.unlink)
    cases["RateLimiter.allow"] = lambda: gcra.allow(KEY)
    cases["RateLimiter.hit"] = lambda: gcra.hit(KEY)
    fixed = FixedWindowLimiter(f"{prefix}.fixed", limit=10**6, period=3600)
    cleanup.append(fixed.unlink)
    cases["FixedWindowLimiter.hit"] = lambda: fixed.hit(KEY)

    redis_proc = None
    try:
        from limits import parse, strategies
        from limits.storage import MemoryStorage, storage_from_string

        import shmdict.limits_storage  # noqa: F401  (registers shmdict://)
        item = parse("1000000000/hour")
        memory = strategies.FixedWindowRateLimiter(MemoryStorage())
        cases["limits fixed window, memory://"] = lambda: memory.hit(item, KEY)
        shm_store = storage_from_string(f"shmdict://{prefix}.limits")
        cleanup.append(shm_store.table.unlink)
        shm = strategies.FixedWindowRateLimiter(shm_store)
        cases["limits fixed window, shmdict://"] = lambda: shm.hit(item, KEY)
        shm_sliding = strategies.SlidingWindowCounterRateLimiter(shm_store)
        sliding_item = parse("1000000/hour")     # sliding counts go up to 2**20 - 1
        cases["limits sliding window, shmdict://"] = lambda: shm_sliding.hit(sliding_item, KEY)
        redis = start_redis()
        if redis is None:
            print("(no Redis: set SHMDICT_REDIS_URL or install redis-server for that row)")
        else:
            url, redis_proc = redis
            redis_store = storage_from_string(url)
            redis_limiter = strategies.FixedWindowRateLimiter(redis_store)
            cases["limits fixed window, redis://"] = lambda: redis_limiter.hit(item, KEY)
    except ImportError:
        print("(limits not installed: pip install -e '.[limits]' for those rows)")

    try:
        samples: Dict[str, List[float]] = {case: [] for case in cases}
        for case, fn in cases.items():       # warm up: create the keys, fill caches
            ns_per_op(fn, 1000)
        for _ in range(rounds):
            for case, fn in cases.items():
                n = number if "redis" not in case else max(200, number // 50)
                samples[case].append(ns_per_op(fn, n))
        floor = statistics.median(samples["plain dict increment"])
        print(f"\n{'ns per call (median of %d rounds)' % rounds:<40} {'ns':>10} {'x dict':>9}")
        for case, values in samples.items():
            median = statistics.median(values)
            print(f"{case:<40} {median:>10.0f} {median / floor:>8.1f}x")
    finally:
        for fn in cleanup:
            fn()
        if redis_proc is not None:
            redis_proc.send_signal(signal.SIGTERM)
            redis_proc.wait()


# ---------------------------------------------------------------- gunicorn
def _client(port: int, seconds: float, queue) -> None:
    done, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/items", headers={"X-Client-Id": f"c{done % 50}"})
        conn.getresponse().read()
        conn.close()
        done += 1
    queue.put(done)


def gunicorn_rps(counting: bool, clients: int, seconds: float) -> float:
    port = free_port()
    prefix = f"bench.gunicorn.{os.getpid()}.{uuid.uuid4().hex[:6]}"
    env = dict(os.environ, SHMDICT_EXAMPLE_PREFIX=prefix, SHMDICT_EXAMPLE_RATE="1e9",
               SHMDICT_EXAMPLE_BURST=str(10**9), SHMDICT_EXAMPLE_BIND=f"127.0.0.1:{port}",
               SHMDICT_EXAMPLE_WORKERS="4", SHMDICT_EXAMPLE_COUNTING="1" if counting else "0")
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"],
                            cwd=ROOT / "examples" / "gunicorn", env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                conn.request("GET", "/metrics")
                conn.getresponse().read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        procs = [ctx.Process(target=_client, args=(port, seconds, queue))
                 for _ in range(clients)]
        for p in procs:
            p.start()
        total = sum(queue.get(timeout=seconds + 60) for _ in procs)
        for p in procs:
            p.join()
        return total / seconds
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        for table in ("requests", "limits", "workers"):
            shmdict.unlink(f"{prefix}.{table}")


def http_bench(rounds: int, clients: int, seconds: float) -> None:
    results: Dict[bool, List[float]] = {False: [], True: []}
    for _ in range(rounds):
        for counting in (False, True):
            results[counting].append(gunicorn_rps(counting, clients, seconds))
    plain, counted = statistics.median(results[False]), statistics.median(results[True])
    print(f"\ngunicorn, 4 sync workers, {clients} client processes, {seconds:g} s x {rounds} "
          f"rounds (median requests/s)")
    print(f"{'without shmdict':<40} {plain:>10.0f}")
    print(f"{'with shmdict counting + RateLimiter':<40} {counted:>10.0f}   "
          f"ratio {counted / plain:.3f}, "
          f"{(1 / counted - 1 / plain) * 1e6:+.1f} us per request")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=50_000)
    parser.add_argument("--no-http", action="store_true", help="skip the gunicorn part")
    parser.add_argument("--http-rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    micro(args.rounds, args.number)
    if not args.no_http:
        http_bench(args.http_rounds, args.clients, args.seconds)


if __name__ == "__main__":
    main()
