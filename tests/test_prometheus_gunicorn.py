"""End to end: examples/prometheus_gunicorn under real gunicorn.

4 workers under load from 4 client processes; one worker SIGKILLed inside a
request (its in-flight gauge raised) and replaced by gunicorn: the counter
(float increments) and histograms match exactly what the clients received,
and the dead worker's gauge values are gone from the next scrape.  Then
``max_requests = 1`` churns 200 worker restarts: the table's keys and the
scrape's samples stay the same.  And the same app on prometheus_client's
multiprocess mode gives the same samples.
"""
from __future__ import annotations

import collections
import http.client
import multiprocessing
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytest.importorskip("gunicorn")
pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import shmdict  # noqa: E402

from test_gunicorn import free_port, request, wait_for, worker_pids  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "prometheus_gunicorn"
ROUTES = {"/": 6, "/items": 22, "/nope": 10}          # route -> body length
CHURN_REQUESTS = 200


def scrape(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def load(port: int, worker: int, n: int, queue) -> None:
    tally = collections.Counter()
    errors = 0
    paths = list(ROUTES)
    for i in range(n):
        path = paths[(i + worker) % len(paths)]
        try:
            tally[(path, request(port, path))] += 1
        except (OSError, http.client.HTTPException):
            errors += 1
    queue.put((dict(tally), errors))


def hang(port: int) -> None:
    try:
        request(port, "/hang", timeout=120)
    except (OSError, http.client.HTTPException):
        pass


class Server:
    def __init__(self, workers: int, metrics: str = "shmdict", max_requests: int = 0):
        self.port = free_port()
        self.table = f"test.promgun.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        env = dict(os.environ, EXAMPLE_BIND=f"127.0.0.1:{self.port}",
                   EXAMPLE_WORKERS=str(workers), EXAMPLE_TEST_HOOKS="1",
                   EXAMPLE_MAX_REQUESTS=str(max_requests), EXAMPLE_METRICS_TABLE=self.table,
                   METRICS=metrics)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        conf = "gunicorn.conf.py" if metrics == "shmdict" else "gunicorn.multiproc.conf.py"
        self.log = open(os.devnull, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", conf],
                                     cwd=EXAMPLE, env=env, stdout=self.log, stderr=self.log)
        self.workers = workers

    def __enter__(self) -> "Server":
        def up() -> bool:
            assert self.proc.poll() is None, "gunicorn exited"
            try:
                return request(self.port, "/metrics", timeout=2) == 200
            except OSError:
                return False
        try:
            wait_for(up, 30, "gunicorn to answer")
            wait_for(lambda: len(worker_pids(self.proc.pid)) == self.workers, 30, "workers")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shmdict.unlink(self.table)


def run_load(ctx, port, clients, n):
    queue = ctx.Queue()
    procs = [ctx.Process(target=load, args=(port, w, n, queue)) for w in range(clients)]
    for p in procs:
        p.start()
    return procs, queue


def collect(procs, queue):
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    total, errors = collections.Counter(), 0
    for tally, errs in results:
        total.update(tally)
        errors += errs
    return total, errors


def expected(sent: collections.Counter) -> dict:
    """The samples the app's counters and histograms must show for ``sent``."""
    out = {}
    for (path, status), n in sent.items():
        route = path if path in ("/", "/items") else "other"
        key = ("app_requests_total", frozenset({("route", route), ("status", str(status))}))
        out[key] = out.get(key, 0) + n
        for name, per in (("app_work_units_total", 0.125),
                          ("app_response_size_bytes_sum", ROUTES[path]),
                          ("app_response_size_bytes_count", 1),
                          ("app_request_latency_seconds_count", 1)):
            k = (name, frozenset({("route", route)}))
            out[k] = out.get(k, 0) + per * n
    return out


