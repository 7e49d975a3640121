"""Benchmark of a table under churn: tombstone sweeps against none.

Lookups stop at an empty slot, so a deleted slot stays a tombstone while a
key's probe path crosses it.  Churn (insert a new key, delete an old one,
live keys steady at 3/4 of capacity) turns empty slots into tombstones;
issue 11 measured, at 200x capacity of churn, every empty slot gone, the
mean reach from 0.9 to 51.5 slots and a miss from 154 to 333 ns.  Inserts
now sweep a tier every nslots/8 deletes (``_core.c``, "Compaction").

For each table size this prints, in one run, for a fresh table at the same
load (the baseline), the same table after ROUNDS x capacity of churn with
sweeps turned off (``Core.set_auto_compact(False)``: the table as it was
before), and after the same churn with sweeps (the default):

* ``read`` of a missing key: median ns over repeats, and the mean number of
  slots a miss examines (``Core.probe_stats``: to the first empty slot or
  past reach);
* empty slots left, and the mean reach entry;
* the churn's own rate (an insert and a delete), so the sweeps' cost shows;
* the slowest insert of the churn and its 99.99th percentile: an insert
  that sweeps holds every stripe one window at a time, and every other
  insert may wait for one window;
* ``compact()`` of the unswept table: one whole sweep, of a tier with no
  empty slot left (the ring case, the longest there is).

Run::

    .venv/bin/python benchmarks/bench_churn.py                 # ~2 minutes
    .venv/bin/python benchmarks/bench_churn.py --sizes 10000:200 --repeats 3
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from typing import Dict, List, Optional, Tuple

from harness import machine_summary, markdown_table

import shmdict

MISSES = 20_000


def miss_ns(table, repeats: int) -> float:
    """Median ns of ``read`` of a key that is not there."""
    keys = [("miss", i) for i in range(MISSES)]
    read = table.read
    samples = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for key in keys:
            read(key)
        samples.append((time.perf_counter_ns() - start) / MISSES)
    return statistics.median(samples)


def churn(table, capacity: int, rounds: int, seed: int = 1) -> Tuple[float, List[int]]:
    """``rounds * capacity`` inserts of new keys, each followed by the delete
    of a random live one once 3/4 of capacity are live.  The seconds per
    insert+delete pair, and every insert's ns."""
    rng = random.Random(seed)
    live = [("k", i) for i in range(capacity * 3 // 4)]
    add, delete = table.add, table.load_and_delete
    clock = time.perf_counter_ns
    inserts: List[int] = []
    record = inserts.append
    start = time.perf_counter()
    for i in range(rounds * capacity):
        key = ("c", i)
        t0 = clock()
        add(key, 1)
        record(clock() - t0)
        live.append(key)
        j = rng.randrange(len(live))
        live[j], live[-1] = live[-1], live[j]
        delete(live.pop())
    return (time.perf_counter() - start) / (rounds * capacity), inserts


def fresh_table(name: str, capacity: int):
    shmdict.unlink(name)
    table = shmdict.open(name, shmdict.Counter(), capacity=capacity)
    table.add_many({("k", i): 1 for i in range(capacity * 3 // 4)})
    return table


def describe(table) -> Dict[str, float]:
    stats = table._core.probe_stats()
    nslots = stats["empty"] + stats["tombstone"] + stats["published"] + stats["claimed"]
    return {"empty": stats["empty"] / nslots, "reach": stats["mean_reach"],
            "miss_slots": stats["mean_miss"]}


def measure(capacity: int, rounds: int, repeats: int) -> Tuple[List[List[str]], List[str]]:
    name = f"bench.churn.{os.getpid()}"
    rows: List[List[str]] = []
    fresh = fresh_table(name, capacity)
    try:
        base = miss_ns(fresh, repeats)
        d = describe(fresh)
        rows.append([f"{capacity:,}", "fresh, same load", f"{base:.0f} ns", "1.00x",
                     f"{d['miss_slots']:.2f}", f"{d['empty']:.1%}", f"{d['reach']:.2f}",
                     "-", "-", "-"])
    finally:
        fresh.close()
    compact_ms = ""
    for sweeps in (False, True):
        table = fresh_table(name, capacity)
        try:
            table._core.set_auto_compact(sweeps)
            pair, inserts = churn(table, capacity, rounds)
            assert len(table) == capacity * 3 // 4
            ns = miss_ns(table, repeats)
            d = describe(table)
            inserts.sort()
            p9999 = inserts[min(len(inserts) - 1, len(inserts) * 9999 // 10000)]
            rows.append([f"{capacity:,}",
                         f"{rounds}x churn, {'sweeps' if sweeps else 'no sweeps (before)'}",
                         f"{ns:.0f} ns", f"{ns / base:.2f}x", f"{d['miss_slots']:.2f}",
                         f"{d['empty']:.1%}", f"{d['reach']:.2f}",
                         f"{pair * 1e9:.0f} ns", f"{p9999 / 1e3:.0f} us",
                         f"{inserts[-1] / 1e3:.0f} us"])
            if not sweeps:
                start = time.perf_counter()
                freed = table._core.compact()
                compact_ms = (f"{capacity:,}: compact() of the unswept table "
                              f"(no empty slot: one ring): {freed:,} slots freed in "
                              f"{(time.perf_counter() - start) * 1e3:.1f} ms")
            assert table.check()
        finally:
            table.close()
            shmdict.unlink(name)
    return rows, [compact_ms]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000:200,1000000:2",
                        help="comma-separated CAPACITY:ROUNDS (churn of ROUNDS x capacity)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    rows: List[List[str]] = []
    notes: List[str] = []
    for spec in args.sizes.split(","):
        capacity, rounds = (int(x) for x in spec.split(":"))
        r, n = measure(capacity, rounds, args.repeats)
        rows += r
        notes += n
    print(f"{machine_summary()}\n")
    print(markdown_table(["capacity", "table", "miss (read)", "vs fresh",
                          "slots a miss examines", "empty slots", "mean reach",
                          "insert+delete", "insert p99.99", "slowest insert"], rows))
    print()
    for note in notes:
        print(f"- {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
