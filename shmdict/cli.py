"""The ``shmdict`` command-line tool: look at, check and remove this host's tables.

Installed as ``shmdict`` and runnable as ``python -m shmdict``::

    shmdict ls [--json]                         the tables on this host
    shmdict stat NAME [--json]                  counts, load, stripes, lock holders
    shmdict dump NAME [--json] [--prefix E ...] the keys and values
    shmdict check NAME [NAME ...] [--json]      consistency check (exit 1 if not)
    shmdict rm NAME [NAME ...] [-f]             remove tables and their semaphores
    shmdict demo                                processes counting into one table
    shmdict bench                               a quick benchmark of the core

Exit status: 0 on success; 1 when a table is inconsistent or corrupt, or a
table to remove does not exist; 2 on a usage error or a table that does not
exist.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from . import __version__, api
from .backends.shm.inspection import (
    entries,
    lock_holders,
    mapped_by,
    lock_kind,
    recovery,
    segment_size,
    stripe_table,
    value_at,
)
from .errors import ShmDictError, TableNotFound
from .validate import validate_name

#: Seconds ``ls`` waits for a table whose creator is still writing its header.
LS_ATTACH_TIMEOUT = 0.5
#: Rows of lock holders ``stat`` prints (``--json`` gives them all).
STAT_LOCK_ROWS = 50


class CliError(Exception):
    """A failure the CLI reports as one line on stderr, with an exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------- formatting
def human_bytes(n: int) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def render_table(headers: Sequence[str], rows: Iterable[Sequence[Any]],
                 right: Iterable[int] = ()) -> str:
    """Rows as aligned text columns; columns listed in ``right`` are right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[k]) for row in cells) for k in range(len(headers))]
    right = set(right)
    lines = []
    for row in cells:
        parts = [cell.rjust(widths[k]) if k in right else cell.ljust(widths[k])
                 for k, cell in enumerate(row)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def render_fields(pairs: Sequence[Tuple[str, Any]]) -> str:
    """``label  value`` lines with the values aligned."""
    width = max(len(label) for label, _ in pairs)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in pairs)


def jsonable(value: Any) -> Any:
    """A value as JSON: tuples become lists, bytes ``{"hex": ...}``, records objects."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (bytes, bytearray)):
        return {"hex": bytes(value).hex()}
    if hasattr(value, "_asdict"):
        return {k: jsonable(v) for k, v in value._asdict().items()}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [jsonable(v) for v in value]
    return repr(value)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False))


# ------------------------------------------------------------------ tables
def attach(name: str, timeout: float = 5.0) -> Any:
    """Attach to table ``name`` whatever its layout, or raise :class:`CliError`."""
    try:
        return api.attach(name, attach_timeout=timeout)
    except TableNotFound:
        raise CliError(f"no table named {name!r} on this host (see `shmdict ls`)", 2) from None
    except (ValueError, TypeError) as exc:
        raise CliError(str(exc), 2) from None
    except ShmDictError as exc:
        raise CliError(str(exc), 1) from None


def matches_prefix(key: Any, prefix: Sequence[str]) -> bool:
    """Whether ``key`` is a tuple starting with ``prefix`` (elements given as text:
    ``"42"`` matches the int 42 and the str "42"; bytes match their UTF-8 text)."""
    if not prefix:
        return True
    if not isinstance(key, tuple) or len(key) < len(prefix):
        return False
    for element, text in zip(key, prefix):
        if isinstance(element, bytes):
            if element != text.encode("utf-8", "surrogateescape"):
                return False
        elif str(element) != text:
            return False
    return True


def value_text(value: Any) -> str:
    """A value for ``dump``'s text output."""
    if isinstance(value, dict) and "owner" in value:      # a Lock
        text = f"held by pid {value['owner']}" if value["owner"] else "free"
        if value.get("readers"):
            text += f", read by pid {', '.join(map(str, value['readers']))}"
        return text
    if hasattr(value, "_asdict"):
        return " ".join(f"{k}={v!r}" for k, v in value._asdict().items())
    return str(value)


# ------------------------------------------------------------------- verbs
def cmd_ls(args: argparse.Namespace) -> int:
    rows = []
    for name in api.list_tables():
        row: Dict[str, Any] = {"name": name, "layout": None, "capacity": None, "used": None,
                               "size": None, "error": None}
        row["size"] = segment_size(name)
        row["mapped_by"] = [p["pid"] for p in mapped_by(name)]
        try:
            validate_name(name)
            table = attach(name, LS_ATTACH_TIMEOUT)
        except (CliError, ValueError, TypeError) as exc:
            row["error"] = str(exc)
            rows.append(row)
            continue
        try:
            stats = table.stats()
            row.update(layout=stats["layout"], capacity=stats["capacity"], used=stats["live"],
                       size=stats["bytes"])
        except Exception as exc:     # a table corrupted past its header
            row["error"] = str(exc)
        finally:
            table.close()
        rows.append(row)
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no shmdict tables on this host")
        return 0
    text_rows = []
    for r in rows:
        pids = _pid_list(r["mapped_by"])
        if r["error"]:
            layout = "(unreadable: " + r["error"].split(";")[0][:60] + ")"
            text_rows.append((r["name"], layout, "-", "-",
                              human_bytes(r["size"]) if r["size"] is not None else "-", pids))
        else:
            text_rows.append((r["name"], r["layout"], f"{r['capacity']:,}", f"{r['used']:,}",
                              human_bytes(r["size"]), pids))
    print(render_table(("NAME", "LAYOUT", "CAPACITY", "USED", "SIZE", "PIDS"), text_rows,
                       right=(2, 3, 4)))
    return 0


