"""``shmdict bench``: a quick benchmark of the core, and the timing helpers
the scripts in ``benchmarks/`` share.

``main()`` measures, in a few seconds, the hot verbs of a Counter table next
to a plain ``dict`` increment measured in the same run::

    python -m shmdict bench            # or: shmdict bench --repeats 7

Every figure is the median of several repeats, in nanoseconds per operation,
each repeat timing a plain Python ``for`` loop of ``n`` calls (the loop's own
cost is included on both sides, so ratios compare like with like).

The helpers (:func:`calibrate`, :func:`measure`, :func:`run_parallel`) are
used by ``benchmarks/bench_core.py``, ``bench_layouts.py`` and ``peers.py``.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from itertools import cycle, islice
from typing import Any, Callable, Dict, List, Optional, Sequence

#: An operation under test: ``op(n)`` performs ``n`` operations.
Op = Callable[[int], Any]
#: Builds an operation inside a worker process: ``make_op(worker_index)``.
MakeOp = Callable[[int], Op]


@dataclass
class Timing:
    """The outcome of :func:`measure`: ns/op per repeat and their median."""

    n: int
    samples: List[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def ops(self) -> int:
        """Operations performed by all the timed repeats."""
        return self.n * len(self.samples)


def time_ns_per_op(op: Op, n: int) -> float:
    """Run ``op(n)`` once; nanoseconds per operation."""
    start = time.perf_counter_ns()
    op(n)
    return (time.perf_counter_ns() - start) / n


def calibrate(op: Op, budget_s: float = 0.1, max_n: int = 10_000_000,
              min_n: int = 1) -> int:
    """How many operations make one repeat of about ``budget_s`` seconds.

    Runs ``op`` on growing ``n`` (these calls count as operations too) until a
    run takes a tenth of the budget, then scales; the answer is clamped to
    ``[min_n, max_n]``.
    """
    return calibrate_counted(op, budget_s, max_n, min_n)[0]


def calibrate_counted(op: Op, budget_s: float = 0.1, max_n: int = 10_000_000,
                      min_n: int = 1) -> "tuple[int, int]":
    """:func:`calibrate`, also returning how many operations it performed."""
    n, done = 1, 0
    while True:
        start = time.perf_counter()
        op(n)
        elapsed = time.perf_counter() - start
        done += n
        if elapsed >= budget_s / 10 or n >= max_n:
            break
        n = min(n * 8, max_n)
    per_op = max(elapsed / n, 1e-9)
    return max(min_n, min(max_n, int(budget_s / per_op))), done


def measure(op: Op, n: int, repeats: int = 5) -> Timing:
    """Time ``repeats`` runs of ``op(n)``; the :class:`Timing` of ns/op."""
    timing = Timing(n)
    for _ in range(repeats):
        timing.samples.append(time_ns_per_op(op, n))
    return timing


def _parallel_worker(make_op: MakeOp, index: int, n: int, barrier: Any, results: Any) -> None:
    try:
        op = make_op(index)
        barrier.wait()
        start = time.perf_counter_ns()   # CLOCK_MONOTONIC: comparable across processes
        op(n)
        results.put((index, start, time.perf_counter_ns(), n, None))
    except BaseException as exc:   # report, so the parent never waits forever
        try:
            barrier.abort()
        except Exception:
            pass
        results.put((index, 0, 0, 0, f"{type(exc).__name__}: {exc}"))


@dataclass
class ParallelRun:
    """One run of :func:`run_parallel`."""

    processes: int
    ops: int
    seconds: float

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else float("inf")


def run_parallel(make_op: MakeOp, processes: int, n: int, timeout: float = 300.0,
                 context: Optional[Any] = None) -> ParallelRun:
    """Run ``make_op(i)(n)`` in ``processes`` real processes started together.

    The workers build their operation, meet at a barrier, then run; the
    aggregate rate is all operations over the span from the first start to
    the last finish.  ``make_op`` reaches the children by ``fork`` (closures
    are fine).  A worker that fails raises ``RuntimeError`` here.
    """
    ctx = context or multiprocessing.get_context("fork")
    barrier = ctx.Barrier(processes)
    results = ctx.Queue()
    workers = [ctx.Process(target=_parallel_worker, args=(make_op, i, n, barrier, results),
                           daemon=True) for i in range(processes)]
    for w in workers:
        w.start()
    rows = []
    try:
        for _ in range(processes):
            rows.append(results.get(timeout=timeout))
    finally:
        for w in workers:
            w.join(timeout=10)
            if w.is_alive():
                w.kill()
                w.join()
    errors = [row[4] for row in rows if row[4]]
    if errors:
        raise RuntimeError(f"benchmark worker failed: {errors[0]}")
    start = min(row[1] for row in rows)
    end = max(row[2] for row in rows)
    return ParallelRun(processes, sum(row[3] for row in rows), (end - start) / 1e9)


def median_parallel(make_op: MakeOp, processes: int, n: int, repeats: int) -> "tuple[float, int]":
    """Median aggregate ops/s of ``repeats`` :func:`run_parallel` runs, and total ops."""
    runs = [run_parallel(make_op, processes, n) for _ in range(repeats)]
    return statistics.median(r.ops_per_s for r in runs), sum(r.ops for r in runs)


def loop_over(keys: Sequence[Any], fn: Callable[[Any], Any], start: int = 0) -> Op:
    """An ``op(n)`` calling ``fn(key)`` for ``n`` keys, cycling from ``keys[start]``.

    The position carries over between calls, so successive repeats walk the
    whole key set.
    """
    it = cycle(list(keys[start:]) + list(keys[:start]))

    def op(n: int) -> None:
        for key in islice(it, n):
            fn(key)
    return op


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table (cells are ``str()``-ed; ``|`` is escaped)."""
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|")
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def ns_row(name: str, ns: float, floor: Optional[float] = None,
           ratio_of: str = "x plain dict", target: Optional[float] = None) -> Dict[str, Any]:
    """A result row of ns/op, with its ratio to ``floor`` and an "at most" target."""
    row: Dict[str, Any] = {"name": name, "value": ns, "unit": "ns/op"}
    if floor:
        row["ratio"] = ns / floor
        row["ratio_of"] = ratio_of
        if target is not None:
            row["target"] = f"<= {target:g}x"
            row["met"] = ns / floor <= target
    return row


