"""``shmdict top``: what it reports agrees with what real processes did.

No assertion here depends on timing: the rates are checked against the
table itself (the reported change of the sum equals the difference of the
two reported sums, both bracketed by sums the test measured before and
after), and, once the workers stopped, against their exact totals.
"""
from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest

import shmdict
from shmdict.backends.shm import _core
from shmdict.backends.shm.inspection import counter_sum, fence, lock_summary, stripe_table
from shmdict.top import Sampler

CTX = multiprocessing.get_context("fork")


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shmdict", *args], capture_output=True,
                          text=True, timeout=timeout)


def top_json(*patterns: str, interval: float = 0.3) -> dict:
    proc = cli("top", "--json", "-d", str(interval), *patterns)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def row_of(data: dict, name: str) -> dict:
    [row] = [r for r in data["tables"] if r["name"] == name]
    return row


# ------------------------------------------------------------- workers
def _adder(name, w, stop, counts):
    """Add to existing keys and insert new ones until told to stop."""
    table = shmdict.open(name, shmdict.Counter(), capacity=50_000, create=False)
    total = i = 0
    while not stop.is_set():
        table.add(("k", i % 50), 2)
        total += 2
        if i % 50 == 0 and i < 500_000:
            table.add(("new", w, i))
            total += 1
        i += 1
    counts[w] = total


def _spinner(name, stop, counts):
    table = shmdict.open(name, shmdict.Lock(), capacity=100, create=False)
    n = 0
    while not stop.is_set():
        with table["spin"]:
            n += 1
    counts["spin"] = n


def _holder(name, key, conn):
    table = shmdict.open(name, shmdict.Lock(), capacity=100, create=False)
    table[key].acquire()
    conn.send("held")
    conn.recv()
    table[key].release()


def _waiter(name, key):
    table = shmdict.open(name, shmdict.Lock(), capacity=100, create=False)
    if table[key].acquire(timeout=120):
        table[key].release()


def _hold_stripe(name, stripe, conn):
    table = shmdict.open(name, shmdict.Counter(), capacity=100, create=False)
    table._stripes.acquire(stripe)
    conn.send("held")
    conn.recv()
    table._stripes.release(stripe)


def _stop_all(stop, procs):
    stop.set()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0, p.exitcode


# ---------------------------------------------------------------- tests
def test_counter_rates_match_the_table_and_the_workers(name):
    table = shmdict.open(name, shmdict.Counter(), capacity=50_000)
    stop, counts = CTX.Event(), CTX.Manager().dict()
    procs = [CTX.Process(target=_adder, args=(name, w, stop, counts)) for w in range(3)]
    for p in procs:
        p.start()
    try:
        deadline = time.monotonic() + 30
        while counter_sum(table) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        low = counter_sum(table)
        data = top_json(name)
        high = counter_sum(table)
        row = row_of(data, name)
        adds = row["adds"]
        assert "increments" in adds["what"]
        # Both samples lie between what the test read before and after, and
        # the increments reported are exactly the change between them.
        assert low <= adds["before"] <= adds["after"] <= high
        assert adds["delta"] == adds["after"] - adds["before"] > 0
        assert adds["per_second"] == pytest.approx(adds["delta"] / row["rates_over"])
        assert set(p.pid for p in procs) <= set(row["mapped_by"])
        assert os.getpid() in row["mapped_by"]
        assert row["kind"] == "Counter" and row["capacity"] == 50_000 and row["tiers"] >= 1
    finally:
        _stop_all(stop, procs)
    # Quiet now: no change, and the sum is exactly what the workers added.
    data = top_json(name, interval=0.1)
    row = row_of(data, name)
    assert row["adds"]["delta"] == 0 and row["adds"]["per_second"] == 0
    assert row["adds"]["after"] == sum(counts.values())
    assert row["inserts"]["delta"] == 0
    assert row["live"] == len(table)
    table.close()


