"""A WSGI app instrumented with prometheus_client's classes, for gunicorn.

The app is written for prometheus_client's multiprocess mode; moving it to
shmdict changes its imports (below) and its ``gunicorn.conf.py`` only.
``METRICS=prometheus_client`` runs the original (with
``gunicorn.multiproc.conf.py``), for comparison.

Routes: ``/`` and ``/items`` (counted, timed, sized), ``/metrics`` (the
multiprocess recipe's handler), and with ``EXAMPLE_TEST_HOOKS=1`` ``/hang``,
which never answers (the end-to-end test SIGKILLs its worker inside it).
"""
from __future__ import annotations

import os
import time
from typing import Callable, Iterable, List, Tuple

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

if os.environ.get("METRICS") == "prometheus_client":        # the multiprocess-mode original
    from prometheus_client import Counter, Gauge, Histogram, multiprocess
else:                                                        # the only change to the app
    from shmdict.prometheus import Counter, Gauge, Histogram, multiprocess

TEST_HOOKS = os.environ.get("EXAMPLE_TEST_HOOKS") == "1"
ROUTES = {"/": b"hello\n", "/items": b"[1, 2, 3, 4, 5, 6, 7]\n"}

REQUESTS = Counter("app_requests", "HTTP requests", ["route", "status"])
WORK = Counter("app_work_units", "Work done, in fractional units", ["route"])
LATENCY = Histogram("app_request_latency_seconds", "Request latency", ["route"])
SIZE = Histogram("app_response_size_bytes", "Response size", ["route"],
                 buckets=(4, 8, 16, 64))
IN_FLIGHT = Gauge("app_in_flight_requests", "Requests being served",
                  multiprocess_mode="livesum")
HANGING = Gauge("app_hanging", "1 in a worker stuck in /hang", multiprocess_mode="liveall")

StartResponse = Callable[[str, List[Tuple[str, str]]], object]


def metrics() -> bytes:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)


def application(environ: dict, start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    if path == "/metrics":
        body = metrics()
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST),
                                  ("Content-Length", str(len(body)))])
        return [body]
    with IN_FLIGHT.track_inprogress():
        if TEST_HOOKS and path == "/hang":
            HANGING.set(1)
            while True:
                time.sleep(1)
        started = time.perf_counter()
        route = path if path in ROUTES else "other"
        status, body = ("200 OK", ROUTES[route]) if route in ROUTES else \
            ("404 Not Found", b"not found\n")
        REQUESTS.labels(route, status[:3]).inc()
        WORK.labels(route).inc(0.125)
        SIZE.labels(route).observe(len(body))
        LATENCY.labels(route).observe(time.perf_counter() - started)
    start_response(status, [("Content-Type", "text/plain"),
                            ("Content-Length", str(len(body)))])
    return [body]
