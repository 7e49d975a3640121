"""Benchmark of the operator tools: ``shmdict save`` / ``load`` and ``shmdict top``.

Prints, from one run, medians of several repeats on a Counter table of
``--keys`` keys (with 2-element tuple keys):

* ``save``: the whole save (walk + encode + write + fsync), and the part of it
  during which inserts and deletes wait (every stripe held: the walk);
* ``load``: read + verify the checksum + create the table + fill it;
* one ``top`` sample of the table (stats, the sum of the values, the lock and
  stripe words, one scan of ``/proc/*/maps``);
* next to a plain ``pickle.dump`` of ``dict(table.items())`` to a file, the
  floor a user would write by hand (without consistency or a checksum).

Run::

    .venv/bin/python benchmarks/bench_tools.py             # a few seconds
    .venv/bin/python benchmarks/bench_tools.py --keys 1000000
"""
from __future__ import annotations

import argparse
import os
import pickle
import statistics
import sys
import tempfile
import time
from typing import Callable, List, Optional

from harness import machine_summary, markdown_table

import shmdict
from shmdict.backends.shm import snapshot as shm_snapshot
from shmdict.top import Sampler


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def held_while_saving(table: shmdict.Counter) -> float:
    """Seconds one save holds every stripe (the walk: inserts wait meanwhile)."""
    walk = shm_snapshot._walk
    spans: List[float] = []

    def timed(*args: object) -> object:
        start = time.perf_counter()
        try:
            return walk(*args)              # type: ignore[arg-type]
        finally:
            spans.append(time.perf_counter() - start)
    shm_snapshot._walk = timed               # type: ignore[assignment]
    try:
        shm_snapshot.take(table)
    finally:
        shm_snapshot._walk = walk            # type: ignore[assignment]
    return spans[0]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    name = f"bench.tools.{os.getpid()}"
    restored = name + ".loaded"
    workdir = tempfile.mkdtemp(prefix="shmdict-bench-tools-")
    path = os.path.join(workdir, "table.snap")
    table = shmdict.open(name, shmdict.Counter(), capacity=args.keys, key_size=32)
    try:
        table.add_many([(("key", i), i) for i in range(args.keys)])
        expected = sum(range(args.keys))
        save = median_seconds(lambda: shmdict.save(table, path), args.repeats)
        held = statistics.median(held_while_saving(table) for _ in range(args.repeats))
        size = os.path.getsize(path)

        def load() -> None:
            shmdict.unlink(restored)
            with shmdict.load(path, name=restored) as t:
                assert len(t) == args.keys
        loading = median_seconds(load, args.repeats)
        with shmdict.attach(restored) as t:       # conservation: the same values back
            assert sum(v for _, v in t.items()) == expected
        with Sampler([name]) as sampler:
            sampler.sample()
            sample = median_seconds(sampler.sample, args.repeats)

        def pickled() -> None:
            with open(path + ".pickle", "wb") as f:
                pickle.dump(dict(table.items()), f)
        floor = median_seconds(pickled, args.repeats)
        rows = [
            ["shmdict save (whole)", f"{save * 1e3:.1f} ms", f"{save / floor:.2f}x"],
            ["  of which inserts wait (stripes held)", f"{held * 1e3:.1f} ms",
             f"{held / floor:.2f}x"],
            ["shmdict load (verify + create + fill)", f"{loading * 1e3:.1f} ms",
             f"{loading / floor:.2f}x"],
            ["one top sample", f"{sample * 1e3:.1f} ms", f"{sample / floor:.2f}x"],
            ["pickle.dump(dict(items())) (floor)", f"{floor * 1e3:.1f} ms", "1.00x"],
        ]
        print(machine_summary())
        print(f"Counter table of {args.keys:,} keys; snapshot file {size:,} bytes; "
              f"median of {args.repeats}")
        print(markdown_table(["operation", "time", "vs pickle"], rows))
    finally:
        table.close()
        shmdict.unlink(name)
        shmdict.unlink(restored)
        for f in os.listdir(workdir):
            os.unlink(os.path.join(workdir, f))
        os.rmdir(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
