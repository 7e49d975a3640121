"""Benchmark of the core (issue 2): a Counter table next to a plain dict.

Prints, from one run, median ns/op and the ratio to a plain-dict increment
measured in the same run, for:

* ``add`` on an existing key, with 1 key and with ``--keys`` (100k) keys;
* insert of a new key (``add`` on a key not yet in the table);
* ``read`` of an existing key;
* 2 processes adding on disjoint keys: aggregate ops/s vs one process;
* segment bytes per slot (and per key at full capacity).

Run::

    .venv/bin/python benchmarks/bench_core.py            # about a minute
    .venv/bin/python benchmarks/bench_core.py --keys 1000 --repeats 3 --budget 0.02
"""
from __future__ import annotations

import argparse
import os
import sys
from itertools import islice
from typing import Any, Dict, List, Optional

from harness import (calibrate, calibrate_counted, loop_over, machine_summary, measure,
                     median_parallel, ns_row, results_table)

import shmdict

#: Targets of issue 2.
TARGET_ADD_X_DICT = 3.0
TARGET_SCALING_2P = 1.7
TARGET_SLOT_OVER_KEY = 24


def run(keys: int = 100_000, repeats: int = 5, budget: float = 0.2,
        key_size: int = 64) -> List[Dict[str, Any]]:
    """Measure everything; one dict per figure (``name``, ``value``, ``unit``, ...)."""
    prefix = f"bench.core.{os.getpid()}"
    names = [f"{prefix}.many", f"{prefix}.one", f"{prefix}.ins", f"{prefix}.par"]
    for name in names:
        shmdict.unlink(name)
    key_list = [f"user:{i}" for i in range(keys)]
    results: List[Dict[str, Any]] = []

    def timed(op, label: str) -> float:
        n = calibrate(op, budget)
        return measure(op, n, repeats).median

    try:
        # --- the plain-dict floor, measured in the same loop shapes --------
        plain_one = {"k": 0}

        def dict_one(n: int) -> None:
            d = plain_one
            for _ in range(n):
                d["k"] += 1

        plain_many = dict.fromkeys(key_list, 0)

        def dict_many_add(key: Any) -> None:
            plain_many[key] += 1

        floor_one = timed(dict_one, "dict 1 key")
        floor_many = timed(loop_over(key_list, dict_many_add), "dict many keys")

        # --- add on an existing key -----------------------------------------
        one = shmdict.open(names[1], shmdict.Counter(), capacity=16, key_size=key_size)
        add_one = one.add
        add_one("k")

        def shm_one(n: int) -> None:
            for _ in range(n):
                add_one("k")

        many = shmdict.open(names[0], shmdict.Counter(), capacity=keys, key_size=key_size)
        for key in key_list:
            many.add(key)
        t_one = timed(shm_one, "add 1 key")
        t_many = timed(loop_over(key_list, many.add), "add many keys")
        t_read = timed(loop_over(key_list, many.read), "read")
        # The batch verbs: 1,000 keys per call, per key, next to single calls.
        batch = {key: 1 for key in key_list[:1000]}
        batch_keys = list(batch)
        add_many, read_many = many.add_many, many.read_many

        def shm_add_many(n: int) -> None:
            for _ in range(max(1, n // len(batch))):
                add_many(batch)

        def shm_read_many(n: int) -> None:
            for _ in range(max(1, n // len(batch_keys))):
                read_many(batch_keys)

        t_add_many = timed(shm_add_many, "add_many")
        t_read_many = timed(shm_read_many, "read_many")
        # A read of the plain dict, for reference (the floor for reads).
        floor_read = timed(loop_over(key_list, plain_many.get), "dict get")

        # --- insert of a new key: fresh keys, a fresh table ------------------
        per_repeat = max(1, keys // repeats)
        ins = shmdict.open(names[2], shmdict.Counter(), capacity=per_repeat * repeats + 1,
                           key_size=key_size)
        fresh = iter([f"new:{i}" for i in range(per_repeat * repeats)])
        ins_add = ins.add

        def shm_insert(n: int) -> None:
            for key in islice(fresh, n):
                ins_add(key)

        t_insert = measure(shm_insert, per_repeat, repeats).median
        plain_new: Dict[Any, int] = {}
        fresh_plain = iter([f"new:{i}" for i in range(per_repeat * repeats)])

        def dict_insert(n: int) -> None:
            d = plain_new
            for key in islice(fresh_plain, n):
                d[key] = d.get(key, 0) + 1

        floor_insert = measure(dict_insert, per_repeat, repeats).median

        results += [
            ns_row("add, existing key, 1 key", t_one, floor_one, target=TARGET_ADD_X_DICT),
            ns_row(f"add, existing key, {keys:,} keys", t_many, floor_many, target=TARGET_ADD_X_DICT),
            ns_row("insert of a new key (add)", t_insert, floor_insert),
            ns_row(f"read, {keys:,} keys", t_read, floor_many),
            {"name": "add_many of 1,000 keys, per key", "value": t_add_many, "unit": "ns/op",
             "ratio": t_add_many / t_many, "ratio_of": "x a single add"},
            {"name": "read_many of 1,000 keys, per key", "value": t_read_many, "unit": "ns/op",
             "ratio": t_read_many / t_read, "ratio_of": "x a single read"},
            {"name": f"plain dict .get, {keys:,} keys (reference)", "value": floor_read,
             "unit": "ns/op", "ratio": floor_read / floor_many, "ratio_of": "x plain dict"},
            {"name": "plain dict increment, 1 key (floor)", "value": floor_one, "unit": "ns/op"},
            {"name": f"plain dict increment, {keys:,} keys (floor)", "value": floor_many,
             "unit": "ns/op"},
        ]

        # --- 2 processes on disjoint keys vs 1 -------------------------------
        par = shmdict.open(names[3], shmdict.Counter(), capacity=16, key_size=key_size)

        def make_op(index: int):
            add = par.add
            key = f"proc:{index}"
            add(key, 0)

            def op(n: int) -> None:
                for _ in range(n):
                    add(key)
            return op

        n_par, calibration_adds = calibrate_counted(make_op(0), budget)
        n_par *= 2                                   # each worker runs ~2 budgets
        rate1, ops1 = median_parallel(make_op, 1, n_par, repeats)
        rate2, ops2 = median_parallel(make_op, 2, n_par, repeats)
        total = sum(value for _, value in par.items())
        lost = calibration_adds + ops1 + ops2 - total    # conservation: must be 0
        results.append({"name": "1 process adding (ops/s)", "value": rate1, "unit": "ops/s"})
        results.append({"name": "2 processes adding on disjoint keys (aggregate ops/s)",
                        "value": rate2, "unit": "ops/s", "ratio": rate2 / rate1,
                        "ratio_of": "x one process", "target": TARGET_SCALING_2P,
                        "met": rate2 / rate1 >= TARGET_SCALING_2P, "lost": lost})

        # --- segment bytes ---------------------------------------------------
        stats = many.stats()
        per_slot = stats["bytes"] / stats["slots"]
        results.append({"name": f"segment bytes per slot (key_size={key_size})",
                        "value": per_slot, "unit": "bytes",
                        "ratio": per_slot - key_size, "ratio_of": "bytes over key_size",
                        "target": key_size + TARGET_SLOT_OVER_KEY,
                        "met": per_slot <= key_size + TARGET_SLOT_OVER_KEY})
        results.append({"name": f"segment bytes per key at capacity {keys:,}",
                        "value": stats["bytes"] / keys, "unit": "bytes"})
        for table in (one, many, ins, par):
            table.close()
    finally:
        for name in names:
            shmdict.unlink(name)
    return results


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=100_000, help="keys in the many-keys runs")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per figure (median)")
    parser.add_argument("--budget", type=float, default=0.2, help="seconds per repeat")
    parser.add_argument("--key-size", type=int, default=64, help="the tables' key_size")
    args = parser.parse_args(argv)
    print(f"# shmdict core benchmark\n\n{machine_summary()}\n")
    results = run(args.keys, args.repeats, args.budget, args.key_size)
    print(results_table(results))
    lost = [r["lost"] for r in results if "lost" in r]
    if any(lost):
        print(f"\nERROR: {lost} updates lost in the multi-process run", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
