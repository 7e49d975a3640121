"""Snapshots: ``shmdict.save`` / ``shmdict.load`` and ``shmdict save`` / ``load``.

A table survives a round trip through a file exactly (awkward keys, every
layout); a damaged file is refused and creates nothing; a save taken while
processes add and insert is consistent (the saved key set is one instant's,
each value lies between what was there before and after); a merge adds
exactly while others add.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import subprocess
import sys
import time

import pytest

import shmdict
from shmdict import snapshot
from shmdict.backends.shm.inspection import stripe_table

AWKWARD = [("route", 1, b"\x00\xff"), b"", b"\x00\x01\x02", 2 ** 63 - 1, -(2 ** 200), 0,
           "ünï€😀", "", (), ((1, ("deep", b"x")),), ("a", "b", "c", 42)]


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shmdict", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_counter_round_trip_with_awkward_keys(name, tmp_path):
    path = tmp_path / "c.snap"
    with shmdict.open(name, shmdict.Counter(), capacity=50, key_size=96) as table:
        for i, key in enumerate(AWKWARD):
            table.set(key, (i - 5) * 10 ** 17)
        before = dict(table.items())
        info = shmdict.save(table, path)
    assert info["count"] == len(AWKWARD)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    shmdict.unlink(name)
    with shmdict.load(path) as loaded:
        assert loaded.name == name and loaded.capacity == 50 and loaded.key_size == 96
        assert dict(loaded.items()) == before
        assert len(loaded) == len(AWKWARD)
        assert loaded.check()


def test_struct_round_trip_and_a_new_name(name, tmp_path):
    layout = shmdict.Struct(tokens="d", stamp="q", tag="6s", ok="?")
    path = tmp_path / "s.snap"
    with shmdict.open(name, layout, capacity=20, key_size=64) as table:
        for i, key in enumerate(AWKWARD[:8]):
            table.set(key, (i / 3, -i * 2 ** 40, bytes([i]) * 3, i % 2 == 0))
        before = dict(table.items())
    assert shmdict.save(name, path)["count"] == 8       # by name
    shmdict.unlink(name)
    with shmdict.load(path, name=name + ".copy") as loaded:
        assert loaded.layout == layout
        assert dict(loaded.items()) == before
    assert name not in shmdict.list_tables()
    shmdict.unlink(name + ".copy")


def test_lock_round_trip_saves_keys_free_and_keeps_fences_rising(name, tmp_path):
    path = tmp_path / "l.snap"
    with shmdict.open(name, shmdict.Lock(rw=True), capacity=20) as table:
        for key in AWKWARD[:5]:
            table.get(key)
        held = table["held"]
        for _ in range(3):
            held.acquire()
            held.release()
        held.acquire()                      # saved while held: comes back free
        last_fence = held.fence
        shmdict.save(table, path)
        held.release()
    shmdict.unlink(name)
    with shmdict.load(path) as loaded:
        assert sorted(map(repr, loaded.keys())) == sorted(map(repr, AWKWARD[:5] + ["held"]))
        assert loaded.owner("held") is None
        handle = loaded["held"]
        assert handle.acquire(timeout=5)
        assert handle.fence > last_fence
        handle.release()


@pytest.mark.parametrize("damage", ["truncated", "cut_in_entries", "flipped", "appended",
                                    "empty", "not_a_snapshot", "header_only"])
def test_a_damaged_file_is_refused_and_creates_nothing(name, tmp_path, damage):
    good = tmp_path / "good.snap"
    with shmdict.open(name, shmdict.Counter(), capacity=50) as table:
        for i in range(20):
            table.add(("k", i), i)
        shmdict.save(table, good)
    shmdict.unlink(name)
    data = good.read_bytes()
    bad = {"truncated": data[:-1], "cut_in_entries": data[:len(data) // 2],
           "flipped": data[:100] + bytes([data[100] ^ 0x10]) + data[101:],
           "appended": data + b"\0", "empty": b"", "not_a_snapshot": b"hello " * 20,
           "header_only": data[:30]}[damage]
    path = tmp_path / "bad.snap"
    path.write_bytes(bad)
    with pytest.raises(shmdict.SnapshotError):
        shmdict.load(path)
    assert name not in shmdict.list_tables()
    proc = cli("load", str(path))
    assert proc.returncode == 1 and "shmdict:" in proc.stderr
    assert name not in shmdict.list_tables()


def _rehash(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


def test_an_edited_file_with_a_recomputed_checksum_is_still_checked(name, tmp_path):
    """The parser checks the structure itself, not only the checksum: an
    entry count that disagrees with the entries is refused."""
    with shmdict.open(name, shmdict.Counter(), capacity=10) as table:
        table.add("a", 1)
        data = snapshot.encode(name, table.layout, 10, table.key_size,
                               [(b"\x02a", 1)])
    shmdict.unlink(name)
    body = data[:-32]
    meta_len = int.from_bytes(body[12:16], "little")
    meta = json.loads(body[16:16 + meta_len])
    for change in ({"count": 2}, {"count": 0}, {"kind": "Lock"}, {"key_size": 1}):
        edited = json.dumps(dict(meta, **change)).encode()
        forged = body[:12] + len(edited).to_bytes(4, "little") + edited + body[16 + meta_len:]
        path = tmp_path / "forged.snap"
        path.write_bytes(_rehash(forged))
        with pytest.raises(shmdict.SnapshotError):
            shmdict.load(path)
        assert name not in shmdict.list_tables()


def test_load_refuses_an_existing_table_unless_replace_or_merge(name, tmp_path):
    path = tmp_path / "c.snap"
    with shmdict.open(name, shmdict.Counter(), capacity=10) as table:
        table.add("a", 5)
        shmdict.save(table, path)
        table.add("a", 100)
        table.add("b", 1)
        with pytest.raises(shmdict.SnapshotError, match="exists"):
            shmdict.load(path)
        assert table.read("a") == (105, True)
        # In use (this test maps it): --replace is refused from another process.
        proc = cli("load", str(path), "--replace")
        assert proc.returncode == 1 and "in use" in proc.stderr
        assert table.read("a") == (105, True)
        with shmdict.load(path, merge=True) as merged:
            assert merged.read("a") == (110, True)
    with shmdict.load(path, replace=True) as replaced:       # nobody maps it now
        assert dict(replaced.items()) == {"a": 5}
    with pytest.raises(ValueError):
        shmdict.load(path, replace=True, merge=True)


def test_merge_needs_the_same_layout(name, tmp_path):
    path = tmp_path / "c.snap"
    with shmdict.open(name, shmdict.Counter(), capacity=10) as table:
        table.add("a", 5)
        shmdict.save(table, path)
    shmdict.unlink(name)
    with shmdict.open(name, shmdict.Lock(), capacity=10):
        with pytest.raises(shmdict.SnapshotError, match="Lock"):
            shmdict.load(path, merge=True)


# ------------------------------------------------- consistency under load
KEYS = 200
WORKERS = 3


def _worker(name: str, w: int, stop, counts) -> None:
    """Add 1 to existing keys and insert ("new", w, i) in order until told
    to stop; record how many of each it did."""
    table = shmdict.open(name, shmdict.Counter(), capacity=100_000, create=False)
    adds = inserted = 0
    i = 0
    while not stop.is_set() and inserted < 20_000:
        table.add(("old", (i * 7 + w) % KEYS))
        adds += 1
        if i % 3 == 0:
            table.add(("new", w, inserted))
            inserted += 1
        i += 1
    counts[w] = (adds, inserted)


def _start_workers(name):
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    counts = ctx.Manager().dict()
    procs = [ctx.Process(target=_worker, args=(name, w, stop, counts)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    return stop, counts, procs


def _stop(stop, procs):
    stop.set()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0


def test_save_while_processes_add_and_insert_is_consistent(name, tmp_path):
    table = shmdict.open(name, shmdict.Counter(), capacity=100_000)
    for k in range(KEYS):
        table.add(("old", k), 1000 + k)
    before = dict(table.items())
    stop, counts, procs = _start_workers(name)
    paths = [tmp_path / f"busy{i}.snap" for i in range(5)]
    try:
        for i, path in enumerate(paths):
            deadline = time.monotonic() + 30
            while len(table) < KEYS + 300 * (i + 1) and time.monotonic() < deadline:
                time.sleep(0.005)             # the workers are inserting
            shmdict.save(table, path)
    finally:
        _stop(stop, procs)
    after = dict(table.items())
    for path in paths:
        saved = dict(snapshot.read_file(path).items())
        # Existing keys: every saved value lies between before and after.
        for k in range(KEYS):
            assert before[("old", k)] <= saved[("old", k)] <= after[("old", k)]
        # New keys: each worker inserted them in order, so a key set taken at
        # one instant holds a prefix of each worker's keys (a walk that let
        # inserts interleave would miss a key in a slot it had passed while
        # seeing a later one).
        news = [k for k in saved if k[0] == "new"]
        assert news, "the save ran before any insert"
        for w in range(WORKERS):
            mine = sorted(k[2] for k in news if k[1] == w)
            assert mine == list(range(len(mine))), f"worker {w}'s saved keys are not a prefix"
            for i in mine:
                # add() of a new key inserts it holding the amount: a save
                # never sees it at 0.
                assert saved[("new", w, i)] == 1 and after[("new", w, i)] == 1
        assert set(saved) <= set(after)
    # Conservation: what the workers did is all in the table.
    total_adds = sum(a + n for a, n in counts.values())
    assert sum(after.values()) == sum(before.values()) + total_adds
    # The saves released every stripe.
    assert all(s["holder"] is None for s in stripe_table(table))
    table.close()


def test_merge_into_a_live_table_adds_exactly(name, tmp_path):
    path = tmp_path / "merge.snap"
    source = name + ".src"
    with shmdict.open(source, shmdict.Counter(), capacity=100_000) as src:
        for k in range(KEYS):
            src.add(("old", k), 3 * k + 1)
        src.add("only-in-snapshot", 77)
        shmdict.save(src, path)
    shmdict.unlink(source)
    table = shmdict.open(name, shmdict.Counter(), capacity=100_000)
    for k in range(KEYS):
        table.add(("old", k), 10)
    stop, counts, procs = _start_workers(name)
    try:
        proc = cli("load", str(path), "--name", name, "--merge")
        assert proc.returncode == 0, proc.stderr
    finally:
        _stop(stop, procs)
    total_adds = sum(a + n for a, n in counts.values())
    items = dict(table.items())
    saved_total = sum(3 * k + 1 for k in range(KEYS)) + 77
    assert sum(items.values()) == 10 * KEYS + total_adds + saved_total
    assert items["only-in-snapshot"] == 77
    # Per key: the old keys got exactly their saved value on top of the adds.
    worker_adds = {k: 0 for k in range(KEYS)}
    for w, (adds, _) in counts.items():
        for i in range(adds):
            worker_adds[(i * 7 + w) % KEYS] += 1
    for k in range(KEYS):
        assert items[("old", k)] == 10 + worker_adds[k] + 3 * k + 1
    table.close()


# ------------------------------------------------------ bounded waits
def _hold_stripe(name, stripe, conn):
    table = shmdict.open(name, shmdict.Counter(), capacity=100, create=False)
    table._stripes.acquire(stripe)
    conn.send("held")
    conn.recv()                 # until told (or killed)
    table._stripes.release(stripe)


def test_save_gives_up_on_a_stripe_a_live_process_keeps(name, tmp_path):
    path = tmp_path / "stuck.snap"
    path.write_bytes(b"the previous snapshot")
    table = shmdict.open(name, shmdict.Counter(), capacity=100)
    table.add("a", 1)
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    holder = ctx.Process(target=_hold_stripe, args=(name, 5, child))
    holder.start()
    try:
        assert parent.recv() == "held"
        with pytest.raises(shmdict.SnapshotError, match=f"stripe 5 is held by live pid "
                                                        f"{holder.pid}"):
            shmdict.save(table, path, timeout=0.5)
        # Nothing half-written, no temporary file, and our stripes released.
        assert path.read_bytes() == b"the previous snapshot"
        assert os.listdir(tmp_path) == ["stuck.snap"]
        rows = stripe_table(table)
        assert [r["stripe"] for r in rows if r["holder"] is not None] == [5]
        proc = cli("save", name, str(path), "--timeout", "0.3")
        assert proc.returncode == 1 and "stripe 5" in proc.stderr
        parent.send("go")
        holder.join(30)
        assert shmdict.save(table, path)["count"] == 1
    finally:
        if holder.is_alive():
            holder.kill()
        holder.join()
        table.close()


_SAVES_UNDER_SIGNALS = """
import json, random, signal, sys, time
import shmdict
name, path = sys.argv[1], sys.argv[2]

