"""Benchmark of a stripe takeover's repair: the journal against the recount.

A process SIGKILLed inside an insert leaves its stripe held, a slot claimed
and the counts reserved.  The next process to want the stripe takes it over
and repairs it.  Since format 4 the repair settles the one operation the
dead holder's journal names (format.h, "The stripe journal"); before, it
recounted the stripe from every slot of every tier, hashing every key
(0.25 s at 1.8 M keys, issue 11).  This prints, per table size, the median
time of

* a takeover: ``stripe_acquire`` of a stripe whose holder was just killed
  mid-insert (with ``stripe_poll`` at 1 ms, so the wait before the takeover
  is at most that), the journal's repair included;
* ``recount_stripe`` of the same stripe, held: the whole-table recount the
  takeover did before (and `shmdict check` still does for a stripe whose
  count is off), measured in the same run as the baseline.

Run::

    .venv/bin/python benchmarks/bench_repair.py                  # ~1 minute
    .venv/bin/python benchmarks/bench_repair.py --keys 100000,1800000
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import statistics
import sys
import time
from typing import List, Optional

from harness import machine_summary, markdown_table

import shmdict
from shmdict.backends.shm import _core

CTX = multiprocessing.get_context("fork")
STRIPE = 3


def die_mid_insert(name: str, capacity: int) -> None:
    """Take STRIPE and leave what a holder killed right after its claim
    leaves (claimed slot, reserved counts, its journal), then die."""
    table = shmdict.open(name, shmdict.Counter(), capacity=capacity, create=False)
    table._stripes.acquire(STRIPE)
    header, mm = table._segment.header, table._segment.mm
    free = next(i for i in range(header["nslots"]) if table._core.slot_info(i)[0] == 0)
    record = header["stripes_offset"] + STRIPE * _core.STRIPE_SIZE
    field = {f: record + off for f, (off, _) in _core.STRIPE_FIELDS.items()}
    slot_at = header["data_offset"] + free * header["slot_size"]
    live = _core.load_u64(mm, field["live"])
    _core.store_u64(mm, field["journal_live"], live)
    _core.store_u64(mm, field["journal_state"], _core.load_u64(mm, slot_at))
    _core.store_u64(mm, field["journal_slot"], free)
    _core.store_u64(mm, field["journal"], _core.JOURNAL_INSERT)
    _core.store_u64(mm, field["live"], live + 1)
    total = _core.HEADER_FIELDS["live"][0]
    _core.store_u64(mm, total, _core.load_u64(mm, total) + 1)
    _core.store_u64(mm, slot_at, _core.KIND_CLAIMED | (STRIPE << 32))
    os.kill(os.getpid(), signal.SIGKILL)


def measure(keys: int, repeats: int) -> List[object]:
    name = f"bench.repair.{os.getpid()}"
    shmdict.unlink(name)
    capacity = keys + keys // 10 + 100
    table = shmdict.open(name, shmdict.Counter(), capacity=capacity, stripe_poll=0.001)
    try:
        table.add_many({("k", i): 1 for i in range(keys)})
        takeovers, recounts = [], []
        for _ in range(repeats):
            victim = CTX.Process(target=die_mid_insert, args=(name, capacity))
            victim.start()
            victim.join()
            start = time.perf_counter()
            repaired = table._core.stripe_acquire(STRIPE)
            takeovers.append(time.perf_counter() - start)
            assert repaired == (1, -1), repaired       # the claim dropped, the count back
            try:
                start = time.perf_counter()
                table._core.recount_stripe(STRIPE)
                recounts.append(time.perf_counter() - start)
            finally:
                table._core.stripe_release(STRIPE)
        assert len(table) == keys and table.check()
    finally:
        table.close()
        shmdict.unlink(name)
    take, recount = statistics.median(takeovers), statistics.median(recounts)
    return [f"{keys:,}", f"{take * 1e3:.2f} ms", f"{recount * 1e3:.1f} ms",
            f"{recount / take:.1f}x"]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", default="10000,100000,1800000",
                        help="comma-separated table sizes (keys)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    rows = [measure(int(k), args.repeats) for k in args.keys.split(",")]
    print(f"{machine_summary()}\n")
    print(markdown_table(["keys", "takeover (journal repair, poll <= 1 ms)",
                          "whole-table recount (before)", "recount / takeover"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
