"""The co-tenant campaign: a process that can write the segment scribbles on
it while others run every verb.

For each layout, worker processes loop over every verb of the table (and
re-attach now and then) while a co-tenant process writes random and crafted
words into the header's counters and admission word, the fence, the stripe
holder and live words, slot state words (every kind, huge key lengths,
claimed slots naming stripes that do not exist), value and lock words,
seqlock words, key bytes and the reach array.  What must hold:

* no worker crashes (no death by signal: a SIGSEGV or SIGBUS in the core
  would show here);
* no call takes longer than ``WATCHDOG`` seconds (each worker stamps the
  start of its current call in shared memory and the parent watches the
  stamps; a stuck worker's stack is dumped by faulthandler);
* every call returns or raises a shmdict error (``CorruptSegment`` for
  what no shmdict process writes, ``TableFull``, ``LockHeld`` ...), or
  ``OverflowError`` from an add onto a scribbled value: never a bare
  ``ValueError`` (corruption reported as the caller's mistake),
  ``SystemError``, or anything else.

Words that name a live process are written only where the core must not
trust them (stripe holders, the admission word): in a row lock's or a
record lock's word, a live owner *is* a holder to every other process, and
waiting for it is right; there the co-tenant writes dead owners and noise,
and the workers' lock waits are bounded anyway.

``SHMDICT_COTENANT_SECONDS`` sets each layout's campaign length (default 4).
"""
from __future__ import annotations

import ctypes
import faulthandler
import mmap
import multiprocessing as mp
import os
import random
import signal
import struct
import time
import warnings
from collections import Counter as Tally
from typing import Any, Callable, Dict, List

import pytest

import shmdict
from shmdict.backends.shm import _core

SECONDS = float(os.environ.get("SHMDICT_COTENANT_SECONDS", "4"))
WORKERS = 2
#: SHMDICT_COTENANT_DETAIL=1 tallies exceptions by message too.
DETAIL = bool(os.environ.get("SHMDICT_COTENANT_DETAIL"))
#: A call slower than this is a hang.  The longest legitimate wait is a
#: stall-timeout takeover of a stripe or of the admission word (2 s by
#: default) behind a word the co-tenant keeps rewriting.
WATCHDOG = 15.0
CAPACITY = 64
KEY_SIZE = 32

LAYOUTS: Dict[str, Callable[[], Any]] = {
    "counter": lambda: shmdict.Counter(),
    "lock": lambda: shmdict.Lock(rw=True),
    "struct": lambda: shmdict.Struct(x="d", n="q", tag="8s"),
}

#: What a verb may raise on a scribbled table: shmdict's errors (a word that
#: no shmdict process writes is CorruptSegment), and OverflowError, which an
#: add onto a scribbled value may rightly raise.  The verbs' arguments are
#: all valid, so a ValueError or TypeError here would be corruption reported
#: as the caller's mistake.
EXPECTED = (shmdict.ShmDictError, OverflowError)


def _keys(rng: random.Random) -> Any:
    return rng.choice([f"k{rng.randrange(24)}", ("t", rng.randrange(8)), rng.randrange(16),
                       b"b" * rng.randrange(1, 20)])


def _verbs(d: Any, kind: str, rng: random.Random) -> List[Callable[[], Any]]:
    k = _keys(rng)
    common = [lambda: k in d, lambda: len(d), lambda: d.keys(), lambda: d.items(),
              lambda: d.delete(k), lambda: d.check(), lambda: d.stats()]
    if kind == "counter":
        n = rng.randrange(-5, 50)
        return common + [
            lambda: d.add(k, n), lambda: d.read(k), lambda: d.set(k, n),
            lambda: d.exchange(k, n), lambda: d.cas(k, n, n + 1),
            lambda: d.load_and_delete(k), lambda: d[k].add(n), lambda: d[k].value,
            lambda: d.add_many({k: n, _keys(rng): 1}), lambda: d.read_many([k, _keys(rng)])]
    if kind == "lock":
        def hold(shared: bool) -> None:
            handle = d[k].read() if shared else d[k]
            if handle.acquire(timeout=0.05):
                handle.release()
        return common + [lambda: hold(False), lambda: hold(True), lambda: d[k].owner,
                         lambda: d[k].readers, lambda: d[k].locked(), lambda: d.load(k)]

    def update() -> None:
        with d.update(k) as rec:
            rec.n += 1
    record = (rng.random(), rng.randrange(100), b"abc")
    return common + [lambda: d.set(k, record), lambda: d.read(k), update,
                     lambda: d.cas(k, d.read(k)[0], record), lambda: d.load_and_delete(k)]


