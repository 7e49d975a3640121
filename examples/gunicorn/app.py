"""A small WSGI app whose gunicorn workers share counters and a rate limit.

Every request is counted per (route, status) in one shmdict Counter table
and rate-limited per client with one shared :class:`shmdict.RateLimiter`, so
the numbers and the limit hold for the whole server, not per worker.
``/metrics`` serves the counters to Prometheus, exact whichever worker
answers, without ``PROMETHEUS_MULTIPROC_DIR``.

Run it (from this directory)::

    gunicorn -c gunicorn.conf.py
    curl -i localhost:8000/items -H 'X-Client-Id: alice'
    curl localhost:8000/metrics

Settings come from the environment (gunicorn.conf.py and the workers read
the same ones):

=============================  ==========================================
SHMDICT_EXAMPLE_PREFIX         table name prefix (default ``example``)
SHMDICT_EXAMPLE_RATE           requests per period per client (10)
SHMDICT_EXAMPLE_PERIOD         the period, seconds (1)
SHMDICT_EXAMPLE_BURST          burst per client (20)
SHMDICT_EXAMPLE_COUNTING       ``0`` turns counting and limiting off (benchmarks)
SHMDICT_EXAMPLE_TEST_HOOKS     ``1`` adds ``/hang`` (for the end-to-end test)
=============================  ==========================================
"""
from __future__ import annotations

import math
import os
import time
from typing import Callable, Iterable, List, Tuple

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

import shmdict
from shmdict.prometheus import register_table

PREFIX = os.environ.get("SHMDICT_EXAMPLE_PREFIX", "example")
RATE = float(os.environ.get("SHMDICT_EXAMPLE_RATE", "10"))
PERIOD = float(os.environ.get("SHMDICT_EXAMPLE_PERIOD", "1"))
BURST = int(os.environ.get("SHMDICT_EXAMPLE_BURST", "20"))
COUNTING = os.environ.get("SHMDICT_EXAMPLE_COUNTING", "1") != "0"
TEST_HOOKS = os.environ.get("SHMDICT_EXAMPLE_TEST_HOOKS") == "1"

REQUESTS = f"{PREFIX}.requests"      # (route, status) -> requests
LIMITS = f"{PREFIX}.limits"          # client -> GCRA state
WORKERS = f"{PREFIX}.workers"        # ("booted", pid) / ("served", pid) / "hang"
TABLES = (REQUESTS, LIMITS, WORKERS)

ROUTES = {"/": b"hello\n", "/items": b"[1, 2, 3]\n", "/users": b"[\"alice\"]\n"}


def open_tables() -> Tuple[object, shmdict.RateLimiter, object]:
    """Create or attach the three tables (the same geometry in every process)."""
    requests = shmdict.open(REQUESTS, shmdict.Counter(), capacity=1_000)
    limiter = shmdict.RateLimiter(LIMITS, rate=RATE, period=PERIOD, burst=BURST,
                                  capacity=100_000)
    workers = shmdict.open(WORKERS, shmdict.Counter(), capacity=1_000)
    return requests, limiter, workers


def create_tables() -> None:
    """Run once by the gunicorn master before it forks: start from zero."""
    for name in TABLES:
        shmdict.unlink(name)
    for table in open_tables():
        table.close()


def destroy_tables() -> None:
    """Run by the gunicorn master on exit: leave nothing in /dev/shm."""
    for name in TABLES:
        shmdict.unlink(name)


# Per-worker state, set up after the fork: each worker attaches the tables
# itself (the master only creates them), and records that it booted.
requests_table = limiter = workers_table = registry = None


def init_worker() -> None:
    """Attach the tables in this worker (gunicorn's post_worker_init, or the first request)."""
    global requests_table, limiter, workers_table, registry
    requests_table, limiter, workers_table = open_tables()
    workers_table.add(("booted", os.getpid()))
    registry = CollectorRegistry()
    register_table(requests_table, "example_requests", "HTTP requests by route and status",
                   labelnames=("route", "status"), registry=registry)
    register_table(workers_table.sub("served"), "example_worker_requests",
                   "requests served per worker pid", labelnames=("pid",), registry=registry)


StartResponse = Callable[[str, List[Tuple[str, str]]], object]


def application(environ: dict, start_response: StartResponse) -> Iterable[bytes]:
    if registry is None:
        init_worker()
    path = environ.get("PATH_INFO", "/")
    if path == "/metrics":
        body = generate_latest(registry)
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST),
                                  ("Content-Length", str(len(body)))])
        return [body]
    if TEST_HOOKS and path == "/hang":
        workers_table.set("hang", os.getpid())   # tell the test which worker to kill
        while True:
            time.sleep(1)
    route = path if path in ROUTES else "other"
    client = environ.get("HTTP_X_CLIENT_ID") or environ.get("REMOTE_ADDR", "?")
    headers = [("Content-Type", "text/plain")]
    if COUNTING:
        result = limiter.hit(client[:48])
        if not result.allowed:
            status, body = "429 Too Many Requests", b"slow down\n"
            headers.append(("Retry-After", str(math.ceil(result.retry_after))))
        elif route == "other":
            status, body = "404 Not Found", b"not found\n"
        else:
            status, body = "200 OK", ROUTES[route]
        requests_table.add((route, int(status[:3])))
        workers_table.add(("served", os.getpid()))
    else:
        status, body = ("200 OK", ROUTES[route]) if route in ROUTES else \
            ("404 Not Found", b"not found\n")
    headers.append(("Content-Length", str(len(body))))
    start_response(status, headers)
    return [body]
