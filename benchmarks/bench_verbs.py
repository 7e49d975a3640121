"""Every verb against its floor or peer, in one run (issue 15).

For each row of the issue's table: shmdict's median ns/op (or aggregate
ops/s) next to the floor or peer it is held against, measured in the same
run, their ratio and the target; and, from :mod:`instructions` (valgrind's
callgrind, which machine load does not move), instructions per op next to
the same baseline.

Run (a minute of timing, then about 4 minutes of callgrind)::

    .venv/bin/python benchmarks/bench_verbs.py                 # also updates RESULTS.md
    .venv/bin/python benchmarks/bench_verbs.py --no-instructions --no-write   # quick

The section it writes into ``benchmarks/RESULTS.md`` sits between two
markers that ``peers.py`` keeps when it regenerates the file.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import threading
from itertools import cycle, islice
from typing import Any, Callable, Dict, List, Optional, Tuple

from harness import calibrate, calibrate_counted, machine_summary, markdown_table, measure, \
    median_parallel

import shmdict

CTX = multiprocessing.get_context("fork")
HERE = os.path.dirname(os.path.abspath(__file__))
START, END = "<!-- bench_verbs:start -->", "<!-- bench_verbs:end -->"


def timed(op: Callable[[int], Any], budget: float, repeats: int) -> float:
    return measure(op, calibrate(op, budget), repeats).median


def keyed(keys: List[Any], body: Callable[[Any], Any]) -> Callable[[int], None]:
    it = cycle(keys)

    def op(n: int) -> None:
        for key in islice(it, n):
            body(key)
    return op


def run(budget: float, repeats: int) -> Dict[str, Dict[str, float]]:
    """Same-run timings: {row: {"shmdict": x, "base": y, ...}} (ns/op or ops/s)."""
    tag = f"bench.verbs.{os.getpid()}"
    names = [f"{tag}.{s}" for s in ("l", "l2", "c", "s")]
    for n in names:
        shmdict.unlink(n)
    out: Dict[str, Dict[str, float]] = {}
    try:
        locks = shmdict.open(names[0], shmdict.Lock(), capacity=100)
        row_keys = [f"row:{i}" for i in range(10)]
        tlocks = {k: threading.Lock() for k in row_keys}
        mlocks = {k: CTX.Lock() for k in row_keys}

        def with_shm(n: int) -> None:
            for key in islice(it_s, n):
                with locks[key]:
                    pass

        def with_thr(n: int) -> None:
            for key in islice(it_t, n):
                with tlocks[key]:
                    pass

        def with_mp(n: int) -> None:
            for key in islice(it_m, n):
                with mlocks[key]:
                    pass
        it_s, it_t, it_m = cycle(row_keys), cycle(row_keys), cycle(row_keys)
        out["with"] = {"shmdict": timed(with_shm, budget, repeats),
                       "base": timed(with_thr, budget, repeats),
                       "mp": timed(with_mp, budget, repeats)}

        h, t = locks["row:0"], threading.Lock()

        def pair(acquire: Callable[[], Any], release: Callable[[], Any]) -> Callable[[int], None]:
            def op(n: int) -> None:
                for _ in range(n):
                    acquire()
                    release()
            return op
        m = CTX.Lock()
        out["acqrel"] = {"shmdict": timed(pair(h.acquire, h.release), budget, repeats),
                         "base": timed(pair(t.acquire, t.release), budget, repeats),
                         "mp": timed(pair(m.acquire, m.release), budget, repeats)}

        # 2 processes, 10 keys, a non-atomic increment under the lock per key.
        words = CTX.RawArray("q", len(row_keys))
        index = {k: i for i, k in enumerate(row_keys)}

        def contended(mapping_of: Callable[[], Any]) -> Tuple[float, int]:
            for i in range(len(words)):
                words[i] = 0

            def make_op(worker: int) -> Callable[[int], None]:
                mapping = mapping_of()
                it = cycle(row_keys[worker:] + row_keys[:worker])

                def op(n: int) -> None:
                    for key in islice(it, n):
                        with mapping[key]:
                            words[index[key]] += 1
                return op
            n, ops = calibrate_counted(make_op(0), budget)
            rate, more = median_parallel(make_op, 2, n, repeats)
            lost = ops + more - sum(words)
            return rate, lost
        shm_rate, shm_lost = contended(lambda: locks)
        mp_rate, mp_lost = contended(lambda: mlocks)
        out["contended"] = {"shmdict": shm_rate, "base": mp_rate, "lost": shm_lost + mp_lost}

        c = shmdict.open(names[2], shmdict.Counter(), capacity=20_000)
        ckeys = [f"user:{i}" for i in range(1000)]
        for k in ckeys:
            c.add(k)
        add, read = c.add, c.read
        out["read"] = {"shmdict": timed(keyed(ckeys, read), budget, repeats),
                       "base": timed(keyed(ckeys, add), budget, repeats)}
        hadd = c["user:1"].add

        def handle_add(n: int) -> None:
            for _ in range(n):
                hadd()

        def plain_add(n: int) -> None:
            for _ in range(n):
                add("user:1")
        out["hadd"] = {"shmdict": timed(handle_add, budget, repeats),
                       "base": timed(plain_add, budget, repeats)}

        batch = {k: 1 for k in ckeys[:100]}
        keys100 = ckeys[:100]
        add_many, read_many = c.add_many, c.read_many

        def many(fn: Callable[[Any], Any], arg: Any) -> Callable[[int], None]:
            # n keys per call of op(n): n // 100 batches, so ns/op is per key.
            def op(n: int) -> None:
                for _ in range(max(1, n // 100)):
                    fn(arg)
            return op
        single_add = timed(keyed(ckeys[:100], add), budget, repeats)
        single_read = timed(keyed(ckeys[:100], read), budget, repeats)
        out["add_many"] = {"shmdict": timed(many(add_many, batch), budget, repeats),
                           "base": single_add}
        out["read_many"] = {"shmdict": timed(many(read_many, keys100), budget, repeats),
                            "base": single_read}

        st = shmdict.open(names[3], shmdict.Struct(tokens="d", stamp="q"), capacity=2000)
        skeys = [f"client:{i}" for i in range(1000)]
        for k in skeys:
            st.set(k, (1e9, 0))
        update = st.update

        def upd(key: Any) -> None:
            with update(key) as rec:
                rec.tokens -= 1
        out["update"] = {"shmdict": timed(keyed(skeys, upd), budget, repeats),
                         "base": timed(keyed(skeys, st.read), budget, repeats)}
        for table in (locks, c, st):
            table.close()
    finally:
        for n in names:
            shmdict.unlink(n)
    return out


#: row key -> (verb, baseline text, target text, instruction case, its baseline case,
#: how the ratio is compared)
ROWS = [
    ("with", "`with locks[key]:` (as users write it, 10 keys)",
     "`with` a dict of `threading.Lock` per key", "<= 2.5x time, <= 2x instructions",
     "lock_with", "tlock_with"),
    ("acqrel", "handle `acquire()` + `release()`", "`threading.Lock` acquire + release",
     "<= 1.5x", "lock_acqrel", "tlock_acqrel"),
    ("contended", "lock, 2 processes contending on 10 keys (`with locks[key]:`)",
     "`multiprocessing.Lock` per key", ">= 1x (ops/s)", None, None),
    ("read", "`read(key)`", "`add(key)`", "instructions <= add's", "read", "add"),
    ("hadd", "counter handle `h.add()`", "`d.add(key)`", "<= 1.3x", "h_add", "add"),
    ("update", "`with d.update(key) as rec: rec.tokens -= 1`", "`Struct` `d.read(key)`",
     "<= 1.2 us", "struct_update", "struct_read"),
    ("add_many", "`add_many` (100 keys), per key", "single `add(key)`", "<= 0.5x",
     "add_many", "add"),
    ("read_many", "`read_many` (100 keys), per key", "single `read(key)`", "<= 0.5x",
     "read_many", "read"),
]


def fmt(value: float, unit: str) -> str:
    return f"{value:,.0f} ops/s" if unit == "ops/s" else f"{value:,.1f} ns"


def section(times: Dict[str, Dict[str, float]], instr: Optional[Dict[str, float]],
            command: str) -> str:
    rows = []
    for key, verb, base, target, icase, ibase in ROWS:
        t = times[key]
        unit = "ops/s" if key == "contended" else "ns"
        shm = t["shmdict"]
        ratio = (t["base"] / shm) if unit == "ops/s" else shm / t["base"]
        ratio_text = (f"{ratio:.2f}x the peer's ops/s" if unit == "ops/s"
                      else f"{ratio:.2f}x")
        extra = ""
        if key == "with":
            extra = f"; `multiprocessing.Lock` per key {fmt(t['mp'], unit)}"
        if key == "acqrel":
            extra = f"; `multiprocessing.Lock` {fmt(t['mp'], unit)}"
        if key == "contended":
            ratio_text = f"{shm / t['base']:.2f}x"
            extra = f"; updates lost under the locks: {int(t['lost'])}"
        itext = ""
        if instr and icase in instr and ibase in instr:
            itext = (f"{instr[icase]:,.0f} vs {instr[ibase]:,.0f} "
                     f"({instr[icase] / instr[ibase]:.2f}x)")
        rows.append([verb, fmt(shm, unit), base + ": " + fmt(t["base"], unit) + extra,
                     ratio_text, target, itext])
    table = markdown_table(["verb", "shmdict (median)", "floor or peer, same run", "ratio",
                            "target", "instructions/op (callgrind), vs baseline"], rows)
    return (f"{START}\n## Every verb against its floor (issue 15)\n\n"
            f"- Command: `{command}`; instructions from `python benchmarks/instructions.py`"
            f" (valgrind's callgrind: per op, the loop included, difference of two runs)\n"
            f"- {machine_summary()}\n\n{table}\n\n{FLOORS}\n{END}\n")


#: What stops the rows that do not reach their target, from callgrind's
#: per-function counts (which do not move with the machine's load).
FLOORS = """Floors (callgrind, per key):

