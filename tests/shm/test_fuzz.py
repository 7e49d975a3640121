"""Fuzzing: random bytes over a table's header, stripe table and slots.

A table is filled, closed, and corrupted through an ``mmap`` of its segment
file ``/dev/shm/shmdict.NAME``.  Then a separate Python process attaches to
it and runs every verb (and the CLI's verbs) against it, each under
``try/except Exception``: Python exceptions are fine, a crash (the process
dies of a signal: negative return code) or a hang (the timeout) is not.

``SHMDICT_FUZZ_CASES`` sets how many corrupted tables per layout (default
40); ``SHMDICT_FUZZ_SEED`` replays a run.
"""
from __future__ import annotations

import json
import mmap
import os
import random
import subprocess
import sys
import textwrap
from typing import Callable, List, Tuple

import pytest

import shmdict
from shmdict.backends.shm import _core

CASES = int(os.environ.get("SHMDICT_FUZZ_CASES", "40"))
#: Corrupted tables one child process goes through, and the seconds it may take.
BATCH = 20
BATCH_TIMEOUT = int(os.environ.get("SHMDICT_FUZZ_BATCH_TIMEOUT", "180"))
CAPACITY = 40

LAYOUTS = {
    "counter": shmdict.Counter,
    "lock": shmdict.Lock,
    "rwlock": lambda: shmdict.Lock(rw=True),
    "struct": lambda: shmdict.Struct(tokens="d", stamp="q", tag="8s"),
}

# Runs in the child: every verb on every named table, exceptions swallowed.
VERBS = textwrap.dedent('''
    import faulthandler, json, sys, warnings
    import shmdict
    # A hang shows where it hangs: dump every thread's stack before the timeout.
    faulthandler.dump_traceback_later(%(dump_after)d, exit=True)
    from shmdict import cli
    warnings.simplefilter("ignore")
    LAYOUTS = {
        "counter": shmdict.Counter, "lock": shmdict.Lock,
        "rwlock": lambda: shmdict.Lock(rw=True),
        "struct": lambda: shmdict.Struct(tokens="d", stamp="q", tag="8s"),
    }
    errors = {}

    def attempt(label, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (Exception, SystemExit) as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            return None

    def verbs(d, kind):
        keys = attempt("keys", d.keys) or []
        probe = list(keys[:3]) + ["k1", ("t", 2), b"new", 7, "fresh"]
        attempt("len", len, d)
        attempt("items", d.items)
        attempt("values", d.values)
        attempt("repr", repr, d)
        attempt("stats", d.stats)
        for k in probe:
            attempt("in", lambda: k in d)
            attempt("get", d.get, k)
            attempt("load", d.load, k)
            if kind == "counter":
                attempt("add", d.add, k, 3)
                attempt("read", d.read, k)
                attempt("set", d.set, k, 5)
                attempt("cas", d.cas, k, 5, 6)
                attempt("cas_missing", d.cas, ("cas", repr(k)), 0, 1, set_on_not_exists=True)
                attempt("exchange", d.exchange, k, 1)
                attempt("add_float", d.add_float, k, 0.5)
                attempt("set_float", d.set_float, k, -2.25)
                attempt("handle", lambda: d[k].value)
                attempt("total", d.total)
            elif kind in ("lock", "rwlock"):
                def lock_cycle():
                    h = d[k]
                    if h.acquire(timeout=0.2):
                        h.locked(), h.owner
                        h.release()
                    if kind == "rwlock":
                        r = h.read()
                        if r.acquire(timeout=0.2):
                            r.release()
                        w = h.write()
                        if w.acquire(timeout=0.2):
                            w.release()
                attempt("lock", lock_cycle)
                attempt("owner", d.owner, k)
            else:
                attempt("read", d.read, k)
                attempt("set", d.set, k, (1.5, 2, b"x"))
                attempt("cas", d.cas, k, (1.5, 2, b"x"), (2.5, 3, b"y"))
                attempt("add", d.add, k, "stamp", 4)
                def update():
                    with d.update(k) as rec:
                        rec.tokens += 1
                attempt("update", update)
            attempt("load_and_delete", d.load_and_delete, k)
            attempt("delete", d.delete, k)
        attempt("sub", lambda: d.sub(("t",)).keys())
        attempt("range", d.range, lambda k, v: True)
        attempt("check", lambda: str(d.check()))

    import time
    for name, kind in json.loads(sys.argv[1]):
        started = time.monotonic()
        print("start", name, flush=True)
        d = attempt("attach", shmdict.attach, name, stall_timeout=0.3, stripe_poll=0.02)
        if d is not None:
            verbs(d, kind)
            attempt("close", d.close)
        d = attempt("open", shmdict.open, name, LAYOUTS[kind](), capacity=%(capacity)d,
                    create=False, stall_timeout=0.3, stripe_poll=0.02)
        if d is not None:
            attempt("verbs-again", verbs, d, kind)
            attempt("close", d.close)
        for argv in (["stat", name], ["stat", name, "--json"], ["dump", name],
                     ["dump", name, "--json"], ["check", name], ["check", name, "--json"]):
            attempt("cli", cli.main, argv)
        print("done", name, round(time.monotonic() - started, 2), flush=True)
    attempt("cli", cli.main, ["ls"])
    print("errors", json.dumps(errors), flush=True)
''') % {"capacity": CAPACITY, "dump_after": BATCH_TIMEOUT - 20}