def results_table(results: Sequence[Dict[str, Any]]) -> str:
    """Result rows (name, value, unit; optional ratio, target, met, lost) as
    a markdown table; the "updates lost" column only when a row counts them.
    A numeric target reads "at most" for bytes and "at least" otherwise."""
    with_lost = any("lost" in r for r in results)
    rows = []
    for r in results:
        value = (f"{r['value']:,.1f} bytes" if r["unit"] == "bytes"
                 else f"{r['value']:,.0f} {r['unit']}")
        ratio = f"{r['ratio']:.2f} {r['ratio_of']}" if "ratio" in r else ""
        target = r.get("target", "")
        if isinstance(target, (int, float)):
            target = f"<= {target:g} bytes" if r["unit"] == "bytes" else f">= {target:g}x"
        met = {True: "yes", False: "**no**"}.get(r.get("met"), "")
        row = [r["name"], value, ratio, target, met]
        if with_lost:
            row.append("" if "lost" not in r else
                       ("no" if r["lost"] == 0 else f"yes, {r['lost']:,}"))
        rows.append(row)
    headers = ["measurement", "median", "ratio", "target", "met"]
    return markdown_table(headers + ["updates lost"] if with_lost else headers, rows)


def machine_summary() -> str:
    """One line about this machine: CPU model, cores, load, Python, kernel."""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{cpu}, {os.cpu_count()} cores, load average {load} at start; "
            f"Python {sys.version.split()[0]}, {os.uname().sysname} {os.uname().release}")


def fmt_ns(ns: float) -> str:
    """A duration per operation, readable: ``97 ns``, ``2.3 µs``, ``1.2 ms``."""
    if ns < 1_000:
        return f"{ns:.0f} ns"
    if ns < 1_000_000:
        return f"{ns / 1_000:.1f} µs"
    return f"{ns / 1_000_000:.1f} ms"


# --------------------------------------------------------------- shmdict bench
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

    from . import api
    from .layouts import Counter

    name = f"bench.{os.getpid()}"
    keys = [f"key:{i}" for i in range(args.keys)]
    table = api.open(name, Counter(), capacity=2 * args.keys + 1)
    try:
        plain: dict = {"k": 0}
        plain_many = dict.fromkeys(keys, 0)

        def dict_add(n: int) -> None:
            d = plain
            for _ in range(n):
                d["k"] += 1

        def dict_add_many(key: Any) -> None:
            plain_many[key] += 1

        add, read = table.add, table.read
        add("k")
        for key in keys:
            add(key)

        added = [1]   # adds made to key "k", to check the final count

        def shm_add(n: int) -> None:
            added[0] += n
            for _ in range(n):
                add("k")

        fresh = iter([f"new:{i}" for i in range(args.keys)])

        def shm_insert(n: int) -> None:
            for key in islice(fresh, n):
                add(key)

        runs = [
            ("dict increment, 1 key (the floor)", dict_add),
            ("add, existing key (1 key)", shm_add),
            (f"dict increment, {args.keys:,} keys", loop_over(keys, dict_add_many)),
            (f"add, existing key ({args.keys:,} keys)", loop_over(keys, add)),
            (f"read ({args.keys:,} keys)", loop_over(keys, read)),
        ]
        results = []
        for label, op in runs:
            n = calibrate(op, args.budget)
            results.append((label, measure(op, n, args.repeats).median))
        # Inserts consume fresh keys: split what is left between the repeats.
        n_insert = max(1, args.keys // args.repeats)
        results.append(("insert of a new key (add)", measure(shm_insert, n_insert,
                                                             args.repeats).median))
        floor = results[0][1]
        print(f"shmdict bench: median of {args.repeats} repeats, "
              f"ratio to a plain dict increment measured in this run\n")
        width = max(len(label) for label, _ in results) + 2
        print(f"{'operation':<{width}}{'ns/op':>12}{'x dict':>10}")
        for label, ns in results:
            print(f"{label:<{width}}{ns:>12,.0f}{ns / floor:>10.1f}")
        value, _ = read("k")
        if value != added[0]:
            print(f"\nERROR: key 'k' holds {value}, expected {added[0]}", file=sys.stderr)
            return 1
        return 0
    finally:
        table.unlink()


if __name__ == "__main__":
    sys.exit(main())
