"""Shared fixtures: unique table names, removed after each test."""
from __future__ import annotations

import os
import uuid

import pytest

import shmdict


@pytest.fixture
def name(request):
    """A fresh table name; the table (if any) is unlinked after the test."""
    table_name = f"test.{os.getpid()}.{uuid.uuid4().hex[:12]}"
    yield table_name
    shmdict.unlink(table_name)


@pytest.fixture
def counter(name):
    table = shmdict.open(name, shmdict.Counter(), capacity=1000)
    yield table
    table.close()


@pytest.fixture(scope="session")
def redis_url():
    """A Redis server for the Redis backend's tests: ``$SHMDICT_REDIS_URL`` (as
    ``.ci/run`` sets), else a ``redis-server`` started on a free local port for
    this session (each xdist worker its own) and stopped after it."""
    url = os.environ.get("SHMDICT_REDIS_URL")
    if url:
        yield url
        return
    import shutil
    import socket
    import subprocess
    import tempfile
    import time
    if shutil.which("redis-server") is None:
        raise RuntimeError("the Redis backend's tests need redis-server (apt-get install "
                           "redis-server) or SHMDICT_REDIS_URL pointing at a server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="shmdict-redis-")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {port} did not start")
            time.sleep(0.02)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(workdir, ignore_errors=True)
