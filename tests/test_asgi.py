"""Real servers, real processes: FastAPI + slowapi and limits.aio under
``uvicorn --workers 4``; Flask-Limiter under gunicorn.

* limits are exact across the workers (slowapi on ``shmdict://``, a
  ``limits.aio`` strategy on ``async+shmdict://``);
* in one worker, 50 coroutines take turns on one key's lock while /ping keeps
  answering from that same worker (a blocking wait would stop its loop);
* a worker SIGKILLed holding a lock hands it on, and the next holder is
  told (``recovered``);
* Flask-Limiter: a fixed window of 19,000,000/day and a sliding window of
  2,000,000/day with hits of millions, a 200-character client id, and a
  table full of live clients: exact, never a 500.
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("slowapi")
pytest.importorskip("uvicorn")

import shmdict  # noqa: E402

APPS = Path(__file__).resolve().parent / "apps"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(port: int, path: str, client: str = "probe", timeout: float = 30):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"X-Client": client})
        response = conn.getresponse()
        body = response.read()
        return response.status, body
    finally:
        conn.close()


def start(argv, env, port):
    log = open(os.path.join(tempfile.mkdtemp(prefix="shmdict-app-"), "log"), "w+")
    proc = subprocess.Popen(argv, env=env, cwd=APPS, stdout=log, stderr=log,
                            start_new_session=True)
    proc.log = log
    deadline = time.monotonic() + 60
    while True:
        try:
            if get(port, "/ping" if "uvicorn" in argv[2] else "/small", timeout=2)[0]:
                return proc
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise AssertionError(f"server did not start: {server_log(proc)}")
        time.sleep(0.1)


def server_log(proc) -> str:
    proc.log.seek(0)
    return proc.log.read()[-3000:]


def stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(20)


@pytest.fixture
def asgi():
    name = f"test.asgi.{uuid.uuid4().hex[:10]}"
    port = free_port()
    env = dict(os.environ, APP_TABLE=name)
    proc = start([sys.executable, "-m", "uvicorn", "asgi_app:app", "--workers", "4",
                  "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                 env, port)
    yield port, name
    stop(proc)
    for suffix in (".slow", ".aio", ".locks"):
        shmdict.unlink(name + suffix)


def workers_answering(port: int, at_least: int, seconds: float = 60) -> set:
    """The pids of the workers that answer /ping, polled until ``at_least``
    of them have answered (uvicorn reports ready when its first worker is;
    on a loaded machine the others may take seconds more to import)."""
    pids = set()
    deadline = time.monotonic() + seconds
    while len(pids) < at_least and time.monotonic() < deadline:
        pids.add(json.loads(get(port, "/ping")[1])["pid"])
        if len(pids) < at_least:
            time.sleep(0.02)
    return pids


def _hammer(port, path, clients, per_client):
    statuses = {c: [] for c in clients}

    def one(c):
        for _ in range(per_client):
            statuses[c].append(get(port, path, c)[0])
    threads = [threading.Thread(target=one, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return statuses


def test_fastapi_slowapi_and_limits_aio_are_exact_across_4_workers(asgi):
    port, _ = asgi
    pids = workers_answering(port, at_least=2)
    assert len(pids) >= 2, pids     # the requests below are spread over workers
    slow = _hammer(port, "/slow", [f"c{i}" for i in range(4)], 60)
    aio = _hammer(port, "/aio", [f"a{i}" for i in range(4)], 45)
    for statuses in slow.values():
        assert statuses.count(200) == 40 and statuses.count(429) == 20, statuses
    for statuses in aio.values():
        assert statuses.count(200) == 30 and statuses.count(429) == 15, statuses


def test_50_coroutines_wait_on_one_lock_while_the_worker_answers(asgi):
    port, _ = asgi
    result = {}
    contender = threading.Thread(target=lambda: result.update(
        json.loads(get(port, "/contend")[1])))
    contender.start()
    answered = []                   # (pid, seconds) of pings sent while it runs
    while contender.is_alive():
        started = time.monotonic()
        pid = json.loads(get(port, "/ping")[1])["pid"]
        answered.append((pid, time.monotonic() - started))
        time.sleep(0.005)
    contender.join()
    assert result["peak"] == 1                     # one coroutine inside at a time
    assert result["seconds"] >= 50 * 0.02 * 0.9    # they really took turns
    same_worker = [s for pid, s in answered if pid == result["pid"]]
    assert same_worker, "no ping reached the contending worker; retry"
    assert max(same_worker) < 0.5                  # answered while 50 coroutines wait


def test_a_worker_killed_holding_a_lock_hands_it_on(asgi):
    port, _ = asgi
    holder = json.loads(get(port, "/hold")[1])["pid"]
    os.kill(holder, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        try:
            status, body = get(port, "/take")
            taken = json.loads(body)
            if status == 200 and taken["pid"] != holder:
                break
        except (OSError, http.client.HTTPException):
            pass
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert taken == {"pid": taken["pid"], "got": True, "recovered": True}


@pytest.mark.parametrize("strategy,limit,cost,expected", [
    ("fixed-window", "19000000/day", 9_000_000, [200, 200, 429, 429]),
    ("sliding-window-counter", "2000000/day", 900_000, [200, 200, 429, 429]),
])
def test_flask_limiter_without_ceilings(strategy, limit, cost, expected):
    pytest.importorskip("flask_limiter")
    pytest.importorskip("gunicorn")
    name = f"test.flask.{uuid.uuid4().hex[:10]}"
    port = free_port()
    env = dict(os.environ, APP_TABLE=name, APP_STRATEGY=strategy, APP_BIG=limit,
               APP_COST=str(cost))
    proc = start([sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}",
                  "flask_app:app"], env, port)
    try:
        assert [get(port, "/big", "big")[0] for _ in range(4)] == expected, server_log(proc)
        long_id = "x" * 200
        assert [get(port, "/small", long_id)[0] for _ in range(4)] == [200] * 3 + [429], \
            server_log(proc)
        assert [get(port, "/small", "y" * 200)[0] for _ in range(4)] == [200] * 3 + [429]
        # the table holds 16 keys: 40 more clients fill it; no 500, each exact
        for i in range(40):
            assert [get(port, "/small", f"client-{i}")[0] for _ in range(4)] == \
                [200] * 3 + [429], server_log(proc)
    finally:
        stop(proc)
        shmdict.unlink(name)