def test_lock_acquisitions_holders_waiters_and_pids(name):
    table = shmdict.open(name, shmdict.Lock(), capacity=100)
    stop, counts = CTX.Event(), CTX.Manager().dict()
    parent, child = CTX.Pipe()
    holder = CTX.Process(target=_holder, args=(name, "held", child))
    holder.start()
    assert parent.recv() == "held"
    waiter = CTX.Process(target=_waiter, args=(name, "held"))
    spinner = CTX.Process(target=_spinner, args=(name, stop, counts))
    waiter.start()
    spinner.start()
    try:
        deadline = time.monotonic() + 30
        while (lock_summary(table)["waiting"] < 1 or fence(table) < 2) \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        low = fence(table)
        data = top_json(name)
        high = fence(table)
        row = row_of(data, name)
        adds = row["adds"]
        assert "acquisitions" in adds["what"]
        assert low <= adds["before"] <= adds["after"] <= high
        assert adds["delta"] == adds["after"] - adds["before"]
        locks = row["locks"]
        assert locks["waiting"] >= 1
        assert {"key": "held", "pid": holder.pid, "alive": True, "mode": "exclusive"} \
            in locks["holders"]
        assert {holder.pid, waiter.pid, spinner.pid} <= set(row["mapped_by"])
        text = cli("top", "-n", "1", name).stdout
        assert str(holder.pid) in text
    finally:
        stop.set()
        spinner.join(60)
        parent.send("release")
        holder.join(60)
        waiter.join(60)
    assert spinner.exitcode == holder.exitcode == waiter.exitcode == 0
    row = row_of(top_json(name, interval=0.1), name)
    # Every exclusive acquisition: the holder's, the waiter's, the spinner's.
    assert row["adds"]["after"] == 2 + counts["spin"] and row["adds"]["delta"] == 0
    assert row["locks"] == {"held": 0, "waiting": 0, "holders": []}
    table.close()


def _updater(name, conn):
    table = shmdict.open(name, shmdict.Struct(n="q"), capacity=10, create=False)
    with table.update("rec") as rec:           # holds the record lock
        conn.send("updating")
        conn.recv()
        rec.n += 1


def test_struct_record_writers_show_as_lock_holders(name):
    table = shmdict.open(name, shmdict.Struct(n="q"), capacity=10)
    parent, child = CTX.Pipe()
    writer = CTX.Process(target=_updater, args=(name, child))
    writer.start()
    try:
        assert parent.recv() == "updating"
        row = row_of(top_json(name, interval=0.05), name)
        assert row["adds"] is None and row["kind"] == "Struct"
        assert row["locks"]["holders"] == [{"key": "rec", "pid": writer.pid, "alive": True,
                                            "mode": "writer"}]
    finally:
        parent.send("done")
        writer.join(30)
    assert writer.exitcode == 0 and table.read("rec") == ((1,), True)
    table.close()


def test_batch_mode_prints_one_block_per_sample_and_filters(name):
    shmdict.open(name, shmdict.Counter(), capacity=10).close()
    shmdict.open(name + ".other", shmdict.Struct(a="q"), capacity=10).close()
    try:
        proc = cli("top", "-n", "2", "-d", "0.1", name)
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout
        assert out.count("shmdict top") == 2 and "\x1b[" not in out
        assert out.count(f"\n{name} ") == 2 and name + ".other" not in out
        first, second = out.split("\n\nshmdict top")
        assert "rates from the next refresh" in first and "rates from" not in second
        assert "ADDS/s" in second and "Counter()" in second
        both = cli("top", "-n", "1", name + "*")
        assert both.returncode == 0 and name + ".other" in both.stdout
        none = json.loads(cli("top", "--json", "-d", "0.05", name + ".nothing*").stdout)
        assert none["tables"] == []
    finally:
        shmdict.unlink(name + ".other")


