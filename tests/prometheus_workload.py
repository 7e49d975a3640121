"""One workload, run on prometheus_client's multiprocess mode or on shmdict.

``python prometheus_workload.py mp DIR`` or ``... shmdict TABLE`` prints the
scrape (through the multiprocess recipe's ``MultiProcessCollector``) as JSON:
``[[sample name, [[label, value], ...], value], ...]``, pids replaced by
``w0``.. (the workers, in order) or ``parent``.

Three workers run one after another (so "most recent" is well defined), each
updating every metric type and every gauge mode; worker 1 then exits (a dead
worker: for multiprocess mode the parent calls ``mark_process_dead`` on it,
as its gunicorn recipe does in ``child_exit``) while workers 0 and 2 stay
alive until the scrape is taken.  Amounts are dyadic, so float sums are
exact whatever the order of the additions.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import sys

impl, where = sys.argv[1], sys.argv[2]
if impl == "mp":
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = where
    import prometheus_client as P
    from prometheus_client import multiprocess
else:
    import shmdict.prometheus as P
    from shmdict.prometheus import multiprocess
    P.configure(where, capacity=2_000)

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

MODES = ["all", "liveall", "livesum", "max", "min", "sum", "mostrecent", "livemax",
         "livemin", "livemostrecent"]
DEAD = 1

requests = P.Counter("wl_requests", "Requests", ["route"])
plain = P.Counter("wl_plain", "No labels")
latency = P.Histogram("wl_latency_seconds", "Latency", ["route"], buckets=(0.01, 0.5, 4))
sizes = P.Summary("wl_size_bytes", "Sizes", ["route"])
gauges = {m: P.Gauge(f"wl_gauge_{m}", f"mode {m}", ["shard"], multiprocess_mode=m)
          for m in MODES}


def work(i, done, release):
    requests.labels("/a").inc(0.5 * (i + 1))
    requests.labels(route="/b").inc()
    plain.inc(0.25)
    for amount in (0.0078125, 0.25, 2.0, 8.0 * i):
        latency.labels("/a").observe(amount)
    sizes.labels("/a").observe(i + 0.125)
    for mode, gauge in gauges.items():
        value = (i + 1) * (1.5 if i % 2 else -0.75)
        gauge.labels("s1").set(value)
        if "mostrecent" not in mode:
            gauge.labels("s1").inc(0.5)
            gauge.labels("s2").dec(i + 1)
    done.put(os.getpid())
    if i != DEAD:
        release.wait(60)


def main():
    ctx = multiprocessing.get_context("fork")
    done, release = ctx.Queue(), ctx.Event()
    procs, pids = [], {}
    for i in range(3):
        proc = ctx.Process(target=work, args=(i, done, release))
        proc.start()
        pids[str(done.get(timeout=60))] = f"w{i}"
        procs.append(proc)
    procs[DEAD].join(60)
    if impl == "mp":
        multiprocess.mark_process_dead(procs[DEAD].pid)
    pids[str(os.getpid())] = "parent"
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    text = generate_latest(registry).decode()
    release.set()
    for proc in procs:
        proc.join(60)
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = sorted((k, pids.get(v, v) if k == "pid" else v)
                            for k, v in s.labels.items())
            out.append([s.name, labels, s.value])
    print(json.dumps(sorted(out)))


if __name__ == "__main__":
    main()
