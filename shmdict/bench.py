"""``shmdict bench``: a quick benchmark of the core, in a few seconds.

It measures the hot verbs of a Counter table next to a plain ``dict``
increment measured in the same run::

    python -m shmdict bench            # or: shmdict bench --repeats 7

Every figure is the median of several repeats (:mod:`timeit` sizes and times
them), in nanoseconds per operation.  The fuller benchmarks, against the
peers a user would pick instead, are the scripts in ``benchmarks/``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import timeit
from itertools import islice
from typing import Any, Callable, List, Optional, Sequence

from . import api
from .layouts import Counter


def _median_ns(op: Callable[[], Any], repeats: int, budget: float) -> float:
    """Median nanoseconds per call of ``op``: ``timeit`` sized to ``budget`` s a repeat."""
    timer = timeit.Timer(op)
    number, took = timer.autorange()
    number = max(1, int(number * budget / max(took, 1e-9)))
    return statistics.median(timer.repeat(repeats, number)) / number * 1e9


def _cycling(keys: Sequence[Any], fn: Callable[[Any], Any]) -> Callable[[], Any]:
    """A call of ``fn`` on the next of ``keys`` each time (round and round)."""
    position = [0]

    def op() -> Any:
        i = position[0]
        position[0] = i + 1 if i + 1 < len(keys) else 0
        return fn(keys[i])
    return op


def main(argv: Optional[List[str]] = None) -> int:
    """The ``shmdict bench`` verb: a quick benchmark of a Counter table."""
    parser = argparse.ArgumentParser(prog="shmdict bench",
                                     description="Quick benchmark of shmdict's core verbs "
                                                 "next to a plain dict increment.")
    parser.add_argument("--keys", type=int, default=10_000,
                        help="keys in the many-keys and insert runs (default 10000)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per figure (median)")
    parser.add_argument("--budget", type=float, default=0.1,
                        help="seconds per repeat (default 0.1)")
    args = parser.parse_args(argv)
    if args.keys < 1 or args.repeats < 1 or args.budget <= 0:
        parser.error("--keys, --repeats and --budget must be positive")

    name = f"bench.{os.getpid()}"
    keys = [f"key:{i}" for i in range(args.keys)]
    table = api.open(name, Counter(), capacity=2 * args.keys + 1)
    try:
        plain: dict = {"k": 0}
        plain_many = dict.fromkeys(keys, 0)

        def dict_add() -> None:
            plain["k"] += 1

        def dict_add_many(key: Any) -> None:
            plain_many[key] += 1

        add, read = table.add, table.read
        for key in keys:
            add(key)
        runs = [
            ("dict increment, 1 key (the floor)", dict_add),
            ("add, existing key (1 key)", lambda: add("k")),
            (f"dict increment, {args.keys:,} keys", _cycling(keys, dict_add_many)),
            (f"add, existing key ({args.keys:,} keys)", _cycling(keys, add)),
            (f"read ({args.keys:,} keys)", _cycling(keys, read)),
        ]
        results = [(label, _median_ns(op, args.repeats, args.budget)) for label, op in runs]
        # Inserts consume fresh keys: split them between the repeats.
        fresh = iter([f"new:{i}" for i in range(args.keys)])
        per_repeat = max(1, args.keys // args.repeats)
        timer = timeit.Timer(lambda: [add(key) for key in islice(fresh, per_repeat)])
        inserts = statistics.median(timer.repeat(args.repeats, 1)) / per_repeat * 1e9
        results.append(("insert of a new key (add)", inserts))
        floor = results[0][1]
        print(f"shmdict bench: median of {args.repeats} repeats, "
              f"ratio to a plain dict increment measured in this run\n")
        width = max(len(label) for label, _ in results) + 2
        print(f"{'operation':<{width}}{'ns/op':>12}{'x dict':>10}")
        for label, ns in results:
            print(f"{label:<{width}}{ns:>12,.0f}{ns / floor:>10.1f}")
        expected = 1 + args.keys + min(args.keys, per_repeat * args.repeats)
        if len(table) != expected:    # "k", the keys, the fresh keys inserted
            print(f"\nERROR: the table holds {len(table)} keys, expected {expected}",
                  file=sys.stderr)
            return 1
        return 0
    finally:
        table.unlink()


if __name__ == "__main__":
    sys.exit(main())