def _worker(name: str, kind: str, index: int, stamps, stop, seed: int, tallies) -> None:
    """Run random verbs until ``stop``; stamp each call's start; tally outcomes."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    warnings.simplefilter("ignore")
    rng = random.Random(seed)
    tally: Tally = Tally()
    d = shmdict.open(name, LAYOUTS[kind](), capacity=CAPACITY, key_size=KEY_SIZE)
    try:
        while not stop.is_set():
            if rng.random() < 0.01:                 # a new attach, through the header
                calls = [lambda: shmdict.open(name, LAYOUTS[kind](), capacity=CAPACITY,
                                              key_size=KEY_SIZE, create=False)]
            else:
                calls = [rng.choice(_verbs(d, kind, rng))]
            stamps[index] = time.monotonic()
            try:
                result = calls[0]()
                if isinstance(result, shmdict.backends.shm.table.Table):
                    d.close()
                    d = result
                tally["ok"] += 1
            except EXPECTED as exc:
                tally[type(exc).__name__ + (f": {str(exc)[:70]}" if DETAIL else "")] += 1
            except Exception as exc:               # anything else is a finding
                tally[f"UNEXPECTED {type(exc).__name__}: {exc}"[:200]] += 1
            stamps[index] = 0.0
    finally:
        tallies.put(dict(tally))
        try:
            d.close()
        except Exception:
            pass


def _live_ids() -> List[int]:
    """Owner ids of live processes: this one, and pid 1."""
    ids = [_core.my_id()]
    try:
        with open("/proc/1/stat") as f:
            start = int(f.read().rsplit(")", 1)[1].split()[19])
        ids.append(1 | (start & 0xFFFFFFFF) << 32)
    except (OSError, ValueError, IndexError):
        pass
    return ids


def _cotenant(name: str, kind: str, stop, seed: int, writes) -> None:
    """Scribble on the segment until ``stop``."""
    rng = random.Random(seed)
    path = f"/dev/shm/shmdict.{name}"
    field = {k: v[0] for k, v in _core.HEADER_FIELDS.items()}
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        mm = mmap.mmap(f.fileno(), size)

        def header(name_: str) -> int:
            return struct.unpack_from("<Q", mm, field[name_])[0]
        nslots, slot_size, key_size = header("nslots"), header("slot_size"), header("key_size")
        nstripes, stripes, data = header("nstripes"), header("stripes_offset"), header("data_offset")
        extra_at = _core.SLOT_HEADER + (key_size + 7) // 8 * 8
        reach = data + nslots * slot_size
        live = _live_ids()
        dead = [rng.randrange(1 << 22, 1 << 30) | rng.randrange(1 << 32) << 32 for _ in range(8)]

        def noise() -> int:
            return rng.choice([0, 1, 2, 3, (1 << 64) - 1, 1 << 63, rng.randrange(1 << 64),
                               rng.randrange(1 << 64) | 1])

        def state_word() -> int:
            kind_ = rng.randrange(4)
            gen = rng.randrange(_core.GEN_MASK + 1)
            klen = rng.choice([0, 1, key_size, key_size + 1, _core.KLEN_MASK])
            high = rng.choice([rng.randrange(1 << 32), nstripes, nstripes + 7, (1 << 32) - 1])
            return (kind_ | gen << _core.GEN_SHIFT | klen << _core.KLEN_SHIFT
                    | high << _core.TAG_SHIFT)

        def slot(i: int) -> int:
            return data + (i % nslots) * slot_size

        targets = [
            ("live", lambda: (field["live"], rng.choice([noise(), -5 & (1 << 64) - 1,
                                                          CAPACITY, 10 ** 9]))),
            ("tombstones", lambda: (field["tombstones"], noise())),
            ("admit", lambda: (field["admit"], rng.choice(live + dead + [noise()]))),
            ("fence", lambda: (field["fence"], noise())),
            ("stripe holder", lambda: (stripes + rng.randrange(nstripes) * _core.STRIPE_SIZE,
                                       rng.choice(live + dead + [noise()]))),
            ("stripe live", lambda: (stripes + rng.randrange(nstripes) * _core.STRIPE_SIZE + 8,
                                     rng.choice([noise(), CAPACITY + 1, -1 & (1 << 64) - 1]))),
            ("slot state", lambda: (slot(rng.randrange(nslots)), state_word())),
            ("value/lock word", lambda: (slot(rng.randrange(nslots)) + 8,
                                         rng.choice(dead + [noise(), _core.WAITERS_BIT,
                                                            dead[0] | _core.WAITERS_BIT]))),
            ("key bytes", lambda: (slot(rng.randrange(nslots)) + _core.SLOT_HEADER
                                   + rng.randrange(0, max(1, key_size - 8)) // 8 * 8, noise())),
        ]
        if kind != "counter":                       # rw reader cells, seqlock words
            targets.append(("extra/seqlock word", lambda: (
                slot(rng.randrange(nslots)) + extra_at + 8 * rng.randrange(2),
                rng.choice(dead + [noise(), rng.randrange(1 << 20) * 2 + 1]))))
        tally: Tally = Tally()
        while not stop.is_set():
            for _ in range(rng.randrange(1, 4)):
                what, make = rng.choice(targets)
                at, value = make()
                if at + 8 <= size:
                    struct.pack_into("<Q", mm, at, value & (1 << 64) - 1)
                    tally[what] += 1
            if rng.random() < 0.2 and reach + 2 * nslots <= size:
                struct.pack_into("<H", mm, reach + 2 * rng.randrange(nslots),
                                 rng.choice([0, 1, 0xFFFF, rng.randrange(1 << 16)]))
                tally["reach"] += 1
            time.sleep(rng.choice([0, 0.0005, 0.002]))
        mm.close()
    writes.put(dict(tally))


@pytest.mark.parametrize("kind", sorted(LAYOUTS))
def test_a_cotenant_scribbling_on_the_segment_crashes_and_hangs_nothing(name, kind):
    seed = int(os.environ.get("SHMDICT_COTENANT_SEED", random.randrange(1 << 30)))
    print(f"\ncotenant {kind}: seed {seed} (SHMDICT_COTENANT_SEED replays it)")
    table = shmdict.open(name, LAYOUTS[kind](), capacity=CAPACITY, key_size=KEY_SIZE)
    for i in range(20):
        table.get(f"k{i}")                          # some keys to scribble on
    table.close()
    ctx = mp.get_context("fork")
    stop = ctx.Event()
    stamps = ctx.Array(ctypes.c_double, WORKERS, lock=False)
    tallies, writes = ctx.Queue(), ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(name, kind, i, stamps, stop, seed + i, tallies))
               for i in range(WORKERS)]
    cotenant = ctx.Process(target=_cotenant, args=(name, kind, stop, seed, writes))
    for p in workers + [cotenant]:
        p.start()
    hung = None
    try:
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline and hung is None:
            time.sleep(0.1)
            now = time.monotonic()
            for i, started in enumerate(stamps):
                if started and now - started > WATCHDOG:
                    hung = i
            if any(p.exitcode is not None for p in workers):
                break
        stop.set()
        # The workers finish their current call: bounded by the watchdog too.
        finish_by = time.monotonic() + WATCHDOG
        while any(p.is_alive() for p in workers) and time.monotonic() < finish_by:
            time.sleep(0.1)
        for i, p in enumerate(workers):
            if p.is_alive():
                hung = i
        if hung is not None:
            os.kill(workers[hung].pid, signal.SIGUSR1)      # its stack, to stderr
            time.sleep(1)
        crashed = [p.exitcode for p in workers if p.exitcode is not None and p.exitcode < 0]
        outcomes: Tally = Tally()
        if hung is None:
            for _ in workers:
                outcomes.update(tallies.get(timeout=30))
        scribbles = writes.get(timeout=30)
        cotenant.join(30)
    finally:
        stop.set()
        for p in workers + [cotenant]:
            if p.is_alive():
                p.kill()
            p.join(10)
        shmdict.unlink(name)
    assert hung is None, f"worker {hung} did not return from a call within {WATCHDOG}s"
    assert not crashed, f"a worker died of signal(s) {[-c for c in crashed]}"
    assert [p.exitcode for p in workers] == [0] * WORKERS
    unexpected = {k: v for k, v in outcomes.items() if k.startswith("UNEXPECTED")}
    print(f"cotenant {kind}: {sum(scribbles.values())} words written {dict(scribbles)}; "
          f"{sum(outcomes.values())} calls: {dict(outcomes)}")
    assert not unexpected, unexpected
    assert outcomes["ok"] > 0 and sum(scribbles.values()) > 100
