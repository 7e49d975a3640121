"""``shmdict demo``: several processes counting into one table, exactly."""
from __future__ import annotations

import multiprocessing
import os
import random
import time

from . import api
from .layouts import Counter

ROUTES = ["/", "/login", "/api/items", "/api/orders", "/health"]


def _worker(table, requests: int, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(requests):
        table.add(("route", rng.choice(ROUTES)))
        table.add("requests")
    table.add(("worker", os.getpid()), requests)


def run(processes: int = 4, requests: int = 50_000) -> int:
    """Run the demo; return 0 when every count adds up."""
    name = f"demo.{os.getpid()}"
    table = api.open(name, Counter(), capacity=1_000)
    try:
        start = time.perf_counter()
        workers = [multiprocessing.Process(target=_worker, args=(table, requests, seed))
                   for seed in range(processes)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - start
        expected = processes * requests
        routes = {k[1]: v for k, v in table.items() if isinstance(k, tuple) and k[0] == "route"}
        print(f"{processes} processes x {requests:,} requests counted into table {name!r} "
              f"in {elapsed:.2f}s ({2 * expected / elapsed:,.0f} adds/s)\n")
        print(f"  {'route':<14}{'hits':>10}")
        for route in ROUTES:
            print(f"  {route:<14}{routes.get(route, 0):>10,}")
        total = table.read("requests")[0]
        print(f"  {'total':<14}{total:>10,}   (expected {expected:,}: "
              f"{'exact' if total == expected == sum(routes.values()) else 'MISMATCH'})")
        return 0 if total == expected == sum(routes.values()) else 1
    finally:
        table.unlink()