def test_top_never_hangs_on_a_corrupt_or_stuck_table_and_holds_no_stripe(name):
    bad = shmdict.open(name + ".bad", shmdict.Counter(), capacity=10)
    _core.store_u64(bad._segment.mm, 0, 0x1234)         # the magic
    # A table whose creator (this process, by its lock) never finishes it.
    unfinished = f"/dev/shm/shmdict.{name}.unfinished"
    fd = os.open(unfinished, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.ftruncate(fd, 4096)
    fcntl.flock(fd, fcntl.LOCK_EX)
    table = shmdict.open(name, shmdict.Counter(), capacity=100)
    parent, child = CTX.Pipe()
    holder = CTX.Process(target=_hold_stripe, args=(name, 4, child))
    holder.start()
    try:
        assert parent.recv() == "held"
        data = top_json(name + "*", interval=0.1)
        assert "magic" in row_of(data, name + ".bad")["error"]
        assert "still being created" in row_of(data, name + ".unfinished")["error"]
        stripes = row_of(data, name)["stripes"]
        assert stripes["held"] == 1
        assert stripes["holders"] == [{"stripe": 4, "pid": holder.pid, "alive": True}]
        proc = cli("top", "-n", "2", "-d", "0.1", name + "*")
        assert proc.returncode == 0 and "unreadable" in proc.stdout
        assert "1/16" in proc.stdout
        # top took nothing: the stripe is still the holder's.
        assert stripe_table(table)[4]["holder"] == holder.pid
    finally:
        parent.send("go")
        holder.join(30)
        os.close(fd)
        os.unlink(unfinished)
        bad.close()
        shmdict.unlink(name + ".bad")
        table.close()


def test_a_dead_stripe_holder_shows_and_its_repair_is_seen(name):
    table = shmdict.open(name, shmdict.Counter(), capacity=100)
    parent, child = CTX.Pipe()
    holder = CTX.Process(target=_hold_stripe, args=(name, 2, child))
    holder.start()
    assert parent.recv() == "held"
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    with Sampler([name]) as sampler:
        [first] = sampler.sample()["tables"]
        assert first["stripes"]["dead_holders"] == [{"stripe": 2, "pid": holder.pid}]
        assert first["stripes"]["repairs_seen"] == 0
        assert " 1 dead" in cli("top", "-n", "1", name).stdout
        assert cli("check", name).returncode == 0          # takes it over and repairs
        [second] = sampler.sample()["tables"]
        assert second["stripes"]["dead_holders"] == []
        assert second["stripes"]["repairs_seen"] == 1
        [third] = sampler.sample()["tables"]
        assert third["stripes"]["repairs_seen"] == 0
    table.close()


def test_a_recreated_table_starts_its_rates_again(name):
    with shmdict.open(name, shmdict.Counter(), capacity=10) as table:
        table.add("a", 100)
    with Sampler([name]) as sampler:
        sampler.sample()
        shmdict.unlink(name)
        with shmdict.open(name, shmdict.Counter(), capacity=10) as table:
            table.add("a", 1)
            [row] = sampler.sample()["tables"]
    assert row["adds"]["before"] is None and row["adds"]["after"] == 1


def test_a_running_top_does_not_count_as_a_user_of_the_tables(name):
    """top attaches only while it samples, so `shmdict rm` is not refused
    because top is watching (and a removed segment is not kept alive)."""
    shmdict.open(name, shmdict.Counter(), capacity=10).close()
    watcher = subprocess.Popen([sys.executable, "-m", "shmdict", "top", "-d", "60", name],
                               stdout=subprocess.PIPE, text=True)
    try:
        for line in watcher.stdout:          # the first block is out: top has sampled
            if line.startswith(name + " "):
                break
        assert watcher.poll() is None
        proc = cli("rm", name)
        assert proc.returncode == 0, proc.stderr
    finally:
        watcher.terminate()
        watcher.wait(30)


def _run_on_a_terminal(args, keys: bytes):
    """Run ``shmdict top ARGS`` on a fresh pseudo-terminal, type ``keys`` after
    its first frame; returns (exit status, output, terminal lflag after)."""
    pid, master = pty.fork()
    if pid == 0:                        # the child: the pty is its terminal
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 60, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        os.execve(sys.executable, [sys.executable, "-m", "shmdict", "top", *args], env)
    out = b""
    sent = False
    deadline = time.monotonic() + 60
    status = None
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:             # EIO: the child closed its terminal
                    chunk = b""
                out += chunk
            if not sent and b"\x1b[H\x1b[2J" in out and b"NAME" in out:
                time.sleep(0.2)             # it is waiting for a key now
                os.write(master, keys)
                sent = True
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                out += _drain(master)
                break
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"top did not quit on {keys!r}; output {out[-500:]!r}")
        lflag = termios.tcgetattr(master)[3]
    finally:
        os.close(master)
    return os.waitstatus_to_exitcode(status), out.decode("utf-8", "replace"), lflag


def _drain(master: int) -> bytes:
    out = b""
    while select.select([master], [], [], 0.2)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out


@pytest.mark.parametrize("keys", [b"q", b"\x03"], ids=["q", "ctrl-c"])
def test_on_a_terminal_q_and_ctrl_c_quit_and_restore_it(name, keys):
    shmdict.open(name, shmdict.Counter(), capacity=10).close()
    code, out, lflag = _run_on_a_terminal(["-d", "30", name], keys)
    assert code == 0, out
    assert name in out and "\x1b[H\x1b[2J" in out
    # Lines are cut to the terminal's width (60 columns here).
    assert max(len(line) for line in out.replace("\x1b[H\x1b[2J", "").splitlines()) <= 60
    assert lflag & termios.ICANON and lflag & termios.ECHO      # cbreak mode undone
