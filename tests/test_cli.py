"""The ``shmdict`` CLI: every verb run as a real command against real tables."""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import shmdict
from shmdict.backends.shm import _core

VERBS = ["ls", "stat", "dump", "check", "rm", "top", "save", "load", "demo", "bench"]
SCRIPT = shutil.which("shmdict", path=str(Path(sys.executable).parent)) or ""


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m shmdict ARGS`` in a subprocess."""
    return subprocess.run([sys.executable, "-m", "shmdict", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def tables(name):
    """A Counter, a Lock(rw=True) and a Struct table with some content."""
    counters = shmdict.open(name, shmdict.Counter(), capacity=100)
    for i, route in enumerate(["/", "/login", "/api"]):
        counters.add(("route", route), i + 1)
    counters.add(b"raw", 7)
    counters.add(42, -3)
    locks = shmdict.open(name + ".locks", shmdict.Lock(rw=True), capacity=10)
    locks["held"].acquire()
    locks["read"].read().acquire()
    locks.get("free")
    records = shmdict.open(name + ".recs", shmdict.Struct(tokens="d", tag="4s"), capacity=10)
    records.set("client", (2.5, b"ab"))
    yield counters, locks, records
    locks["held"].release()
    locks["read"].read().release()
    for t in (counters, locks, records):
        t.close()
    shmdict.unlink(name + ".locks")
    shmdict.unlink(name + ".recs")


@pytest.mark.parametrize("verb", [None] + VERBS)
def test_help_for_every_verb(verb):
    args = ["--help"] if verb is None else [verb, "--help"]
    proc = run(*args)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout
    if verb is None:
        for v in VERBS:
            assert v in proc.stdout


def test_installed_script_and_module_agree(name, tables):
    assert SCRIPT, "the `shmdict` console script is not installed next to python"
    via_script = subprocess.run([SCRIPT, "dump", name, "--json"], capture_output=True,
                                text=True, timeout=60)
    via_module = run("dump", name, "--json")
    assert via_script.returncode == via_module.returncode == 0
    assert json.loads(via_script.stdout) == json.loads(via_module.stdout)


def test_ls(name, tables):
    proc = run("ls")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["NAME", "LAYOUT", "CAPACITY", "USED", "SIZE", "PIDS"]
    row = next(line for line in lines if line.startswith(name + " "))
    assert "Counter()" in row and " 100 " in row and " 5 " in row
    # Aligned: every column starts at the same place on every line.
    start = lines[0].index("LAYOUT")
    assert all(line[start - 2:start] == "  " for line in lines[1:])
    data = json.loads(run("ls", "--json").stdout)
    mine = {t["name"]: t for t in data}
    assert mine[name]["used"] == 5 and mine[name]["capacity"] == 100
    assert mine[name]["layout"] == "Counter()"
    assert mine[name + ".locks"]["layout"] == "Lock(rw=True)"
    assert mine[name]["size"] == os.stat(f"/dev/shm/shmdict.{name}").st_size


def test_stat(name, tables):
    proc = run("stat", name + ".locks")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "load factor" in out and "tombstones" in out and "STRIPE" in out
    assert f"exclusive  {os.getpid()}" in out and f"shared     {os.getpid()}" in out
    data = json.loads(run("stat", name + ".locks", "--json").stdout)
    assert data["live"] == 3 and len(data["stripe_table"]) == data["stripes"]
    holders = {(h["key"], h["mode"]): h for h in data["lock_holders"]}
    assert holders[("held", "exclusive")]["pid"] == os.getpid()
    assert holders[("read", "shared")]["alive"] is True
    assert data["recovery"]["bound"] == pytest.approx(
        data["recovery"]["stripe_poll"] + data["recovery"]["stall_timeout"])


def test_stat_of_a_grown_table_counts_against_max_capacity(name):
    table = shmdict.open(name + ".grow", shmdict.Counter(), capacity=10, max_capacity=1000)
    try:
        for i in range(35):
            table.add(i)
        table.delete(0)
        out = run("stat", name + ".grow").stdout
        assert "34 of 1,000" in out                        # not "of 10"
        assert "3: 9/10, 10/10, 15/20 keys (grows to 1,000 keys)" in out   # 0 in tier 0
        assert "35 (deletes 1) since created" in out
        data = json.loads(run("stat", name + ".grow", "--json").stdout)
        assert data["tiers"] == 3 and data["max_capacity"] == 1000
    finally:
        table.unlink()


def _hold_stripe(name: str, conn) -> None:
    table = shmdict.open(name, shmdict.Counter(), capacity=100, create=False)
    table._stripes.acquire(2)
    conn.send("held")
    import time
    time.sleep(3600)


def test_stat_shows_stripe_holders_and_check_repairs_dead_ones(name, tables):
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    holder = ctx.Process(target=_hold_stripe, args=(name, child))
    holder.start()
    try:
        assert parent.recv() == "held"
        data = json.loads(run("stat", name, "--json").stdout)
        assert data["stripe_table"][2]["holder"] == holder.pid
        assert data["stripe_table"][2]["holder_alive"] is True
        assert data["stripe_table"][2]["semaphore"] == 0
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
        text = run("stat", name).stdout
        assert f"pid {holder.pid} (dead)" in text
        proc = run("check", name)
        assert proc.returncode == 0, proc.stdout
        assert "stripe 2 was held by dead pid" in proc.stdout
        after = json.loads(run("stat", name, "--json").stdout)
        assert after["stripe_table"][2]["holder"] is None
        assert after["stripe_table"][2]["semaphore"] == 1
    finally:
        if holder.is_alive():
            holder.kill()
        holder.join()


def test_dump(name, tables):
    proc = run("dump", name)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["KEY", "VALUE"]
    assert "('route', '/login')  2" in proc.stdout
    assert "b'raw'" in proc.stdout and lines[-1] == "(5 keys)"
    data = json.loads(run("dump", name, "--json").stdout)
    items = {json.dumps(i["key"]): i["value"] for i in data["items"]}
    assert items['["route", "/api"]'] == 3
    assert items['{"hex": "726177"}'] == 7
    assert items["42"] == -3
    only = json.loads(run("dump", name, "--json", "--prefix", "route", "/").stdout)
    assert [i["key"] for i in only["items"]] == [["route", "/"]]
    assert json.loads(run("dump", name, "--json", "--limit", "2").stdout)["count"] == 2
    locks = json.loads(run("dump", name + ".locks", "--json").stdout)
    values = {i["key"]: i["value"] for i in locks["items"]}
    assert values["held"]["owner"] == os.getpid()
    assert values["read"]["readers"] == [os.getpid()]
    assert values["free"] == {"owner": None, "readers": []}
    recs = run("dump", name + ".recs")
    assert "tokens=2.5" in recs.stdout
    rec = json.loads(run("dump", name + ".recs", "--json").stdout)["items"][0]
    assert rec["value"]["tokens"] == 2.5 and rec["value"]["tag"] == {"hex": "61620000"}


def test_check_ok_and_inconsistent(name, tables):
    counters = tables[0]
    proc = run("check", name, name + ".locks", name + ".recs")
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.count(": OK") == 3
    assert json.loads(run("check", name, "--json").stdout)["ok"] is True
    _core.store_u64(counters._segment.mm, _core.HEADER_FIELDS["live"][0], 99)
    bad = run("check", name)
    assert bad.returncode == 1
    assert "INCONSISTENT" in bad.stdout and "live count 99" in bad.stdout
    # check repairs a wrong live count (rebuilt from the stripes): spoil it again.
    _core.store_u64(counters._segment.mm, _core.HEADER_FIELDS["live"][0], 99)
    report = json.loads(run("check", name, "--json").stdout)
    assert report["ok"] is False and report["problems"]


def test_check_corrupt_header_and_missing_table(name, tables):
    counters = tables[0]
    _core.store_u64(counters._segment.mm, 0, 0x1234)       # the magic
    proc = run("check", name)
    assert proc.returncode == 1 and "CORRUPT" in proc.stdout and "magic" in proc.stdout
    missing = run("check", name + ".nope")
    assert missing.returncode == 2
    ls = run("ls")
    assert ls.returncode == 0 and "unreadable" in ls.stdout


def test_rm(name):
    for suffix in ("", ".b"):
        shmdict.open(name + suffix, shmdict.Counter(), capacity=10).close()
    proc = run("rm", name, name + ".b")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"removed {name}", f"removed {name}.b"]
    assert name not in shmdict.list_tables()
    assert not [e for e in os.listdir("/dev/shm") if e.startswith(f"sem.shmdict.{name}.")]
    assert run("rm", name).returncode == 1
    assert run("rm", "-f", name).returncode == 0
    assert run("rm", "bad/name").returncode == 2


def test_ls_with_patterns(name):
    for suffix in (".a1", ".a2", ".b1"):
        shmdict.open(name + suffix, shmdict.Counter(), capacity=10).close()
    try:
        rows = json.loads(run("ls", "--json", name + ".a*").stdout)
        assert [r["name"] for r in rows] == [name + ".a1", name + ".a2"]
        both = json.loads(run("ls", "--json", name + ".?1", name + ".a2").stdout)
        assert [r["name"] for r in both] == [name + ".a1", name + ".a2", name + ".b1"]
        text = run("ls", name + ".b[0-9]").stdout
        assert name + ".b1" in text and name + ".a1" not in text
        none = run("ls", name + ".zz*")
        assert none.returncode == 0 and "no shmdict tables" in none.stdout
        assert json.loads(run("ls", "--json", name + ".zz*").stdout) == []
    finally:
        for suffix in (".a1", ".a2", ".b1"):
            shmdict.unlink(name + suffix)


def _map_until_stdin_closes(name):
    proc = subprocess.Popen(
        [sys.executable, "-c", f"import sys, shmdict\n"
                               f"d = shmdict.open({name!r}, shmdict.Counter(), capacity=10)\n"
                               f"print('ready', flush=True)\nsys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_rm_with_patterns_dry_run_and_tables_in_use(name):
    names = [name + s for s in (".a1", ".a2", ".b1", ".busy")]
    for n in names:
        shmdict.open(n, shmdict.Counter(), capacity=10).close()
    user = _map_until_stdin_closes(name + ".busy")
    try:
        dry = run("rm", "--dry-run", name + ".*")
        assert dry.returncode == 1                  # .busy would be refused
        assert dry.stdout.splitlines() == [f"would remove {n}" for n in names[:3]]
        assert f"{name}.busy' is in use by pid {user.pid}" in dry.stderr
        assert all(n in shmdict.list_tables() for n in names)
        none = run("rm", name + ".zz*")
        assert none.returncode == 1 and f"no table matches '{name}.zz*'" in none.stderr
        assert run("rm", "-f", name + ".zz*").returncode == 0
        # A pattern and an exact name that overlap remove each table once;
        # the in-use one is refused while the others go.
        proc = run("rm", name + ".a*", name + ".a1", name + ".b1", name + ".busy")
        assert proc.returncode == 1
        assert proc.stdout.splitlines() == [f"removed {n}" for n in names[:3]]
        assert "in use" in proc.stderr
        assert [n for n in names if n in shmdict.list_tables()] == [name + ".busy"]
    finally:
        user.stdin.close()
        user.wait(30)
        for n in names:
            shmdict.unlink(n)


def test_usage_errors():
    assert run().returncode == 2
    assert run("frobnicate").returncode == 2
    assert run("stat").returncode == 2
    assert run("dump", "x", "--limit", "0").returncode == 2
    assert run("stat", "no such table").returncode == 2


def test_demo():
    proc = run("demo", "--processes", "2", "--requests", "2000")
    assert proc.returncode == 0, proc.stderr
    assert "exact" in proc.stdout


def test_bench():
    proc = run("bench", "--keys", "200", "--repeats", "1", "--budget", "0.01")
    assert proc.returncode == 0, proc.stderr
    assert "ns/op" in proc.stdout
