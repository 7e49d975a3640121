"""End to end: the gunicorn example with 4 workers, real HTTP, a SIGKILLed worker.

The rate limit is 1 request per hour per client with a burst of 40, so no
token refills during the test: each client gets exactly 40 responses 200 and
every further request is a 429, however the requests interleave across
workers.  /metrics must report every completed request, per route and status,
exactly -- also after one worker is SIGKILLed in the middle of the load and
gunicorn replaces it.
"""
from __future__ import annotations

import collections
import http.client
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytest.importorskip("gunicorn")
pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import shmdict  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "gunicorn"
ROUTES = ["/", "/items", "/users"]
CLIENTS = [f"client-{i}" for i in range(5)]
BURST = 40


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(port: int, path: str, client: str = "probe", timeout: float = 30) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"X-Client-Id": client})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def metrics(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    counts = {}
    for family in text_string_to_metric_families(text):
        if family.name == "example_requests":
            for sample in family.samples:
                if sample.name == "example_requests_total":
                    key = (sample.labels["route"], int(sample.labels["status"]))
                    counts[key] = int(sample.value)
    return counts


def load(port: int, worker: int, n: int, queue) -> None:
    """Send n requests (routes and clients in turn); report what came back."""
    tally = collections.Counter()
    errors = 0
    for i in range(n):
        route = ROUTES[(i + worker) % len(ROUTES)]
        client = CLIENTS[(i + 2 * worker) % len(CLIENTS)]
        try:
            tally[(route, request(port, route, client))] += 1
        except (OSError, http.client.HTTPException):
            errors += 1
    queue.put((dict(tally), errors))


def hang(port: int) -> None:
    try:
        request(port, "/hang", timeout=120)
    except (OSError, http.client.HTTPException):
        pass        # its worker is SIGKILLed: no response, as expected


def worker_pids(master: int) -> set:
    """The live children of the gunicorn master, from /proc."""
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[1]) == master and fields[0] != "Z":
                pids.add(int(entry))
    return pids


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def server():
    prefix = f"test.gunicorn.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = dict(os.environ, SHMDICT_EXAMPLE_PREFIX=prefix, SHMDICT_EXAMPLE_RATE="1",
               SHMDICT_EXAMPLE_PERIOD="3600", SHMDICT_EXAMPLE_BURST=str(BURST),
               SHMDICT_EXAMPLE_TEST_HOOKS="1", SHMDICT_EXAMPLE_WORKERS="4",
               SHMDICT_EXAMPLE_BIND=f"127.0.0.1:{port}")
    log = open(os.devnull, "w")
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"],
                            cwd=EXAMPLE, env=env, stdout=log, stderr=log)

    def up() -> bool:
        assert proc.poll() is None, "gunicorn exited"
        try:
            return request(port, "/metrics", timeout=2) == 200
        except OSError:
            return False

    try:
        wait_for(up, 30, "gunicorn to answer")
        wait_for(lambda: len(worker_pids(proc.pid)) == 4, 30, "4 workers")
        yield proc, port, prefix
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        for table in ("requests", "limits", "workers"):
            shmdict.unlink(f"{prefix}.{table}")


def run_load(ctx, port: int, clients: int, n: int):
    queue = ctx.Queue()
    procs = [ctx.Process(target=load, args=(port, w, n, queue)) for w in range(clients)]
    for proc in procs:
        proc.start()
    return procs, queue


def collect(procs, queue):
    results = [queue.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(30)
    total, errors = collections.Counter(), 0
    for tally, errs in results:
        total.update(tally)
        errors += errs
    return total, errors


def test_gunicorn_counts_limits_and_survives_a_sigkill(server):
    proc, port, prefix = server
    ctx = multiprocessing.get_context("fork")
    workers = shmdict.open(f"{prefix}.workers", shmdict.Counter(), capacity=1_000)
    first_workers = worker_pids(proc.pid)

    # Phase 1: 4 client processes, 2000 requests.
    procs, queue = run_load(ctx, port, 4, 500)
    sent, errors = collect(procs, queue)
    assert errors == 0
    assert metrics(port) == dict(sent)
    assert sum(n for (_, status), n in sent.items() if status == 200) == len(CLIENTS) * BURST
    assert sum(n for (_, status), n in sent.items() if status == 429) == 2000 - 200
    for route in ROUTES:
        assert sum(n for (r, _), n in sent.items() if r == route) in (666, 667, 668)

    # Phase 2: one worker is stuck in /hang; SIGKILL it while 4 clients load.
    hanger = ctx.Process(target=hang, args=(port,))
    hanger.start()
    wait_for(lambda: workers.read("hang")[1], 30, "a worker to take /hang")
    victim = workers.read("hang")[0]
    assert victim in first_workers
    before = sum(metrics(port).values())
    procs, queue = run_load(ctx, port, 4, 300)
    wait_for(lambda: sum(metrics(port).values()) >= before + 150, 60, "load to flow")
    os.kill(victim, signal.SIGKILL)
    more, errors = collect(procs, queue)
    hanger.join(60)
    assert errors == 0                      # the dead worker held no load request
    sent.update(more)

    wait_for(lambda: len(worker_pids(proc.pid)) == 4 and victim not in worker_pids(proc.pid),
             30, "gunicorn to replace the worker")
    replacement = worker_pids(proc.pid) - first_workers
    assert len(replacement) == 1
    newcomer = replacement.pop()
    wait_for(lambda: workers.read(("booted", newcomer))[1], 30,
             "the new worker to attach the tables")

    # Every completed request is counted, exactly; the limit held throughout.
    assert metrics(port) == dict(sent)
    assert sum(sent.values()) == 2000 + 1200
    assert sum(n for (_, status), n in sent.items() if status == 200) == len(CLIENTS) * BURST
    workers.close()