def make_table(name: str, kind: str, rng: random.Random) -> None:
    """A table with some keys (and, for records, some values), then closed."""
    d = shmdict.open(name, LAYOUTS[kind](), capacity=CAPACITY)
    try:
        for i in range(rng.randrange(5, 30)):
            key = rng.choice([f"k{i}", ("t", i), i, f"long-key-{i}" * 3])
            if kind == "counter":
                d.add(key, rng.randrange(1, 100))
            elif kind == "struct":
                d.set(key, (rng.random(), i, b"abc"))
            else:
                d.get(key)
        for _ in range(rng.randrange(0, 5)):      # leave some tombstones
            keys = d.keys()
            if keys:
                try:
                    d.delete(rng.choice(keys))
                except shmdict.ShmDictError:
                    pass
    finally:
        d.close()


def corrupt(name: str, rng: random.Random) -> str:
    """Write random bytes into the segment; returns what was done."""
    path = f"/dev/shm/shmdict.{name}"
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        with mmap.mmap(f.fileno(), size) as mm:
            at = _core.HEADER_FIELDS["data_offset"][0]
            data_offset = int.from_bytes(mm[at:at + 8], "little")
            data_offset = data_offset if 1024 <= data_offset < size else 2048
            where = rng.choice(["header", "header-fields", "counters", "stripes",
                                "slots", "slot-words", "everywhere"])
            if where == "header":                 # anything in the first 1 KiB
                regions = [(0, 1024)]
            elif where == "header-fields":        # the geometry, keep the magic
                regions = [(8, 128)]
            elif where == "counters":             # live, tombstones, admission
                regions = [(80, 104)]
            elif where == "stripes":
                regions = [(1024, data_offset)]
            elif where in ("slots", "slot-words"):
                regions = [(data_offset, size)]
            else:
                regions = [(0, size)]
            writes = rng.randrange(1, 24)
            for _ in range(writes):
                lo, hi = rng.choice(regions)
                if where == "slot-words":         # aligned 8-byte words: states, lengths
                    at = lo + rng.randrange((hi - lo) // 8) * 8
                    length = 8
                else:
                    at = rng.randrange(lo, hi)
                    length = min(rng.choice([1, 2, 8, 16, 64]), hi - at)
                mm[at:at + length] = rng.randbytes(length)
    return f"{where} x{writes}"


def run_batch(cases: List[Tuple[str, str, str]]) -> str:
    """Run the verbs over the corrupted tables in one child process."""
    arg = json.dumps([(name, kind) for name, kind, _ in cases])
    try:
        proc = subprocess.run([sys.executable, "-c", VERBS, arg], capture_output=True,
                              text=True, timeout=BATCH_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        last = [line for line in out.splitlines() if line.startswith("start")][-1:]
        pytest.fail(f"hang: no answer within {BATCH_TIMEOUT}s; last table started: {last}; "
                    f"cases: {cases}")
    started = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("start")]
    detail = {name: (kind, how) for name, kind, how in cases}
    if "Timeout (" in proc.stderr:     # faulthandler fired: a hang, with its stack
        pytest.fail(f"hang on table {started[-1:]} {detail.get(started[-1]) if started else ''}"
                    f"\n{proc.stderr[-5000:]}")
    assert proc.returncode >= 0, (
        f"the interpreter crashed (signal {-proc.returncode}) on table {started[-1:]} "
        f"{detail.get(started[-1]) if started else ''}\n{proc.stderr[-3000:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = [line.split() for line in proc.stdout.splitlines() if line.startswith("done")]
    assert [d[1] for d in done] == [name for name, _, _ in cases]
    slowest = max(done, key=lambda d: float(d[2]))
    print(f"slowest: {detail[slowest[1]]} {slowest[2]}s")
    return proc.stdout.splitlines()[-1]


@pytest.mark.parametrize("kind", sorted(LAYOUTS))
def test_fuzzed_segments_never_crash_or_hang(name, kind):
    seed = int(os.environ.get("SHMDICT_FUZZ_SEED", random.randrange(1 << 30)))
    print(f"\nfuzz {kind}: seed {seed} (SHMDICT_FUZZ_SEED replays it)")
    rng = random.Random(f"{seed}-{kind}")
    cases = []
    try:
        for i in range(CASES):
            table = f"{name}.{i}"
            make_table(table, kind, rng)
            cases.append((table, kind, corrupt(table, rng)))
        summaries = [run_batch(cases[i:i + BATCH]) for i in range(0, len(cases), BATCH)]
        print(f"\nfuzz {kind}: {len(cases)} corrupted tables, seed {seed}: {summaries}")
    finally:
        for table, _, _ in cases:
            shmdict.unlink(table)


# --------------------------------------------------------- targeted headers
def _set(mm: mmap.mmap, offset: int, fmt_size: int, value: int) -> None:
    mm[offset:offset + fmt_size] = value.to_bytes(fmt_size, "little")


def _at(field: str) -> int:
    """Offset of a header field (the core's format.h)."""
    return _core.HEADER_FIELDS[field][0]


HEADER_DAMAGE: List[Tuple[str, Callable[[mmap.mmap], None]]] = [
    ("magic", lambda mm: _set(mm, _at("magic"), 8, 0x4242)),
    ("version", lambda mm: _set(mm, _at("version"), 4, 99)),
    ("fingerprint", lambda mm: _set(mm, _at("fingerprint"), 8, 12345)),
    ("capacity-zero", lambda mm: _set(mm, _at("capacity"), 8, 0)),
    ("capacity-huge", lambda mm: _set(mm, _at("capacity"), 8, 1 << 40)),
    ("capacity-other", lambda mm: _set(mm, _at("capacity"), 8, 4000)),
    ("slots", lambda mm: _set(mm, _at("nslots"), 8, (1 << 64) - 1)),
    ("slot-size", lambda mm: _set(mm, _at("slot_size"), 8, 8)),
    ("key-size", lambda mm: _set(mm, _at("key_size"), 8, 4000)),
    ("extra-size", lambda mm: _set(mm, _at("extra_size"), 8, 1 << 20)),
    ("stripes-zero", lambda mm: _set(mm, _at("nstripes"), 8, 0)),
    ("stripes-huge", lambda mm: _set(mm, _at("nstripes"), 8, 1 << 33)),
    ("stripes-offset", lambda mm: _set(mm, _at("stripes_offset"), 8, (1 << 64) - 64)),
    ("data-offset", lambda mm: _set(mm, _at("data_offset"), 8, 1 << 62)),
    ("spec-length", lambda mm: _set(mm, _at("spec_length"), 2, 0xFFFF)),
    ("spec-bytes", lambda mm: _set(mm, _at("spec") + 1, 8, 0x7B7B7B7B7B7B7B7B)),
]


@pytest.mark.parametrize("what,damage", HEADER_DAMAGE, ids=[w for w, _ in HEADER_DAMAGE])
def test_overwritten_header_is_corrupt_segment(name, what, damage):
    make_table(name, "counter", random.Random(what))
    with open(f"/dev/shm/shmdict.{name}", "r+b") as f:
        with mmap.mmap(f.fileno(), 0) as mm:
            damage(mm)
    with pytest.raises(shmdict.CorruptSegment):
        shmdict.attach(name)
    with pytest.raises((shmdict.CorruptSegment, shmdict.LayoutMismatch)):
        shmdict.open(name, shmdict.Counter(), capacity=CAPACITY)
    # And the CLI says so, and can remove it.
    from shmdict import cli
    assert cli.main(["check", name]) == 1
    assert cli.main(["rm", name]) == 0
    assert name not in shmdict.list_tables()


# ------------------------------------------------- garbage owner identities
STRAY_BYTES = textwrap.dedent('''
    import warnings
    import shmdict
    from shmdict.backends.shm import _core
    warnings.simplefilter("ignore")
    name = %(name)r

    def word(d, key, offset):
        slot, _, _ = d._locate(key, False)
        h = d._segment.header
        return h["data_offset"] + slot * h["slot_size"] + offset

    # One stray byte (value 1) over free owner words: "pid 1, no start time".
    locks = shmdict.open(name + ".l", shmdict.Lock(rw=True), capacity=10)
    locks.get("a"); locks.get("b")
    _core.store_u64(locks._segment.mm, word(locks, "a", 8), 1)         # writer word
    _core.store_u64(locks._segment.mm, word(locks, "b", 16 + 64), 1)   # a reader cell
    with locks["a"].write():
        pass
    with locks["b"].write():
        pass
    recs = shmdict.open(name + ".s", shmdict.Struct(n="q"), capacity=10)
    recs.set("r", (1,))
    _core.store_u64(recs._segment.mm, word(recs, "r", 8), 1)           # record lock
    recs.add("r", "n", 1)
    assert recs.read("r")[0].n == 2
    counters = shmdict.open(name + ".c", shmdict.Counter(), capacity=10)
    mm = counters._segment.mm
    _core.store_u64(mm, _core.HEADER_FIELDS["admit"][0], 1)            # admission lock
    stripe = counters._encode("new")[1] %% counters._nstripes
    h = counters._segment.header
    _core.store_u64(mm, h["stripes_offset"] + stripe * _core.STRIPE_SIZE, 1)  # holder
    counters.add("new", 3)
    assert counters.read("new") == (3, True)
    for t in (locks, recs, counters):
        t.unlink()
    print("ok")
''')


def test_stray_small_ids_are_not_live_owners(name):
    """A free owner word hit by one stray byte names "pid 1" with no start time:
    waiters must not take it for a live owner and wait forever."""
    try:
        proc = subprocess.run([sys.executable, "-c", STRAY_BYTES % {"name": name}],
                              capture_output=True, text=True, timeout=60)
    finally:
        for suffix in (".l", ".s", ".c"):
            shmdict.unlink(name + suffix)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
