"""A real Redis Cluster for the cluster tests: 3 masters and 3 replicas.

Six server processes on free ports of 127.0.0.1, made one cluster by the
server's own ``--cluster create`` tool, started once per test session (per
xdist worker) and stopped at its end.  The binaries are the ones the
``redis_url`` fixture uses (``redis_server_binary`` in ``tests/conftest.py``):
a cluster needs nothing that a single server does not.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Dict, List

import pytest
from helpers import redis_server_binary

NODE_TIMEOUT_MS = 1000


def _free_ports(n: int) -> List[int]:
    """``n`` ports of 127.0.0.1 that are free, each with its cluster bus port
    (the port + 10000, which must stay a valid port) free too."""
    import random
    ports: List[int] = []
    while len(ports) < n:
        port = random.randrange(20000, 40000)
        if port in ports:
            continue
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        ports.append(port)
    return ports


def _cli_binary(server: str) -> str:
    """The command-line client beside the server binary (valkey-cli or redis-cli)."""
    folder = os.path.dirname(os.path.realpath(server))
    for name in ("valkey-cli", "redis-cli"):
        for candidate in (os.path.join(folder, name), shutil.which(name) or ""):
            if candidate and os.access(candidate, os.X_OK):
                return candidate
    raise RuntimeError(f"no valkey-cli or redis-cli next to {server} or on PATH")


@dataclass
class Cluster:
    """A running cluster: its nodes' ports and processes, and a few controls."""

    ports: List[int]
    workdir: str
    cli: str
    procs: Dict[int, subprocess.Popen] = field(default_factory=dict)
    server: str = ""

    @property
    def url(self) -> str:
        """The one URL a table needs: any node, the cluster scheme."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def client(self, port: int):
        import redis
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)

    def cli_run(self, *args: str, timeout: float = 60) -> str:
        run = subprocess.run([self.cli, *args], capture_output=True, text=True,
                             timeout=timeout)
        if run.returncode != 0:
            raise RuntimeError(f"{self.cli} {' '.join(args)}: {run.stdout}{run.stderr}")
        return run.stdout

    def start_node(self, port: int) -> None:
        self.procs[port] = subprocess.Popen(
            [self.server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled",
             "yes", "--cluster-config-file", f"nodes-{port}.conf", "--cluster-node-timeout",
             str(NODE_TIMEOUT_MS), "--save", "", "--appendonly", "no", "--dir",
             self.workdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill_node(self, port: int) -> None:
        proc = self.procs.pop(port)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def nodes(self) -> List[Dict[str, str]]:
        """``CLUSTER NODES`` of a live node: id, port, role, master id, slots."""
        for port in self.ports:
            if port not in self.procs:
                continue
            try:
                text = self.cli_run("-p", str(port), "cluster", "nodes", timeout=10)
            except (RuntimeError, subprocess.TimeoutExpired):
                continue
            out = []
            for line in text.strip().splitlines():
                parts = line.split()
                out.append({"id": parts[0], "port": int(parts[1].split(":")[1].split("@")[0]),
                            "flags": parts[2], "master": parts[3], "slots": parts[8:]})
            return out
        raise RuntimeError("no live cluster node answers")

    def master_of_slot(self, slot: int) -> Dict[str, str]:
        for node in self.nodes():
            if "master" not in node["flags"] or "fail" in node["flags"]:
                continue
            for spec in node["slots"]:
                if spec.startswith("["):
                    continue
                lo, _, hi = spec.partition("-")
                if int(lo) <= slot <= int(hi or lo):
                    return node
        raise RuntimeError(f"no master serves slot {slot}")

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every live node reports ``cluster_state:ok`` and every replica
        is in sync."""
        deadline = time.monotonic() + timeout
        while True:
            states = []
            for port in list(self.procs):
                try:
                    info = self.cli_run("-p", str(port), "cluster", "info", timeout=10)
                except (RuntimeError, subprocess.TimeoutExpired):
                    states.append(False)
                    continue
                states.append("cluster_state:ok" in info)
            if states and all(states) and self._replicas_synced():
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not become ok")
            time.sleep(0.1)

    def _replicas_synced(self) -> bool:
        """Whether every live replica has finished its sync with its master
        (a write can only be confirmed by WAIT once it has)."""
        for node in self.nodes():
            if "slave" in node["flags"] and node["port"] in self.procs:
                try:
                    info = self.cli_run("-p", str(node["port"]), "info", "replication",
                                        timeout=10)
                except (RuntimeError, subprocess.TimeoutExpired):
                    return False
                if "master_link_status:up" not in info or "master_sync_in_progress:1" in info:
                    return False
        return True

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.kill()
        for proc in self.procs.values():
            proc.wait(10)
        self.procs.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_cluster():
    """A 3-master, 3-replica cluster on 127.0.0.1 (see the module docstring)."""
    server = redis_server_binary()
    cluster = Cluster(_free_ports(6), tempfile.mkdtemp(prefix="shmdict-cluster-"),
                      _cli_binary(server), server=server)
    try:
        for port in cluster.ports:
            cluster.start_node(port)
        deadline = time.monotonic() + 20
        for port in cluster.ports:
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"cluster node on port {port} did not start")
                    time.sleep(0.02)
        cluster.cli_run("--cluster", "create",
                        *[f"127.0.0.1:{p}" for p in cluster.ports],
                        "--cluster-replicas", "1", "--cluster-yes")
        cluster.wait_ok()
        yield cluster
    finally:
        cluster.stop()
