"""Benchmark of shmdict.prometheus (issue 13) against prometheus_client's
multiprocess mode, from one run.

* ``Counter.inc(1.5)`` and ``Histogram.observe(x)`` on a labelled child, in
  one process: median ns/op on each, and the ratio (target: shmdict at
  least 20x faster);
* the scrape (``MultiProcessCollector`` + ``generate_latest``, the recipe's
  ``/metrics`` handler) of ``--series`` (10,000) series after
  ``--restarts`` (500) worker restarts, and at fractions of that along the
  way, so its growth shows (target: at least 50x faster at the end, and
  flat).  The restarts are real: each "worker" is a forked process that
  updates ``--per-worker`` (1,000) of the series and a ``livesum`` gauge,
  then exits; on multiprocess mode the parent then calls
  ``mark_process_dead(pid)``, as gunicorn's ``child_exit`` does in its
  recipe, and the dead worker's ``.db`` files stay, as they do in production.

The series: a Counter with ``route`` labels, and a Histogram (5 buckets with
``+Inf``, 7 samples per label set) with a tenth of them.  Conservation is
checked on both: the counters' total equals all the increments made.

Run::

    .venv/bin/python benchmarks/bench_prometheus.py                 # a few minutes
    .venv/bin/python benchmarks/bench_prometheus.py --series 200 --restarts 5 \\
        --per-worker 20 --repeats 2 --budget 0.01
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

from harness import calibrate, machine_summary, measure, results_table

import shmdict

TARGET_HOT_PATH = 20.0
TARGET_SCRAPE = 50.0
BUCKETS = (0.01, 0.1, 1.0, 10.0)            # + Inf: 5 buckets, 7 samples per label set


def mp_classes(directory: str) -> Any:
    """prometheus_client switched to multiprocess mode in this process, as
    ``PROMETHEUS_MULTIPROC_DIR`` set before its import would."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    import prometheus_client
    from prometheus_client import values
    values.ValueClass = values.MultiProcessValue()
    return prometheus_client


