"""Instructions per verb under valgrind's callgrind, each next to its Python baseline.

Timings on a shared machine move with its load; instruction counts do not.
This script runs one child program under ``valgrind --tool=callgrind``
once with every loop at 0 iterations and once per verb with that verb's
loop at ``--n`` iterations; the difference of the two totals over ``n`` is
the verb's cost in instructions, the loop's own included (as in the
baseline it is set against, measured the same way in the same child).

Run::

    .venv/bin/python benchmarks/instructions.py              # about 3 minutes
    .venv/bin/python benchmarks/instructions.py --n 5000 --only lock_with,add

Prints a markdown table: verb, instructions per op, baseline, its
instructions, the ratio, the issue's target for that ratio.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

#: (name, statement run per iteration, per: ops in one statement, baseline, target)
#: ``target`` is the largest ratio to the baseline the issue allows (None: none).
CASES: List[Tuple[str, str, int, Optional[str], Optional[float], str]] = [
    ("dict_inc", 'pd["user:1"] += 1', 1, None, None, "plain dict increment"),
    ("add", 'add("user:1")', 1, "dict_inc", None, "d.add(key)"),
    ("read", 'read("user:1")', 1, "add", 1.0, "d.read(key)"),
    ("h_add", "hadd()", 1, "add", 1.3, "counter handle h.add()"),
    ("dict_insert", "pdn[nk_dict()] = 1", 1, None, None, "plain dict insert of a new key"),
    ("insert", "add(nk())", 1, "dict_insert", 4.0, "d.add(new key): the insert in C"),
    ("add_many", "addm(batch)", 100, "add", 0.5, "d.add_many(100 keys), per key"),
    ("read_many", "readm(keys100)", 100, "read", 0.5, "d.read_many(100 keys), per key"),
    ("tlock_with", 'with tl["row"]:\n            pass', 1, None, None,
     "with threading.Lock per key (dict of locks)"),
    ("lock_with", 'with locks["row"]:\n            pass', 1, "tlock_with", 2.0,
     "with locks[key]: (as users write it)"),
    ("tlock_acqrel", "ta(); tr()", 1, None, None, "threading.Lock acquire()+release()"),
    ("lock_acqrel", "la(); lr()", 1, "tlock_acqrel", None,
     "lock handle acquire()+release()"),
    ("struct_read", 'sread("k")', 1, None, None, "Struct d.read(key)"),
    ("struct_update", 'with supd("k") as rec:\n            rec.tokens -= 1', 1, "struct_read",
     None, "with d.update(key) as rec: rec.tokens -= 1"),
    ("prom_inc", "pinc(1.5)", 1, "add", None, "shmdict.prometheus Counter child .inc(1.5)"),
    ("prom_observe", "pobs(0.05)", 1, "add", None,
     "shmdict.prometheus Histogram child .observe(x)"),
]

CHILD = r'''
import os, sys, threading
import shmdict
from shmdict import prometheus as sp
counts = dict(a.split("=") for a in sys.argv[1:])
tag = f"icount.{os.getpid()}"
newkeys = [f"new:{i}" for i in range(int(counts.get("nkeys", 0)))]
c = shmdict.open(tag + ".c", shmdict.Counter(), capacity=10000 + len(newkeys) + 100)
locks = shmdict.open(tag + ".l", shmdict.Lock(), capacity=1000)
st = shmdict.open(tag + ".s", shmdict.Struct(tokens="d", stamp="q"), capacity=1000)
keys = [f"user:{i}" for i in range(10000)]
for k in keys:
    c.add(k)
pd = dict.fromkeys(keys, 0)
pdn = {}
nk, nk_dict = iter(newkeys).__next__, iter(newkeys).__next__
add, read, addm, readm = c.add, c.read, c.add_many, c.read_many
hadd = c["user:1"].add
batch = {k: 1 for k in keys[:100]}
keys100 = keys[:100]
tl = {"row": threading.Lock()}
t = tl["row"]; ta, tr = t.acquire, t.release
h = locks["row"]; la, lr = h.acquire, h.release
sread, supd = st.read, st.update
st.set("k", (1e9, 0))
sp.configure(tag + ".m", capacity=2000)
pc = sp.Counter("ic_requests", "r", ["route"], registry=None)
ph = sp.Histogram("ic_latency", "l", ["route"], registry=None)
pinc = pc.labels("/a").inc
pobs = ph.labels("/a").observe
def run():
%(loops)s
run()
for t_ in (c, locks, st):
    t_.unlink()
shmdict.unlink(tag + ".m")
'''


def child_source() -> str:
    loops = []
    for name, stmt, _, _, _, _ in CASES:
        loops.append(f"    for _ in range(int(counts.get({name!r}, 0))):\n        {stmt}")
    return CHILD % {"loops": "\n".join(loops)}


def instructions(python: str, src_path: str, counts: Dict[str, int]) -> int:
    """Total instructions callgrind collected for one run of the child."""
    args = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", python,
            src_path] + [f"{k}={v}" for k, v in counts.items()]
    out = subprocess.run(args, capture_output=True, text=True, timeout=1200,
                         env=dict(os.environ, PYTHONHASHSEED="0"))
    found = re.search(r"Collected\s*:\s*(\d+)", out.stderr)
    if out.returncode != 0 or not found:
        raise RuntimeError(f"callgrind run failed ({out.returncode}): {out.stderr[-2000:]}")
    return int(found.group(1))


def run(n: int, only: Optional[List[str]] = None, jobs: int = 2) -> List[Dict[str, object]]:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed")
    cases = [c for c in CASES if only is None or c[0] in only
             or any(c[0] == o for o in (x[3] for x in CASES if x[0] in only))]
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".icount_child.py")
    with open(path, "w") as f:
        f.write(child_source())
    try:
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            # Every run builds the same n new keys (for the insert cases), so
            # their construction cancels out of the difference.
            zero = pool.submit(instructions, sys.executable, path, {"nkeys": n})
            runs = {c[0]: pool.submit(instructions, sys.executable, path,
                                      {"nkeys": n, c[0]: n})
                    for c in cases}
            base = zero.result()
            per = {name: (f.result() - base) / n for name, f in runs.items()}
    finally:
        os.unlink(path)
    rows = []
    for name, stmt, ops, baseline, target, label in cases:
        value = per[name] / ops
        row: Dict[str, object] = {"name": name, "label": label, "instr": value}
        if baseline is not None and baseline in per:
            b = per[baseline] / dict((c[0], c[2]) for c in CASES)[baseline]
            row.update(baseline=baseline, baseline_instr=b, ratio=value / b, target=target)
        rows.append(row)
    return rows


def table(rows: List[Dict[str, object]]) -> str:
    out = ["| verb | instructions/op | baseline | baseline instructions/op | ratio | target |",
           "| --- | --- | --- | --- | --- | --- |"]
    labels = {c[0]: c[5] for c in CASES}
    for r in rows:
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else ""
        target = f"<= {r['target']}x" if r.get("target") else ""
        base = labels.get(r.get("baseline", ""), "")  # type: ignore[arg-type]
        binstr = f"{r['baseline_instr']:,.0f}" if "baseline_instr" in r else ""
        out.append(f"| {r['label']} | {r['instr']:,.0f} | {base} | {binstr} | {ratio} | {target} |")
    return "\n".join(out)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=20000, help="iterations of each verb's loop")
    p.add_argument("--only", help="comma-separated case names (their baselines are added)")
    p.add_argument("--jobs", type=int, default=2, help="callgrind runs at once")
    a = p.parse_args(argv)
    only = a.only.split(",") if a.only else None
    rows = run(a.n, only, a.jobs)
    print(f"Command: python benchmarks/instructions.py --n {a.n}"
          + (f" --only {a.only}" if a.only else ""))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