def check(got: dict, sent: collections.Counter) -> None:
    for key, want in expected(sent).items():
        assert got.get(key) == want, key
    for route in ("/", "items"):
        labels = frozenset({("route", route)})
        if ("app_response_size_bytes_count", labels) in got:
            assert got[("app_response_size_bytes_bucket", labels | {("le", "+Inf")})] \
                == got[("app_response_size_bytes_count", labels)]


def test_four_workers_a_sigkill_inside_a_request_and_exact_totals():
    ctx = multiprocessing.get_context("fork")
    with Server(4) as server:
        port = server.port
        procs, queue = run_load(ctx, port, 4, 150)
        sent, errors = collect(procs, queue)
        assert errors == 0
        got = scrape(port)
        check(got, sent)
        assert got[("app_in_flight_requests", frozenset())] == 0

        # A worker stuck inside /hang: its in-flight +1 shows, then it is SIGKILLed.
        hanger = ctx.Process(target=hang, args=(port,))
        hanger.start()
        hung = lambda: [dict(k[1])["pid"] for k, v in scrape(port).items()  # noqa: E731
                        if k[0] == "app_hanging" and v == 1]
        wait_for(lambda: hung(), 30, "a worker inside /hang")
        victim = int(hung()[0])
        procs, queue = run_load(ctx, port, 4, 100)
        assert scrape(port)[("app_in_flight_requests", frozenset())] >= 1
        os.kill(victim, signal.SIGKILL)
        more, errors = collect(procs, queue)
        hanger.join(60)
        assert errors == 0
        sent.update(more)
        wait_for(lambda: len(worker_pids(server.proc.pid)) == 4
                 and victim not in worker_pids(server.proc.pid), 30, "a replacement")

        got = scrape(port)
        check(got, sent)
        assert sum(sent.values()) == 4 * 150 + 4 * 100
        assert got[("app_in_flight_requests", frozenset())] == 0     # the dead +1 is gone
        assert not [k for k, v in got.items() if k[0] == "app_hanging" and v]
        assert str(victim) not in {dict(k[1]).get("pid") for k in got}


def test_max_requests_churn_leaves_the_table_and_the_scrape_flat():
    """``max_requests = 1``: every request restarts its worker (200 restarts)."""
    ctx = multiprocessing.get_context("fork")
    with Server(2, max_requests=1) as server:
        port = server.port
        procs, queue = run_load(ctx, port, 2, 10)
        sent, errors = collect(procs, queue)
        warm = scrape(port)
        table = shmdict.attach(server.table)
        keys_warm = len(table)
        procs, queue = run_load(ctx, port, 2, CHURN_REQUESTS // 2)
        more, errors2 = collect(procs, queue)
        sent.update(more)
        assert errors == errors2 == 0
        got = scrape(port)
        check(got, sent)
        # The same series but the per-pid ones of the live workers (2, or 3 while
        # one is being replaced): nothing of the 200 dead workers is left.
        assert len(table) <= keys_warm + 4
        pidless = lambda s: {k for k in s if k[0] != "app_hanging"}  # noqa: E731
        assert pidless(got) == pidless(warm)
        assert len(got) - len(pidless(got)) <= 3
        table.close()


def test_the_same_samples_as_multiprocess_mode():
    """The same requests on both give the same counters, histograms, gauges."""
    ctx = multiprocessing.get_context("fork")
    results = {}
    for metrics in ("prometheus_client", "shmdict"):
        with Server(2, metrics=metrics) as server:
            procs, queue = run_load(ctx, server.port, 2, 60)
            sent, errors = collect(procs, queue)
            assert errors == 0
            got = scrape(server.port)
            results[metrics] = {k: v for k, v in got.items()
                                if not k[0].startswith("app_request_latency_seconds")
                                or k[0].endswith("_count")}
    assert _pidless(results["prometheus_client"]) == _pidless(results["shmdict"])


def _pidless(samples: dict) -> dict:
    out = collections.Counter()
    for (name, labels), v in samples.items():
        out[(name, frozenset(kv for kv in labels if kv[0] != "pid"))] += v
    return dict(out)
