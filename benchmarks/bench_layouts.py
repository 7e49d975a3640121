"""Benchmark of the Lock and Struct layouts and nested views (issue 3).

Prints, from one run, medians of several repeats:

* uncontended Lock acquire+release (a held handle, and ``with locks[key]:``)
  next to ``threading.Lock`` (target: at most 4x) and ``multiprocessing.Lock``;
  the same for ``Lock(rw=True)`` in shared and exclusive mode;
* 2 processes contending on one key: aggregate acquire+release ops/s, with a
  mutual-exclusion check (a non-atomic increment of an unlocked shared word
  under the lock: nothing may be lost), next to ``multiprocessing.Lock``;
* ``Struct.read``, ``Struct.update``, ``Struct.set`` and ``Struct.add`` ns/op
  next to a plain dict of tuples;
* the nested view (``d.sub(first)``, one table for all) vs one table per
  first-level key: segment and semaphore memory, and add ns/op -- as the Go
  seed benchmarks its ``SharedPoolMapGenerator``.

Run::

    .venv/bin/python benchmarks/bench_layouts.py          # about a minute
"""
from __future__ import annotations

import argparse
import glob
import multiprocessing
import os
import sys
import threading
from typing import Any, Dict, List, Optional

from harness import (calibrate, calibrate_counted, loop_over, machine_summary, measure,
                     median_parallel, ns_row, results_table)

import shmdict

TARGET_LOCK_X_THREADING = 4.0
PAGE = os.sysconf("SC_PAGE_SIZE")


def table_memory(name: str) -> int:
    """Bytes of ``/dev/shm`` a table reserves: its segment and semaphores, in pages."""
    total = 0
    for path in glob.glob(f"/dev/shm/shmdict.{glob.escape(name)}") + \
            glob.glob(f"/dev/shm/sem.shmdict.{glob.escape(name)}.*"):
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            continue
        total += (size + PAGE - 1) // PAGE * PAGE
    return total


def _acquire_release(lock: Any):
    """``op(n)``: ``n`` acquire+release pairs on an object with the Lock interface."""
    acquire, release = lock.acquire, lock.release

    def op(n: int) -> None:
        for _ in range(n):
            acquire()
            release()
    return op


def _with_lock_rmw(get_lock, shared_word: Any):
    """A ``make_op`` for contended runs: ``with lock: word += 1`` (non-atomic)."""
    def make_op(index: int):
        lock = get_lock()

        def op(n: int) -> None:
            for _ in range(n):
                with lock:
                    shared_word.value += 1
        return op
    return make_op