def _pid_list(pids: List[int], most: int = 6) -> str:
    """``'pid 12, 34 (+3)'`` or ``'-'``."""
    if not pids:
        return "-"
    text = ", ".join(map(str, pids[:most]))
    return text + (f" (+{len(pids) - most})" if len(pids) > most else "")


def cmd_stat(args: argparse.Namespace) -> int:
    table = attach(args.name)
    try:
        users = mapped_by(args.name)
        stats = table.stats()
        stripes = stripe_table(table)
        locks = lock_holders(table)
        settings = recovery(table)
    finally:
        table.close()
    if args.json:
        out = dict(stats)
        out["stripe_holders"] = {str(k): v for k, v in stats["stripe_holders"].items()}
        out.update(stripe_table=stripes, recovery=settings, mapped_by=users,
                   lock_holders=[dict(h, key=jsonable(h["key"])) for h in locks])
        print_json(out)
        return 0
    created = datetime.datetime.fromtimestamp(stats["created"]).strftime("%Y-%m-%d %H:%M:%S")
    held = [s for s in stripes if s["holder"] is not None]
    print(render_fields([
        ("table", stats["name"]),
        ("layout", stats["layout"]),
        ("keys", f"{stats['live']:,} of {stats['capacity']:,}"),
        ("tombstones", f"{stats['tombstones']:,}"),
        ("load factor", f"{stats['load_factor']:.3f} (keys + tombstones) / "
                        f"{stats['slots']:,} slots"),
        ("key size", f"{stats['key_size']} bytes"),
        ("size", f"{human_bytes(stats['bytes'])} ({stats['slots']:,} slots of "
                 f"{stats['slot_size']} bytes)"),
        ("created", created),
        ("mapped by", ", ".join(f"pid {p['pid']} ({p['command'][:40]})" for p in users)
                      or "no other process"),
        ("stripes", f"{stats['stripes']}, {len(held)} held"),
        ("recovery", f"a dead stripe holder stalls others <= {settings['stripe_poll']:g} s, "
                     f"<= {settings['bound']:g} s if it died unrecorded"),
    ]))
    print()
    print(render_table(
        ("STRIPE", "KEYS", "SEMAPHORE", "HOLDER"),
        [(s["stripe"], f"{s['keys']:,}", "?" if s["semaphore"] is None else s["semaphore"],
          "-" if s["holder"] is None else
          f"pid {s['holder']}" + ("" if s["holder_alive"] else " (dead)"))
         for s in stripes],
        right=(0, 1, 2)))
    if lock_kind(table):
        print()
        if not locks:
            print("locks held: none")
        else:
            print(f"locks held: {len(locks)}")
            rows = [(repr(h["key"]), h["mode"], h["pid"], "yes" if h["alive"] else "no (dead)")
                    for h in locks[:STAT_LOCK_ROWS]]
            print(render_table(("KEY", "MODE", "PID", "ALIVE"), rows, right=(2,)))
            if len(locks) > STAT_LOCK_ROWS:
                print(f"... and {len(locks) - STAT_LOCK_ROWS} more (--json lists all)")
    return 0


def cmd_dump(args: argparse.Namespace) -> int:
    prefix = args.prefix or []
    table = attach(args.name)
    try:
        found, bad = entries(table)
        items = []
        for key, slot, state in found:
            if not matches_prefix(key, prefix):
                continue
            value = value_at(table, slot, state)
            if value is None:         # deleted while we looked: not in the snapshot
                continue
            items.append((key, value, value_text(value)))
            if args.limit is not None and len(items) >= args.limit:
                break
        layout = repr(table.layout)
    finally:
        table.close()
    if args.json:
        print_json({"name": args.name, "layout": layout, "count": len(items),
                    "undecodable": bad,
                    "items": [{"key": jsonable(k), "value": jsonable(v)} for k, v, _ in items]})
    else:
        if items:
            print(render_table(("KEY", "VALUE"), [(repr(k), text) for k, _, text in items]))
        noun = "key" if len(items) == 1 else "keys"
        where = f" under prefix {tuple(prefix)!r}" if prefix else ""
        print(f"({len(items):,} {noun}{where})")
    if bad:
        print(f"shmdict: {bad} slot(s) hold undecodable keys; run `shmdict check "
              f"{args.name}`", file=sys.stderr)
        return 1
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    status = 0
    reports = []
    for name in args.names:
        try:
            table = attach(name)
        except CliError as exc:
            status = max(status, exc.status)
            reports.append({"name": name, "ok": False, "error": str(exc)})
            if not args.json:
                print(f"table {name!r}: {'CORRUPT' if exc.status == 1 else 'ERROR'}\n"
                      f"  problem: {exc}")
            continue
        try:
            report = table.check()
        except Exception as exc:      # the table is corrupted past what check reads
            status = max(status, 1)
            reports.append({"name": name, "ok": False, "error": f"check failed: {exc}"})
            if not args.json:
                print(f"table {name!r}: INCONSISTENT\n  problem: check failed: {exc}")
            continue
        finally:
            table.close()
        reports.append(report.as_dict())
        if not report.ok:
            status = max(status, 1)
        if not args.json:
            print(report)
    if args.json:
        print_json(reports if len(reports) != 1 else reports[0])
    return status


