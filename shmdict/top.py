"""``shmdict top``: a live view of this host's tables, refreshing like ``top``.

Every ``interval`` seconds each table (or each whose name matches one of the
shell-style patterns) is sampled, and the change since the previous sample
is shown as rates per second:

* ADDS/s: on Counter tables the change of the sum of all values per second,
  i.e. increments per second (a delete takes its key's value out of the sum,
  and a negative add counts negatively); on Lock tables the change of the
  table's fencing counter, i.e. exclusive acquisitions per second.  Struct
  tables have no such number.
* INS/s and DEL/s: from the table's insert and delete counters
  (``stats()["inserts"]``/``["deletes"]``) when its core keeps them; else
  INS/s shows the net change of the key count (marked ``~``) and DEL/s ``-``.

It also shows the key count and load factor, tiers (``stats()["tiers"]``,
1 for a table that does not grow), the locks held and how many of them have
waiters (the waiters bit of the lock word: someone sleeps on it), the stripes
held, those held by a dead process (a takeover is due) and the repairs seen
between samples, and the processes that map the table.

Sampling only reads: it never takes a stripe or a lock, attaches with a
short bound (a table whose creator never finishes is shown as unreadable),
and every walk of a table is bounded by its slot count, so a corrupt or
stuck table cannot hang it.
"""
from __future__ import annotations

import fnmatch
import os
import select
import shutil
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, TextIO

from . import api
from .backends.shm import _core
from .backends.shm.inspection import (
    counter_sum,
    fence,
    lock_summary,
    mapped_by_many,
)
from .backends.shm.segment import segment_path
from .text import render_table
from .validate import validate_name

#: Seconds ``top`` waits for a table whose creator is still writing its header.
ATTACH_TIMEOUT = 0.5
#: Lock holders listed per table in ``--json`` (all are counted).
JSON_HOLDERS = 100
ADDS_MEANING = {"Counter": "increments: the change of the sum of all values",
                "Lock": "exclusive acquisitions: the change of the fencing counter"}
CLEAR = "\x1b[H\x1b[2J"


def select_names(names: Sequence[str], patterns: Sequence[str]) -> List[str]:
    """The names matching any of the shell-style ``patterns`` (all without any)."""
    if not patterns:
        return list(names)
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


class Sampler:
    """Samples this host's tables, remembering the previous sample of each.

    Each table is attached only while it is read and closed again, so a
    running ``top`` never counts as a process using the table (``shmdict
    rm`` would refuse it) and never keeps a removed segment alive.  A table
    removed and created anew under the same name (a new segment, another
    inode) starts its rates again.
    """

    def __init__(self, patterns: Sequence[str] = ()) -> None:
        self.patterns = list(patterns)
        self._previous: Dict[str, Dict[str, Any]] = {}
        self._previous_at: Optional[float] = None

    def close(self) -> None:
        """Nothing stays attached between samples; kept for ``with``."""

    def __enter__(self) -> "Sampler":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def sample(self) -> Dict[str, Any]:
        """Read every matching table once; rows carry rates from the previous
        sample (None on a table's first sample)."""
        now = time.monotonic()
        names = select_names(api.list_tables(), self.patterns)
        users = mapped_by_many(names)
        elapsed = None if self._previous_at is None else now - self._previous_at
        rows = []
        current: Dict[str, Dict[str, Any]] = {}
        for name in names:
            raw = _read(name)
            raw["mapped_by"] = [p["pid"] for p in users.get(name, [])]
            before = self._previous.get(name)
            if before is not None and (raw["inode"] is None
                                       or before["inode"] != raw["inode"]):
                before = None                   # a new segment: start again
            rows.append(_row(raw, before, elapsed))
            if raw["error"] is None:
                current[name] = raw
        self._previous = current
        self._previous_at = now
        return {"time": time.time(), "elapsed": elapsed, "tables": rows}