def run(repeats: int = 5, budget: float = 0.2, first: int = 100,
        second: int = 100) -> List[Dict[str, Any]]:
    """Measure everything; one dict per figure (name, value, unit, ratio...)."""
    prefix = f"bench.layouts.{os.getpid()}"
    made: List[str] = []

    def new_table(suffix: str, layout: Any, capacity: int) -> Any:
        name = f"{prefix}.{suffix}"
        shmdict.unlink(name)
        made.append(name)
        return shmdict.open(name, layout, capacity=capacity)

    def timed(op) -> float:
        return measure(op, calibrate(op, budget), repeats).median

    results: List[Dict[str, Any]] = []
    try:
        # ------------------------------------------------------------ locks
        t_threading = timed(_acquire_release(threading.Lock()))
        t_mp = timed(_acquire_release(multiprocessing.Lock()))
        locks = new_table("locks", shmdict.Lock(), 1000)
        handle = locks["row:42"]
        t_handle = timed(_acquire_release(handle))

        def with_key(n: int) -> None:
            for _ in range(n):
                with locks["row:42"]:
                    pass
        t_with = timed(with_key)
        rw = new_table("rw", shmdict.Lock(rw=True), 1000)
        t_rw_read = timed(_acquire_release(rw["row:42"].read()))
        t_rw_write = timed(_acquire_release(rw["row:42"].write()))
        results += [
            ns_row("threading.Lock acquire+release (floor)", t_threading),
            ns_row("multiprocessing.Lock acquire+release", t_mp, t_threading, "x threading.Lock"),
            ns_row("Lock: handle.acquire()+release(), uncontended", t_handle, t_threading,
                "x threading.Lock", TARGET_LOCK_X_THREADING),
            ns_row("Lock: `with locks[key]:`, uncontended", t_with, t_threading,
                "x threading.Lock"),
            ns_row("Lock(rw=True): read() acquire+release", t_rw_read, t_threading,
                "x threading.Lock"),
            ns_row("Lock(rw=True): write() acquire+release", t_rw_write, t_threading,
                "x threading.Lock"),
        ]

        # 2 processes contending on one key, mutual exclusion checked.
        ctx = multiprocessing.get_context("fork")
        word = ctx.RawValue("q", 0)          # no lock of its own: the row lock guards it
        make = _with_lock_rmw(lambda: locks["row:7"], word)
        n_cont, cal = calibrate_counted(make(0), budget)
        rate1, ops1 = median_parallel(make, 1, n_cont, repeats)
        rate2, ops2 = median_parallel(make, 2, n_cont, repeats)
        lost = cal + ops1 + ops2 - word.value
        mp_lock = ctx.Lock()
        mp_word = ctx.RawValue("q", 0)
        make_mp = _with_lock_rmw(lambda: mp_lock, mp_word)
        n_mp, cal_mp = calibrate_counted(make_mp(0), budget)
        mp_rate2, mp_ops2 = median_parallel(make_mp, 2, n_mp, repeats)
        mp_lost = cal_mp + mp_ops2 - mp_word.value
        results += [
            {"name": "Lock: 1 process, acquire+rmw+release (ops/s)", "value": rate1,
             "unit": "ops/s"},
            {"name": "Lock: 2 processes contending on one key (aggregate ops/s)",
             "value": rate2, "unit": "ops/s", "ratio": rate2 / rate1,
             "ratio_of": "x one process", "lost": lost},
            {"name": "multiprocessing.Lock: 2 processes contending (aggregate ops/s)",
             "value": mp_rate2, "unit": "ops/s", "ratio": mp_rate2 / rate2,
             "ratio_of": "x shmdict Lock", "lost": mp_lost},
        ]

        # ----------------------------------------------------------- Struct
        keys = [f"client:{i}" for i in range(1000)]
        state = new_table("struct", shmdict.Struct(tokens="d", stamp="q"), len(keys))
        plain: Dict[str, tuple] = {}
        for key in keys:
            state.set(key, (10.0, 0))
            plain[key] = (10.0, 0)

        def update(key: Any) -> None:
            with state.update(key) as rec:
                rec.tokens -= 1

        def plain_update(key: Any) -> None:
            tokens, stamp = plain[key]
            plain[key] = (tokens - 1, stamp)

        t_plain_read = timed(loop_over(keys, plain.__getitem__))
        t_plain_update = timed(loop_over(keys, plain_update))
        results += [
            ns_row("plain dict of tuples: read (floor)", t_plain_read),
            ns_row("Struct.read", timed(loop_over(keys, state.read)), t_plain_read,
                "x plain dict"),
            ns_row("plain dict of tuples: read-modify-write (floor)", t_plain_update),
            ns_row("Struct.update (`with d.update(k) as rec: rec.tokens -= 1`)",
                timed(loop_over(keys, update)), t_plain_update, "x plain dict"),
            ns_row("Struct.set", timed(loop_over(keys, lambda k: state.set(k, (1.0, 2)))),
                t_plain_update, "x plain dict"),
        ]
        counts = new_table("struct2", shmdict.Struct(hits="q"), len(keys))
        results.append(ns_row("Struct.add on a q field", timed(
            loop_over(keys, lambda k: counts.add(k, "hits"))), t_plain_update, "x plain dict"))

        # -------------------------------------- nested view vs table per key
        nested = new_table("nested", shmdict.Counter(), first * second)
        per_key = [new_table(f"per{i}", shmdict.Counter(), second) for i in range(first)]
        views = [nested.sub(f"tenant:{i}") for i in range(first)]
        pairs = [(i, f"route:{j}") for j in range(second) for i in range(first)]
        for i, route in pairs:
            views[i].add(route)
            per_key[i].add(route)
        t_view = timed(loop_over(pairs, lambda p: views[p[0]].add(p[1])))
        t_tuple = timed(loop_over(pairs, lambda p: nested.add((f"tenant:{p[0]}", p[1]))))
        t_tables = timed(loop_over(pairs, lambda p: per_key[p[0]].add(p[1])))
        mem_nested = table_memory(nested.name)
        mem_tables = sum(table_memory(t.name) for t in per_key)
        counters = first * second
        results += [
            ns_row(f"one table per first-level key ({first} tables x {second} keys): add",
                t_tables),
            ns_row("nested view: `d.sub(first).add(second)`", t_view, t_tables,
                "x table per key"),
            ns_row("one table, tuple key: `d.add((first, second))`", t_tuple, t_tables,
                "x table per key"),
            {"name": f"one table per first-level key: memory per counter "
                     f"({first} segments + {first * 16} semaphores)",
             "value": mem_tables / counters, "unit": "bytes"},
            {"name": "nested view (one table): memory per counter",
             "value": mem_nested / counters, "unit": "bytes",
             "ratio": mem_nested / mem_tables, "ratio_of": "x table per key"},
        ]
        for table in [locks, rw, state, counts, nested] + per_key:
            table.close()
    finally:
        for name in made:
            shmdict.unlink(name)
    return results


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="repeats per figure (median)")
    parser.add_argument("--budget", type=float, default=0.2, help="seconds per repeat")
    parser.add_argument("--first", type=int, default=100, help="first-level keys (nested run)")
    parser.add_argument("--second", type=int, default=100,
                        help="second-level keys per first-level key")
    args = parser.parse_args(argv)
    print(f"# shmdict layouts benchmark\n\n{machine_summary()}\n")
    results = run(args.repeats, args.budget, args.first, args.second)
    print(results_table(results))
    lost = [r["lost"] for r in results if r.get("lost")]
    if lost:
        print(f"\nERROR: {lost} updates lost under a lock", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