def cmd_rm(args: argparse.Namespace) -> int:
    status = 0
    for name in args.names:
        try:
            validate_name(name)
        except (ValueError, TypeError) as exc:
            print(f"shmdict: {exc}", file=sys.stderr)
            status = 2
            continue
        users = mapped_by(name)
        if users and not args.force:
            print(f"shmdict: table {name!r} is in use by "
                  f"{', '.join('pid ' + str(p['pid']) for p in users)}: "
                  f"they would go on with the removed table while new processes create a "
                  f"fresh one. Stop them first, or pass --force", file=sys.stderr)
            status = max(status, 1)
            continue
        try:
            existed = api.unlink(name)
        except ShmDictError as exc:
            print(f"shmdict: {exc}", file=sys.stderr)
            status = max(status, 1)
            continue
        if existed:
            print(f"removed {name}")
        elif not args.force:
            print(f"shmdict: no table named {name!r} (its semaphores, if any, were removed)",
                  file=sys.stderr)
            status = max(status, 1)
    return status


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run
    return run(args.processes, args.requests)


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench
    return bench.main(args.bench_args)


# ------------------------------------------------------------------ parser
def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shmdict",
        description="Look at, check and remove the shmdict tables of this host.",
        epilog="Exit status: 0 ok; 1 inconsistent or corrupt table (or rm of a missing "
               "table); 2 usage error or no such table.")
    parser.add_argument("--version", action="version", version=f"shmdict {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, fn: Callable[[argparse.Namespace], int], help: str,
             description: str) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=help, description=description)
        p.set_defaults(fn=fn)
        return p

    p = verb("ls", cmd_ls, "list the tables on this host",
             "List the tables on this host: name, layout, capacity, keys used, size.")
    p.add_argument("--json", action="store_true", help="print JSON (a list of objects)")

    p = verb("stat", cmd_stat, "counts, load factor, stripes and lock holders of a table",
             "Show a table's counts, load factor, tombstones, its stripes (keys, semaphore, "
             "holder) and, for Lock and Struct tables, who holds which lock.")
    p.add_argument("name", help="table name")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = verb("dump", cmd_dump, "print the keys and values of a table",
             "Print a snapshot of a table's keys and values, sorted by key.")
    p.add_argument("name", help="table name")
    p.add_argument("--json", action="store_true",
                   help="print JSON: tuples as lists, bytes as {\"hex\": ...}")
    p.add_argument("--prefix", nargs="+", metavar="ELEMENT",
                   help="only tuple keys starting with these elements (as text: 42 matches "
                        "the int 42 and the string '42')")
    p.add_argument("--limit", type=_positive, metavar="N", help="print at most N keys")

    p = verb("check", cmd_check, "check tables for consistency (exit 1 if not)",
             "Check every slot, count and probe chain of the tables; take over and repair "
             "stripes held by dead processes.  Exit status 1 when a table is inconsistent "
             "or corrupt.  Exact on a quiet table; on a busy one in-flight operations may "
             "show as small count mismatches.")
    p.add_argument("names", nargs="+", metavar="NAME", help="table name(s)")
    p.add_argument("--json", action="store_true", help="print the report(s) as JSON")

    p = verb("rm", cmd_rm, "remove tables (segment and semaphores)",
             "Remove tables: the shared-memory segment and all its semaphores.  A table "
             "that running processes have mapped (see `shmdict stat`) is refused without "
             "--force: they would keep the removed table while new processes create a "
             "fresh one.")
    p.add_argument("names", nargs="+", metavar="NAME", help="table name(s)")
    p.add_argument("-f", "--force", action="store_true",
                   help="remove a table even while processes have it mapped (they keep "
                        "the removed one), and no error when a table does not exist")

    p = verb("demo", cmd_demo, "count requests from several processes into one table",
             "Run several processes counting into one table and check the totals.")
    p.add_argument("--processes", type=_positive, default=4)
    p.add_argument("--requests", type=_positive, default=50_000)

    p = verb("bench", cmd_bench, "a quick benchmark of the core",
             "A quick benchmark of a Counter table's hot verbs next to a plain dict "
             "(shmdict.bench); run `shmdict bench --help` for its options.",)
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the CLI; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # The benchmark parses its own options (and its own --help).
        from . import bench
        return bench.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except CliError as exc:
        print(f"shmdict: {exc}", file=sys.stderr)
        return exc.status
    except BrokenPipeError:          # `shmdict dump x | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