def _read(name: str) -> Dict[str, Any]:
    """One sample of table ``name``, attached for the time it takes; a table
    that cannot be attached or read is a row with its ``error``."""
    raw: Dict[str, Any] = {"name": name, "error": None, "inode": None}
    try:
        validate_name(name)
        inode = _inode(name)
        table = api.attach(name, attach_timeout=ATTACH_TIMEOUT)
    except Exception as exc:
        raw["error"] = str(exc).split("\n")[0]
        return raw
    # The segment that was attached: the inode seen before and after (a
    # table re-created in between gets none, and its rates start again).
    raw["inode"] = inode if inode is not None and _inode(name) == inode else None
    try:
        raw.update(read_table(table))
    except Exception as exc:          # corrupted past its header
        raw["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        table.close()
    return raw


def _inode(name: str) -> Optional[int]:
    try:
        return os.lstat(segment_path(name)).st_ino
    except OSError:
        return None


def read_table(table: Any) -> Dict[str, Any]:
    """One sample of an attached table: what :class:`Sampler` compares."""
    stats = table.stats()
    kind = table.layout.kind
    out: Dict[str, Any] = {
        "layout": stats["layout"], "kind": kind, "live": stats["live"],
        "capacity": stats.get("max_capacity", stats["capacity"]),
        "load_factor": stats["load_factor"],
        "tiers": stats.get("tiers", 1), "inserts": stats.get("inserts"),
        "deletes": stats.get("deletes"), "adds": None,
        "takeovers": stats.get("takeovers"), "repairs": stats.get("repairs")}
    if kind == "Counter":
        out["adds"] = counter_sum(table)
    elif kind == "Lock":
        out["adds"] = fence(table)
    locks = lock_summary(table, JSON_HOLDERS)
    out["locks"] = locks
    core = table._core
    holders = {}
    for i in range(stats["stripes"]):
        word = core.stripe_holder(i)
        if word:
            holders[i] = {"pid": _core.id_pid(word), "alive": bool(_core.id_alive(word)),
                          "word": word}
    out["stripes"] = stats["stripes"]
    out["stripe_holders"] = holders
    return out


def _rate(delta: Optional[int], elapsed: Optional[float]) -> Optional[float]:
    if delta is None or not elapsed:
        return None
    return delta / elapsed


def _row(raw: Dict[str, Any], before: Optional[Dict[str, Any]],
         elapsed: Optional[float]) -> Dict[str, Any]:
    """A sample with its rates against ``before`` (the previous sample)."""
    row: Dict[str, Any] = {"name": raw["name"], "error": raw["error"],
                           "mapped_by": raw.get("mapped_by", [])}
    if raw["error"] is not None:
        return row
    if before is None:
        elapsed = None
    kind = raw["kind"]
    row.update(layout=raw["layout"], kind=kind, live=raw["live"], capacity=raw["capacity"],
               load_factor=raw["load_factor"], tiers=raw["tiers"])
    if raw["adds"] is not None:
        prior = before["adds"] if before else None
        delta = None if prior is None else raw["adds"] - prior
        row["adds"] = {"what": ADDS_MEANING[kind], "before": prior, "after": raw["adds"],
                       "delta": delta, "per_second": _rate(delta, elapsed)}
    else:
        row["adds"] = None
    if raw["inserts"] is not None and raw["deletes"] is not None:
        for field in ("inserts", "deletes"):
            delta = None if before is None else raw[field] - before[field]
            row[field] = {"source": "counter", "total": raw[field], "delta": delta,
                          "per_second": _rate(delta, elapsed)}
    else:
        delta = None if before is None else raw["live"] - before["live"]
        row["inserts"] = {"source": "net change of the key count", "total": None,
                          "delta": delta, "per_second": _rate(delta, elapsed)}
        row["deletes"] = None
    locks = raw["locks"]
    row["locks"] = {"held": locks["held"], "waiting": locks["waiting"],
                    "holders": locks["holders"]}
    holders = raw["stripe_holders"]
    dead = [{"stripe": i, "pid": h["pid"]} for i, h in sorted(holders.items())
            if not h["alive"]]
    repairs = 0
    if before is not None:
        # A stripe that a dead process held at the previous sample and that
        # it holds no more was taken over and repaired (by check, or a waiter).
        for i, h in before["stripe_holders"].items():
            if not h["alive"] and raw["stripe_holders"].get(i, {}).get("word") != h["word"]:
                repairs += 1
    row["stripes"] = {"count": raw["stripes"], "held": len(holders),
                      "holders": [{"stripe": i, "pid": h["pid"], "alive": h["alive"]}
                                  for i, h in sorted(holders.items())],
                      "dead_holders": dead, "repairs_seen": repairs,
                      "takeovers": raw["takeovers"], "repairs": raw["repairs"]}
    row["rates_over"] = elapsed
    return row


# ---------------------------------------------------------------- showing
def _num(x: Optional[float]) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100 or x == int(x):
        return f"{x:,.0f}"
    return f"{x:,.1f}"


def render(sample: Dict[str, Any], interval: float, width: int = 0,
           patterns: Sequence[str] = ()) -> str:
    """A sample as the text ``top`` shows (lines cut at ``width`` if given)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sample["time"]))
    rows = sample["tables"]
    lines = [f"shmdict top  {stamp}  every {interval:g} s  {len(rows)} table"
             f"{'' if len(rows) == 1 else 's'}",
             "ADDS/s: Counter = increments/s (change of the sum of the values); "
             "Lock = exclusive acquisitions/s (fence)"]
    if any(r["error"] is None and r["inserts"]["source"] != "counter" for r in rows):
        lines.append("INS/s ~: net change of the key count (the table keeps no insert counter)")
    if sample["elapsed"] is None:
        lines.append("(rates from the next refresh on)")
    lines.append("")
    headers = ("NAME", "LAYOUT", "KEYS", "CAPACITY", "LOAD", "TIERS", "ADDS/s", "INS/s",
               "DEL/s", "LOCKS", "WAIT", "STRIPES", "PIDS")
    table_rows = []
    for r in rows:
        pids = _pids(r["mapped_by"])
        if r["error"] is not None:
            table_rows.append((r["name"], "(unreadable: " + r["error"][:50] + ")",
                               *["-"] * 10, pids))
            continue
        adds = _num(r["adds"]["per_second"]) if r["adds"] else "-"
        ins = r["inserts"]
        ins_text = _num(ins["per_second"])
        if ins["source"] != "counter" and ins["per_second"] is not None:
            ins_text = "~" + ins_text
        dels = _num(r["deletes"]["per_second"]) if r["deletes"] else "-"
        locks = r["locks"]
        st = r["stripes"]
        stripes = f"{st['held']}/{st['count']}"
        if st["dead_holders"]:
            stripes += f" {len(st['dead_holders'])} dead"
        if st["repairs_seen"]:
            stripes += f" {st['repairs_seen']} repaired"
        layout = r["layout"] if len(r["layout"]) <= 24 else r["layout"][:21] + "..."
        lock_kind = r["kind"] in ("Lock", "Struct")
        table_rows.append((r["name"], layout, f"{r['live']:,}", f"{r['capacity']:,}",
                           f"{r['load_factor']:.2f}", r["tiers"], adds, ins_text, dels,
                           locks["held"] if lock_kind else "-",
                           locks["waiting"] if lock_kind else "-", stripes, pids))
    if table_rows:
        lines.append(render_table(headers, table_rows, right=(2, 3, 4, 5, 6, 7, 8, 9, 10)))
    else:
        lines.append("no shmdict tables on this host" + (" match" if patterns else ""))
    if width > 0:
        lines = [line[:width] for line in "\n".join(lines).split("\n")]
    return "\n".join(lines)


def _pids(pids: List[int], most: int = 4) -> str:
    if not pids:
        return "-"
    text = ",".join(map(str, pids[:most]))
    return text + (f" +{len(pids) - most}" if len(pids) > most else "")


def snapshot_json(patterns: Sequence[str], interval: float) -> Dict[str, Any]:
    """Two samples ``interval`` apart, as ``top --json`` prints them."""
    with Sampler(patterns) as sampler:
        sampler.sample()
        time.sleep(interval)
        out = sampler.sample()
    out["interval"] = interval
    out["adds_means"] = ADDS_MEANING
    return out


def run(patterns: Sequence[str], interval: float, iterations: Optional[int],
        out: Optional[TextIO] = None, keys: Optional[TextIO] = None) -> int:
    """The live view: ``iterations`` frames (None: until ``q`` or Ctrl-C).

    On a terminal each frame replaces the last (ANSI clear) and ``q`` quits;
    otherwise one block per sample is printed.  The terminal's settings are
    restored however it ends.
    """
    out = sys.stdout if out is None else out
    keys = sys.stdin if keys is None else keys
    tty_out = out.isatty()
    restore = _cbreak(keys) if tty_out and keys is not None and keys.isatty() else None
    frames = 0
    try:
        with Sampler(patterns) as sampler:
            while True:
                sample = sampler.sample()
                width = shutil.get_terminal_size().columns if tty_out else 0
                text = render(sample, interval, width, patterns)
                if tty_out:
                    out.write(CLEAR + text + "\n")
                else:
                    out.write(("\n" if frames else "") + text + "\n")
                out.flush()
                frames += 1
                if iterations is not None and frames >= iterations:
                    return 0
                if _wait_for_quit(keys if restore is not None else None, interval):
                    return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if restore is not None:
            restore()


def _cbreak(keys: TextIO) -> Any:
    """Put the terminal in cbreak mode (keys arrive at once, unechoed);
    returns the function that restores it."""
    import termios
    import tty
    fd = keys.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def restore() -> None:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
    return restore


def _wait_for_quit(keys: Optional[TextIO], interval: float) -> bool:
    """Sleep ``interval`` seconds; True if ``q`` was pressed meanwhile."""
    deadline = time.monotonic() + interval
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if keys is None:
            time.sleep(left)
            continue
        ready, _, _ = select.select([keys], [], [], left)
        if ready:
            typed = os.read(keys.fileno(), 64)
            if not typed or b"q" in typed.lower():
                return True
