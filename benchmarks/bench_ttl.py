"""Per-key expiry on shared memory: what a TTL costs.

* ``add`` on an existing (cached) key without a TTL, and with ``ttl=``
  (the deadline word's compare-and-swap and a clock read on top);
* the insert of a key whose own slot has expired (tombstoned under the
  key's stripe, then inserted anew), next to a fresh insert of a new key;
* the insert of new keys into a table full of other keys that have expired
  (the first one walks the table and reclaims them all);
* with ``--callgrind``, the instructions of a plain ``add`` on a cached key
  under valgrind's callgrind (``Core_add`` inclusive, and the whole loop of
  N adds minus a loop of 0, with PYTHONHASHSEED=0), to compare with the
  figure from before expiry existed (see the README).

    .venv/bin/python benchmarks/bench_ttl.py
    .venv/bin/python benchmarks/bench_ttl.py --callgrind     # + about a minute
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

from harness import calibrate, machine_summary, measure, ns_row, results_table

import shmdict


def _table(tag: str, capacity: int) -> Any:
    name = f"bench.ttl.{tag}.{os.getpid()}"
    shmdict.unlink(name)
    return shmdict.open(name, shmdict.Counter(), capacity=capacity)


def add_rows(repeats: int, budget: float) -> List[Dict[str, Any]]:
    d = _table("add", 100)
    try:
        add = d.add
        add("plain")
        add("expiring", ttl=3600)

        def plain(n: int) -> None:
            for _ in range(n):
                add("plain")

        def expiring(n: int) -> None:
            for _ in range(n):
                add("expiring", 1, ttl=3600)

        base = measure(plain, calibrate(plain, budget), repeats).median
        with_ttl = measure(expiring, calibrate(expiring, budget), repeats).median
        return [ns_row("add on a cached key, no TTL", base),
                ns_row("add on a cached key, ttl=3600 (moves its deadline)", with_ttl, base,
                       "x add without TTL")]
    finally:
        d.unlink()


def insert_rows(keys: int, repeats: int) -> List[Dict[str, Any]]:
    fresh, reuse, full = [], [], []
    for r in range(repeats):
        d = _table(f"fresh{r}", keys)
        names = [f"key:{i}" for i in range(keys)]
        start = time.perf_counter_ns()
        for k in names:
            d.add(k, ttl=3600)
        fresh.append((time.perf_counter_ns() - start) / keys)
        d.unlink()

        d = _table(f"reuse{r}", keys)
        for k in names:
            d.add(k, ttl=0.001)
        time.sleep(0.01)                     # every one has expired
        start = time.perf_counter_ns()
        for k in names:
            d.add(k, ttl=3600)               # its own expired slot: reclaim + insert
        reuse.append((time.perf_counter_ns() - start) / keys)
        assert d.check()
        d.unlink()

        d = _table(f"full{r}", keys)
        for k in names:
            d.add(k, ttl=0.001)
        time.sleep(0.01)
        start = time.perf_counter_ns()
        for i in range(keys):
            d.add(f"other:{i}", ttl=3600)    # a full tier: the first walks and reclaims
        full.append((time.perf_counter_ns() - start) / keys)
        d.unlink()
    med = lambda xs: sorted(xs)[len(xs) // 2]   # noqa: E731
    return [ns_row("insert of a new key with a TTL (fresh slot)", med(fresh)),
            ns_row("insert of a key whose own slot expired (reclaim + insert)", med(reuse),
                   med(fresh), "x fresh insert"),
            ns_row(f"insert into a full table of {keys:,} expired keys (amortised walk)",
                   med(full), med(fresh), "x fresh insert")]


_PLAIN_ADDS = """
import os, sys, shmdict
n = int(sys.argv[1])
name = f"bench.ttl.cg.{os.getpid()}"
shmdict.unlink(name)
t = shmdict.open(name, shmdict.Counter(), capacity=100)
add = t.add
add("k")
for _ in range(n):
    add("k")
t.unlink()
"""


def _callgrind(n: int, tmp: str) -> "tuple[int, Optional[int]]":
    out = os.path.join(tmp, f"cg.{n}")
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                           sys.executable, "-c", _PLAIN_ADDS, str(n)],
                          capture_output=True, text=True, timeout=600, env=env)
    found = re.search(r"refs:\s+([\d,]+)", proc.stderr)
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"callgrind failed: {proc.stderr[-500:]}")
    total = int(found.group(1).replace(",", ""))
    annotate = subprocess.run(["callgrind_annotate", "--inclusive=yes", out],
                              capture_output=True, text=True, timeout=120).stdout
    core_add = re.search(r"^\s*([\d,]+)\s.*:Core_add\s", annotate, re.M)
    return total, int(core_add.group(1).replace(",", "")) if core_add else None


def callgrind_rows(n: int = 200_000) -> List[Dict[str, Any]]:
    if shutil.which("valgrind") is None:
        return [{"name": "callgrind: valgrind not installed", "value": 0, "unit": "instr"}]
    with tempfile.TemporaryDirectory() as tmp:
        zero, _ = _callgrind(0, tmp)
        total, core_add = _callgrind(n, tmp)
    rows = [{"name": "plain add on a cached key, whole loop iteration, instructions",
             "value": (total - zero) / n, "unit": "instr/op"}]
    if core_add is not None:
        rows.append({"name": "plain add on a cached key, Core_add inclusive, instructions",
                     "value": core_add / (n + 1), "unit": "instr/op"})
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=20_000, help="keys per insert figure")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per figure (median)")
    parser.add_argument("--budget", type=float, default=0.2, help="seconds per repeat")
    parser.add_argument("--callgrind", action="store_true",
                        help="also count a plain add's instructions under callgrind")
    args = parser.parse_args(argv)
    print(f"# shmdict expiry benchmark\n\n{machine_summary()}\n")
    rows = add_rows(args.repeats, args.budget) + insert_rows(args.keys, args.repeats)
    if args.callgrind:
        rows += callgrind_rows()
    print(results_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