class Interrupted(Exception):
    pass

armed = False

def interrupt(signum, frame):
    # Raises once per arming, so that it lands inside a save, never in the
    # loop's own bookkeeping.
    global armed
    if armed:
        armed = False
        raise Interrupted

table = shmdict.open(name, shmdict.Counter(), capacity=2000, create=False, stall_timeout=3)
counts = {"interrupted": 0, "saved": 0, "errors": []}
signal.signal(signal.SIGALRM, interrupt)
started = time.perf_counter()
shmdict.save(table, path, timeout=1)
one_save = time.perf_counter() - started
rng = random.Random(int(sys.argv[3]))
end = time.monotonic() + 8
while time.monotonic() < end and counts["interrupted"] < 1500:
    try:
        armed = True
        signal.setitimer(signal.ITIMER_REAL, rng.uniform(1e-6, one_save))
        shmdict.save(table, path, timeout=1)
        armed = False
        counts["saved"] += 1
    except Interrupted:
        counts["interrupted"] += 1
    except shmdict.ShmDictError as exc:
        armed = False
        counts["errors"].append(str(exc))
signal.setitimer(signal.ITIMER_REAL, 0)
counts["takeovers"] = table._stripes.takeovers
print(json.dumps(counts))
"""


def test_a_signal_handler_raising_during_saves_leaves_no_stripe_taken(name, tmp_path):
    """A SIGALRM handler that raises, at a random instant of each of hundreds
    of saves (in a fresh interpreter, which reports what it saw).  The walk used to
    take each stripe from Python (a timed semaphore wait, then the core's
    post-wait step, then a list append before the ``finally`` that
    releases): an exception landing between those left a stripe taken,
    which the next save found held by its own process, or got back only by
    a stall-timeout takeover.  Now the core takes and releases them all."""
    table = shmdict.open(name, shmdict.Counter(), capacity=2000)
    for i in range(500):
        table.add(f"k{i}", i)
    seed = random.randrange(1 << 30)
    proc = subprocess.run([sys.executable, "-c", _SAVES_UNDER_SIGNALS, name,
                           str(tmp_path / "t.snap"), str(seed)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = json.loads(proc.stdout.splitlines()[-1])
    assert counts["interrupted"] > 50, (seed, counts)
    assert counts["errors"] == [] and counts["takeovers"] == 0, (seed, counts)
    rows = stripe_table(table)
    assert [r["stripe"] for r in rows if r["holder"] is not None] == []
    assert all(sem.value == 1 for sem in table._stripes.semaphores)
    table.add("after", 1)                               # inserts go on
    table.close()


def test_save_takes_over_a_stripe_of_a_dead_holder(name, tmp_path):
    table = shmdict.open(name, shmdict.Counter(), capacity=100)
    table.add("a", 1)
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    holder = ctx.Process(target=_hold_stripe, args=(name, 3, child))
    holder.start()
    assert parent.recv() == "held"
    holder.kill()
    holder.join()
    assert shmdict.save(table, tmp_path / "s.snap", timeout=5)["count"] == 1
    assert all(s["holder"] is None for s in stripe_table(table))
    table.close()


def test_cli_save_and_load(name, tmp_path):
    path = tmp_path / "cli.snap"
    with shmdict.open(name, shmdict.Counter(), capacity=10) as table:
        table.add(("x", 1), 41)
    proc = cli("save", name, str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["count"] == 1
    assert cli("rm", name).returncode == 0
    proc = cli("load", str(path))
    assert proc.returncode == 0, proc.stderr
    assert f"loaded as {name}" in proc.stdout
    with shmdict.attach(name) as table:
        assert table.read(("x", 1)) == (41, True)
    assert cli("load", str(path)).returncode == 1                 # exists
    assert cli("load", str(tmp_path / "missing.snap")).returncode == 2
    assert cli("save", name + ".nope", str(path)).returncode == 2
    assert cli("load", str(path), "--replace", "--merge").returncode == 2


def test_redis_table_saved_from_items_and_loaded_back(name, tmp_path, redis_url):
    path = tmp_path / "redis.snap"
    remote = shmdict.open(name, shmdict.Counter(), capacity=100, backend=redis_url)
    try:
        for i, key in enumerate(AWKWARD[:6]):
            remote.add(key, i + 1)
        shmdict.save(remote, path)
        with shmdict.load(path) as local:             # into shared memory
            assert dict(local.items()) == dict(remote.items())
        with shmdict.load(path, name=name + ".r", backend=redis_url) as back:
            assert dict(back.items()) == dict(remote.items())
            with pytest.raises(shmdict.SnapshotError):
                shmdict.load(path, name=name + ".r", backend=redis_url)
        shmdict.unlink(name + ".r", backend=redis_url)
    finally:
        remote.unlink()


def test_a_grown_table_loads_with_its_max_capacity(name, tmp_path):
    """A table that grew past its capacity saves its max_capacity, and loads
    back whole (it used to be recreated at its first tier's capacity and
    fail with TableFull)."""
    table = shmdict.open(name, shmdict.Counter(), capacity=10, max_capacity=1000)
    for i in range(35):
        table.add(i, i)
    path = tmp_path / "grown.snap"
    shmdict.save(table, path)
    table.unlink()
    loaded = shmdict.load(path)
    try:
        assert loaded.max_capacity == 1000 and loaded.capacity == 10
        assert dict(loaded.items()) == {i: i for i in range(35)}
        assert loaded.check()
    finally:
        loaded.unlink()
