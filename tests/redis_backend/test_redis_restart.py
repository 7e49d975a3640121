"""Redis restarted mid-run: clear errors while it is down, correct after, and
nothing lost that a call reported as done.

The test runs its own ``redis-server`` (append-only file, fsync on every
write, so the server's durability is not what is being tested) on a free
port, lets worker processes count into it, SIGKILLs the server mid-run,
checks that every worker gets ``shmdict.BackendError`` while it is down,
restarts it on the same port and data directory, and lets the workers go on.
Every add that returned is in the final count; an add that raised may or
may not be (the server may have applied it and died before answering), so::

    sum(successes) <= final value <= sum(successes) + sum(errors)
"""
from __future__ import annotations

import multiprocessing
import shutil
import socket
import subprocess
import time

import pytest

import shmdict

FORK = multiprocessing.get_context("fork")
WORKERS = 3
BEFORE, AFTER = 0, 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(port: int, workdir: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir,
         "--save", "", "--appendonly", "yes", "--appendfsync", "always"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            assert proc.poll() is None, "redis-server did not start"
            time.sleep(0.02)


def _worker(table, index, down, stop, progress, errors, down_errors):
    phase = BEFORE
    while not stop.is_set():
        try:
            table.add("hits")
            progress[index * 2 + phase] += 1
        except shmdict.BackendError as exc:
            errors[index] += 1
            if down.is_set():
                assert "cannot be reached" in str(exc) or "did not answer" in str(exc)
                down_errors[index] += 1
                phase = AFTER
            time.sleep(0.01)
        except BaseException:
            errors[index] = -10**9        # anything else is a failure
            raise


def _wait_for(predicate, what: str, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def server(tmp_path):
    if shutil.which("redis-server") is None:
        raise RuntimeError("this test needs redis-server (apt-get install redis-server)")
    port = _free_port()
    holder = {"proc": _start(port, str(tmp_path)), "port": port, "dir": str(tmp_path)}
    yield holder
    holder["proc"].kill()
    holder["proc"].wait(10)


def test_restart_mid_run(server, name):
    url = f"redis://127.0.0.1:{server['port']}/0?socket_timeout=2&socket_connect_timeout=1"
    table = shmdict.open(name, shmdict.Counter(), 100, 64, backend=url)
    down, stop = FORK.Event(), FORK.Event()
    progress = FORK.Array("q", 2 * WORKERS)
    errors, down_errors = FORK.Array("q", WORKERS), FORK.Array("q", WORKERS)
    procs = [FORK.Process(target=_worker,
                          args=(table, i, down, stop, progress, errors, down_errors))
             for i in range(WORKERS)]
    for p in procs:
        p.start()
    try:
        _wait_for(lambda: all(progress[i * 2] >= 50 for i in range(WORKERS)), "first adds")
        server["proc"].kill()                               # SIGKILL, mid-run
        server["proc"].wait(10)
        down.set()
        with pytest.raises(shmdict.BackendError, match="cannot be reached"):
            table.read("hits")
        _wait_for(lambda: all(down_errors[i] >= 1 for i in range(WORKERS)),
                  "every worker to see the server down")
        server["proc"] = _start(server["port"], server["dir"])
        down.clear()
        _wait_for(lambda: all(progress[i * 2 + 1] >= 50 for i in range(WORKERS)),
                  "adds after the restart")
    finally:
        stop.set()
        for p in procs:
            p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert all(e >= 0 for e in errors[:])
    done = sum(progress[:])
    final = table.read("hits")[0]
    assert done <= final <= done + sum(errors[:])
    assert table.check()
    table.unlink()
