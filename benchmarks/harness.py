"""The timing harness the scripts in ``benchmarks/`` share.

Every figure is the median of several repeats, in nanoseconds per operation,
each repeat timing a plain Python ``for`` loop of ``n`` calls (the loop's own
cost is included on both sides, so ratios compare like with like).
:func:`calibrate` sizes a repeat, :func:`measure` times the repeats,
:func:`run_parallel` runs an operation in several processes at once, and
the rest formats results.  The scripts import it as ``harness`` (they run
from this folder; ``tests/test_benchmarks_smoke.py`` puts it on the path).
"""
from __future__ import annotations

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
