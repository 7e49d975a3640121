"""Chaos: SIGKILL a worker at a random moment while others hammer the same tables.

Every round forks ``WORKERS`` processes onto one Counter table (adds that
insert keys, ``load_and_delete`` drains, inserts and deletes of scratch keys,
reads) and one Lock table (row locks guarding a non-atomic read-then-set of a
counter, plus lock keys created and deleted), SIGKILLs one of them at a random
moment, lets the others go on through whatever it left behind (held stripes,
claimed slots, held row locks, the admission lock), then stops them.  After
every round:

* every surviving worker finished its loop and exited 0;
* ``check()`` passes (after taking over and repairing what the dead worker held);
* conservation holds for every call that returned.

The books: each worker keeps a journal in an anonymous shared array (not in
the table under test): the sum of amounts whose ``add`` returned, the sum of
values its ``load_and_delete`` calls returned, the number of guarded
increments it completed, and the one call it has in flight (kind and
amount), written before the call and cleared after its result is booked.  A
killed worker's in-flight call may have landed or not, so a round checks

* nothing in flight, or a guarded increment: the table's total moved by
  exactly added - drained;
* an ``add`` of ``a`` in flight: by that, or that plus ``a``;
* a drain in flight: by that, or less (the drained value vanished with the
  worker; its amount is unknowable, only its sign);

and the guarded counters moved by exactly the completed guarded increments
(or one more, when the victim died inside its critical section).  Lost
updates under a row lock, or lost or doubled adds, break the equations.

``SHMDICT_CHAOS_ROUNDS`` sets the number of rounds (default 200).
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import random
import signal
import time
import warnings
from dataclasses import dataclass, field
from typing import Dict

import shmdict

CTX = multiprocessing.get_context("fork")
ROUNDS = int(os.environ.get("SHMDICT_CHAOS_ROUNDS", "200"))
WORKERS = 4
MAIN_KEYS = 24
LOCK_KEYS = 4
CAPACITY = 256
#: Short recovery settings, so rounds that hit a dead holder stay quick.
POLL, STALL = 0.05, 0.5

# Journal words per worker.
(J_ADDED, J_DRAINED, J_GUARDED, J_KIND, J_AMOUNT, J_OPS, J_READY, J_FINISHED, J_RECOVERED,
 J_TAKEOVERS) = range(10)
JOURNAL_WORDS = 10
KIND_NONE, KIND_ADD, KIND_DRAIN, KIND_GUARD = 0, 1, 2, 3


def _open(names):
    counters = shmdict.open(names[0], shmdict.Counter(), capacity=CAPACITY, create=False,
                            stripe_poll=POLL, stall_timeout=STALL)
    locks = shmdict.open(names[1], shmdict.Lock(), capacity=CAPACITY, create=False,
                         stripe_poll=POLL, stall_timeout=STALL)
    return counters, locks


def _worker(names, journal, base: int, stop, seed: int) -> None:
    """Hammer both tables until ``stop`` is set, booking every completed call."""
    warnings.simplefilter("ignore")          # OwnerDiedWarning after a kill
    rng = random.Random(seed)
    counters, locks = _open(names)
    j = journal
    j[base + J_READY] = 1
    ops = 0
    while not stop.value:
        r = rng.random()
        key = rng.randrange(MAIN_KEYS)
        if r < 0.30:                         # add: inserts the key when missing
            amount = rng.randint(1, 9)
            j[base + J_AMOUNT] = amount
            j[base + J_KIND] = KIND_ADD
            counters.add(key, amount)
            j[base + J_ADDED] += amount
            j[base + J_KIND] = KIND_NONE
        elif r < 0.50:                       # drain: load_and_delete (a delete)
            j[base + J_KIND] = KIND_DRAIN
            value, _ = counters.load_and_delete(key)
            j[base + J_DRAINED] += value
            j[base + J_KIND] = KIND_NONE
        elif r < 0.72:                       # scratch: an insert, then a delete
            scratch = ("scratch", rng.randrange(64))
            counters.add(scratch)
            counters.delete(scratch)
        elif r < 0.86:                       # a row lock guarding read-then-set
            lk = rng.randrange(LOCK_KEYS)
            handle = locks[lk]
            with handle:
                if handle.recovered:
                    j[base + J_RECOVERED] += 1
                j[base + J_KIND] = KIND_GUARD
                g, _ = counters.read(("guarded", lk))
                counters.set(("guarded", lk), g + 1)
                j[base + J_GUARDED] += 1
                j[base + J_KIND] = KIND_NONE
        elif r < 0.92:                       # lock keys created and deleted
            tmp = ("tmp", rng.randrange(8))
            if rng.random() < 0.5:
                locks.get(tmp)
            else:
                try:
                    locks.delete(tmp)
                except shmdict.LockHeld:
                    pass
        else:                                # readers
            counters.read(key)
            _ = key in counters
            len(counters)
        ops += 1
        j[base + J_OPS] = ops
    j[base + J_TAKEOVERS] = counters._stripes.takeovers + locks._stripes.takeovers
    j[base + J_FINISHED] = 1
    counters.close()
    locks.close()


def main_total(table) -> int:
    return sum(table.read(k)[0] for k in range(MAIN_KEYS))


def guarded_total(table) -> int:
    return sum(table.read(("guarded", k))[0] for k in range(LOCK_KEYS))


@dataclass
class Figures:
    rounds: int = 0
    kills: int = 0
    ops: int = 0
    in_flight: Dict[str, int] = field(default_factory=dict)
    add_landed: int = 0
    drain_lost: int = 0
    guard_landed: int = 0
    repairs: int = 0
    takeovers: int = 0
    lock_recoveries: int = 0

    def line(self) -> str:
        return (f"chaos: {self.rounds} rounds, {self.kills} SIGKILLs, {self.ops:,} operations; "
                f"victim's call in flight: {self.in_flight}; in-flight adds that landed "
                f"{self.add_landed}, drains whose value left with the victim "
                f"{self.drain_lost}, guarded sets that landed {self.guard_landed}; "
                f"stripes taken over from the dead by survivors {self.takeovers}, "
                f"by check {self.repairs}; row locks inherited "
                f"{self.lock_recoveries}")


def run_round(names, counters, locks, rng: random.Random, figures: Figures) -> None:
    journal = multiprocessing.RawArray(ctypes.c_int64, WORKERS * JOURNAL_WORDS)
    stop = multiprocessing.RawValue(ctypes.c_int64, 0)
    main_before = main_total(counters)
    guarded_before = guarded_total(counters)
    workers = [CTX.Process(target=_worker,
                           args=(names, journal, w * JOURNAL_WORDS, stop, rng.getrandbits(32)))
               for w in range(WORKERS)]
    for w in workers:
        w.start()
    try:
        deadline = time.monotonic() + 30
        while not all(journal[w * JOURNAL_WORDS + J_READY] for w in range(WORKERS)):
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.15))
        victim = rng.randrange(WORKERS)
        os.kill(workers[victim].pid, signal.SIGKILL)
        time.sleep(0.05)                      # survivors run through the debris
        stop.value = 1
        for i, w in enumerate(workers):
            w.join(60)
            assert not w.is_alive(), f"worker {i} hung after the kill"
            if i == victim:
                assert w.exitcode == -signal.SIGKILL
            else:
                assert w.exitcode == 0, f"surviving worker {i} failed ({w.exitcode})"
                assert journal[i * JOURNAL_WORDS + J_FINISHED] == 1
    finally:
        for w in workers:
            if w.is_alive():
                w.kill()
                w.join()

    report = counters.check()
    assert report, str(report)
    lock_report = locks.check()
    assert lock_report, str(lock_report)
    figures.repairs += sum("stripe" in r for r in report.repaired + lock_report.repaired)

    def total(word: int) -> int:
        return sum(journal[w * JOURNAL_WORDS + word] for w in range(WORKERS))

    vbase = victim * JOURNAL_WORDS
    kind, amount = journal[vbase + J_KIND], journal[vbase + J_AMOUNT]
    kind_name = {KIND_NONE: "none", KIND_ADD: "add", KIND_DRAIN: "drain",
                 KIND_GUARD: "guarded"}[kind]
    figures.in_flight[kind_name] = figures.in_flight.get(kind_name, 0) + 1

    diff = main_total(counters) - (main_before + total(J_ADDED) - total(J_DRAINED))
    if kind == KIND_ADD:
        assert diff in (0, amount), f"main total off by {diff} (in-flight add of {amount})"
        figures.add_landed += diff == amount
    elif kind == KIND_DRAIN:
        assert diff <= 0, f"main total off by {diff} (in-flight drain)"
        figures.drain_lost += diff < 0
    else:
        assert diff == 0, f"main total off by {diff} with no add or drain in flight"
    gdiff = guarded_total(counters) - (guarded_before + total(J_GUARDED))
    assert gdiff in ((0, 1) if kind == KIND_GUARD else (0,)), \
        f"guarded increments off by {gdiff} (a row lock let two writers in?)"
    figures.guard_landed += gdiff == 1
    # Every worker's row locks were released or inherited: none held now
    # except possibly by the dead victim, which the next acquirer inherits.
    for k in range(LOCK_KEYS):
        owner = locks.owner(k)
        assert owner in (None, workers[victim].pid)
    figures.rounds += 1
    figures.kills += 1
    figures.ops += total(J_OPS)
    figures.lock_recoveries += total(J_RECOVERED)
    figures.takeovers += total(J_TAKEOVERS)


def test_chaos_sigkill_rounds(name):
    names = (name, name + ".locks")
    counters = shmdict.open(names[0], shmdict.Counter(), capacity=CAPACITY,
                            stripe_poll=POLL, stall_timeout=STALL)
    locks = shmdict.open(names[1], shmdict.Lock(), capacity=CAPACITY,
                         stripe_poll=POLL, stall_timeout=STALL)
    seed = int(os.environ.get("SHMDICT_CHAOS_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    figures = Figures()
    start = time.monotonic()
    try:
        for _ in range(ROUNDS):
            run_round(names, counters, locks, rng, figures)
        # The tables still work for everyone after all that.
        counters.add("after", 5)
        assert counters.read("after") == (5, True)
        with locks["after"]:
            pass
        assert counters.check() and locks.check()
    finally:
        elapsed = time.monotonic() - start
        print(f"\n{figures.line()} (seed {seed}, {elapsed:.1f}s)")
        counters.close()
        locks.close()
        shmdict.unlink(names[1])
    # Every round's books balanced (asserted in run_round): no completed call lost.
    assert figures.rounds == ROUNDS and figures.kills == ROUNDS