class App:
    """The same metrics on one of the two implementations."""

    def __init__(self, impl: str, where: str, series: int) -> None:
        self.impl = impl
        if impl == "mp":
            from prometheus_client import multiprocess
            P = mp_classes(where)
            self.where = where
        else:
            import shmdict.prometheus as P
            from shmdict.prometheus import multiprocess
            P.configure(where, capacity=int(series * 1.3) + 1_000, key_size=128)
        self.multiprocess = multiprocess
        self.hist_sets = max(1, series // 70)             # 7 samples each: a tenth
        self.counter_sets = max(1, series - 7 * self.hist_sets)
        self.requests = P.Counter(f"{impl}_requests", "Requests", ["route"], registry=None)
        self.latency = P.Histogram(f"{impl}_latency_seconds", "Latency", ["route"],
                                   buckets=BUCKETS, registry=None)
        self.hot_ops = P.Counter(f"{impl}_hot_ops", "Hot path", ["route"], registry=None)
        self.hot_seconds = P.Histogram(f"{impl}_hot_observed", "Hot path", ["route"],
                                       buckets=BUCKETS, registry=None)
        self.in_flight = P.Gauge(f"{impl}_in_flight", "In flight", registry=None,
                                 multiprocess_mode="livesum")

    def scrape(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest
        registry = CollectorRegistry()
        if self.impl == "mp":
            self.multiprocess.MultiProcessCollector(registry, path=self.where)
        else:
            self.multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)

    def worker(self, seed: int, per_worker: int) -> None:
        """A worker's life: some series updated, its gauge raised, then exit."""
        rng = random.Random(seed)
        self.in_flight.inc()
        for _ in range(per_worker):
            i = rng.randrange(self.counter_sets + self.hist_sets)
            if i < self.counter_sets:
                self.requests.labels(f"/r/{i}").inc(1)
            else:
                self.latency.labels(f"/h/{i}").observe(rng.random())

    def restart(self, seed: int, per_worker: int) -> None:
        proc = multiprocessing.get_context("fork").Process(
            target=self.worker, args=(seed, per_worker))
        proc.start()
        proc.join(120)
        assert proc.exitcode == 0
        if self.impl == "mp":
            self.multiprocess.mark_process_dead(proc.pid, self.where)

    def counted(self) -> float:
        """The counters' total and the histograms' count, from a scrape."""
        from prometheus_client.parser import text_string_to_metric_families
        total = 0.0
        for family in text_string_to_metric_families(self.scrape().decode()):
            for s in family.samples:
                if s.name.endswith("_requests_total") or s.name.endswith("_seconds_count"):
                    total += s.value
        return total


def time_scrape(app: App, repeats: int) -> float:
    samples = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        app.scrape()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def run(series: int = 10_000, restarts: int = 500, per_worker: int = 1_000,
        repeats: int = 5, budget: float = 0.2) -> List[Dict[str, Any]]:
    results: List[Dict[str, Any]] = []
    directory = tempfile.mkdtemp(prefix="bench-prom-mp-")
    table = f"bench.prom.{os.getpid()}"
    shmdict.unlink(table)
    try:
        apps = {"mp": App("mp", directory, series), "shmdict": App("shmdict", table, series)}

        # --- the hot path ---------------------------------------------------
        hot: Dict[str, Dict[str, float]] = {}
        for impl, app in apps.items():
            child = app.hot_ops.labels("/hot")
            hist = app.hot_seconds.labels("/hot")

            def inc(n: int, child=child) -> None:
                for _ in range(n):
                    child.inc(1.5)

            def observe(n: int, hist=hist) -> None:
                for i in range(n):
                    hist.observe(0.05)

            hot[impl] = {"inc": measure(inc, calibrate(inc, budget), repeats).median,
                         "observe": measure(observe, calibrate(observe, budget),
                                            repeats).median}
        for verb, call in (("inc", "Counter.inc(1.5)"), ("observe", "Histogram.observe(x)")):
            ratio = hot["mp"][verb] / hot["shmdict"][verb]
            results.append({"name": f"{call}, prometheus_client multiprocess mode",
                            "value": hot["mp"][verb], "unit": "ns/op"})
            results.append({"name": f"{call}, shmdict.prometheus", "value": hot["shmdict"][verb],
                            "unit": "ns/op", "ratio": ratio, "ratio_of": "x faster",
                            "target": TARGET_HOT_PATH, "met": ratio >= TARGET_HOT_PATH})

        # --- the scrape as workers come and go --------------------------------
        checkpoints = sorted({max(1, restarts // 10), max(1, restarts // 2), restarts})
        done = 0
        seed = 0
        made = {impl: 0 for impl in apps}
        scrapes: Dict[int, Dict[str, float]] = {}
        # First every series exists (one worker touches each), as in a warm app.
        for impl, app in apps.items():
            for i in range(app.counter_sets):
                app.requests.labels(f"/r/{i}").inc(1)
            for i in range(app.counter_sets, app.counter_sets + app.hist_sets):
                app.latency.labels(f"/h/{i}").observe(0.5)
            made[impl] += app.counter_sets + app.hist_sets
        for checkpoint in checkpoints:
            while done < checkpoint:
                for impl, app in apps.items():
                    app.restart(seed, per_worker)
                    made[impl] += per_worker
                seed += 1
                done += 1
            scrapes[checkpoint] = {impl: time_scrape(app, repeats) for impl, app in apps.items()}
            files = len(os.listdir(directory))
            for impl in apps:
                row = {"name": f"scrape, {series:,} series after {checkpoint} restarts, "
                               + ("prometheus_client multiprocess mode" if impl == "mp"
                                  else "shmdict.prometheus"),
                       "value": scrapes[checkpoint][impl] * 1e3, "unit": "ms"}
                if impl == "mp":
                    row["ratio"], row["ratio_of"] = files, ".db files"
                else:
                    ratio = scrapes[checkpoint]["mp"] / scrapes[checkpoint]["shmdict"]
                    row.update(ratio=ratio, ratio_of="x faster")
                    if checkpoint == restarts:
                        row.update(target=TARGET_SCRAPE, met=ratio >= TARGET_SCRAPE)
                results.append(row)
        first, last = scrapes[checkpoints[0]], scrapes[checkpoints[-1]]
        for impl in apps:
            results.append({"name": f"scrape growth {checkpoints[0]} -> {restarts} restarts, "
                                    + impl, "value": last[impl] / first[impl], "unit": "x"})
        segment = shmdict.attach(table)
        results.append({"name": "shmdict table keys after all restarts", "value": len(segment),
                        "unit": "keys"})
        segment.close()
        for impl, app in apps.items():
            lost = made[impl] - app.counted()
            results.append({"name": f"increments lost, {impl}", "value": lost, "unit": "",
                            "lost": lost})
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        shmdict.unlink(table)
    return results


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--restarts", type=int, default=500)
    parser.add_argument("--per-worker", type=int, default=1_000,
                        help="series each worker updates before it exits")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per figure (median)")
    parser.add_argument("--budget", type=float, default=0.2, help="seconds per repeat")
    args = parser.parse_args(argv)
    print(f"# shmdict.prometheus vs prometheus_client multiprocess mode\n\n"
          f"{machine_summary()}\n")
    results = run(args.series, args.restarts, args.per_worker, args.repeats, args.budget)
    print(results_table(results))
    lost = [r["lost"] for r in results if "lost" in r]
    if any(lost):
        print(f"\nERROR: {lost} increments lost", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