- Batch verbs: a batch saves the call and the loop (about 300 of a single
  add's 800-900 instructions), not the per-key work: the key cache's dict
  lookup (~140), the two slot/state conversions (~60), the CAS or the pair
  read (~90), and the result object the API returns for every key (an int, or
  a (value, exists) tuple: ~100 with its allocation and free).  That leaves
  a batch at about 0.6x (add_many) and 0.8x (read_many, whose single read
  reuses its pair when the caller drops it) of a single call's instructions;
  in time the batch's burst of allocations brings it nearer 1x.
- `Struct.update()`: the target is absolute (1.2 us, 3x the issue's 0.4 us
  `Struct.read`); compare the ratio, not the ns, on a machine whose read is
  not 0.4 us.  The record is made and packed in C (RecordCodec: 9,400 ->
  7,400 instructions); what is left over a read is the with-statement and
  the user's block (Python frames by design), the record lock taken and
  given back (two atomics and the owner id), the second copy written and
  published, and the mutable record object itself.
- Two processes on 10 keys: at parity with `multiprocessing.Lock` (one
  atomic on the lock word each way, as its semaphore has), within this
  2-core machine's noise: the ratio moves between about 0.8x and 1.4x from
  run to run.  The table's fencing counter (one atomic add on a header word
  every acquirer shares) is not what holds it: with that add removed, three
  alternating A/B runs of this row gave 0.83x, 0.80x and 1.11x against
  1.36x, 0.89x and 0.85x with it (`/tmp`-built copies of the core, same
  benchmark), so the per-table token the README promises stays.
"""


def write_section(text: str, path: str) -> None:
    old = open(path).read() if os.path.exists(path) else ""
    if START in old and END in old:
        head, rest = old.split(START, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        new = head + text + ("\n" + tail if tail else "")
    else:
        new = old.rstrip("\n") + "\n\n" + text
    with open(path, "w") as f:
        f.write(new)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=0.2, help="seconds per repeat")
    p.add_argument("--repeats", type=int, default=7, help="repeats per figure (median)")
    p.add_argument("--n", type=int, default=20000, help="callgrind iterations per verb")
    p.add_argument("--no-instructions", action="store_true", help="skip callgrind")
    p.add_argument("--no-write", action="store_true", help="print only")
    a = p.parse_args(argv)
    times = run(a.budget, a.repeats)
    instr = None
    if not a.no_instructions:
        import instructions
        instr = {r["name"]: r["instr"] for r in instructions.run(a.n)}   # type: ignore
    command = "python benchmarks/bench_verbs.py " + " ".join(argv if argv is not None
                                                             else sys.argv[1:])
    text = section(times, instr, command.strip())
    print(text)
    if not a.no_write:
        write_section(text, os.path.join(HERE, "RESULTS.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
