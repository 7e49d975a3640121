"""The ``shmdict`` command-line tool: look at, check and remove this host's tables.

Installed as ``shmdict`` and runnable as ``python -m shmdict``::

    shmdict ls [PATTERN ...] [--json]           the tables on this host
    shmdict stat NAME [--json]                  counts, load, stripes, lock holders
    shmdict dump NAME [--json] [--prefix E ...] the keys and values
    shmdict check NAME [NAME ...] [--json]      consistency check (exit 1 if not)
    shmdict rm NAME|PATTERN ... [-f] [-n]       remove tables and their semaphores
    shmdict top [PATTERN ...] [-d S] [-n N] [--json]   a live view: rates, locks, stripes
    shmdict save NAME FILE                      a consistent snapshot to a file
    shmdict load FILE [--name N] [--replace|--merge]   recreate a table from one
    shmdict demo                                processes counting into one table
    shmdict bench                               a quick benchmark of the core

PATTERNs are shell-style (``fnmatch``: ``*``, ``?``, ``[...]``) over table
names; quote them in the shell.

Exit status: 0 on success; 1 when a table is inconsistent or corrupt, a
table to remove does not exist or no table matches a pattern, a snapshot
file is damaged, or a table to load exists; 2 on a usage error, a table
that does not exist, or a snapshot file that does not exist.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import __version__, api
from .backends.shm.inspection import (
    entries,
    lock_holders,
    mapped_by,
    mapped_by_many,
    lock_kind,
    recovery,
    segment_size,
    stripe_table,
    value_at,
)
from .errors import ShmDictError, TableNotFound
from .top import select_names
from .text import human_bytes, jsonable, render_fields, render_table
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
    names = select_names(api.list_tables(), args.patterns)
    users = mapped_by_many(names)
    for name in names:
        row: Dict[str, Any] = {"name": name, "layout": None, "capacity": None, "used": None,
                               "size": None, "error": None}
        row["size"] = segment_size(name)
        row["mapped_by"] = [p["pid"] for p in users[name]]
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
                       size=stats["bytes"],
                       max_capacity=stats.get("max_capacity", stats["capacity"]))
        except Exception as exc:     # a table corrupted past its header
            row["error"] = str(exc)
        finally:
            table.close()
        rows.append(row)
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no shmdict tables on this host"
              + (f" match {' '.join(args.patterns)}" if args.patterns else ""))
        return 0
    text_rows = []
    for r in rows:
        pids = _pid_list(r["mapped_by"])
        if r["error"]:
            layout = "(unreadable: " + r["error"].split(";")[0][:60] + ")"
            text_rows.append((r["name"], layout, "-", "-",
                              human_bytes(r["size"]) if r["size"] is not None else "-", pids))
        else:
            grows = r["max_capacity"] > r["capacity"]
            capacity = (f"{r['capacity']:,}..{r['max_capacity']:,}" if grows
                        else f"{r['capacity']:,}")
            text_rows.append((r["name"], r["layout"], capacity, f"{r['used']:,}",
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
        ("keys", f"{stats['live']:,} of {stats.get('max_capacity', stats['capacity']):,}"),
        ("tiers", _tiers_line(stats)),
        ("inserts", f"{stats['inserts']:,} (deletes {stats['deletes']:,}) since created"
                    if "inserts" in stats else "-"),
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


def _tiers_line(stats: Dict[str, Any]) -> str:
    """``'3: 100/100, 100/100, 12/200 keys (grows to 100,000)'`` for ``stat``."""
    capacities = stats.get("tier_capacity") or [stats["capacity"]]
    lives = stats.get("tier_live") or [stats["live"]]
    tiers = ", ".join(f"{live:,}/{cap:,}" for live, cap in zip(lives, capacities))
    limit = stats.get("max_capacity", stats["capacity"])
    grows = (f" (grows to {limit:,} keys)" if limit > sum(capacities)
             else " (at its max_capacity)" if limit > stats["capacity"] else " (fixed capacity)")
    return f"{len(capacities)}: {tiers} keys{grows}"


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


def cmd_compact(args: argparse.Namespace) -> int:
    status = 0
    for name in args.names:
        try:
            table = attach(name)
        except CliError as exc:
            print(f"shmdict: {exc}", file=sys.stderr)
            status = max(status, exc.status)
            continue
        try:
            freed = table.compact()
            after = table.stats()["tombstones"]
        except ShmDictError as exc:
            print(f"shmdict: table {name!r}: {exc}", file=sys.stderr)
            status = max(status, 1)
            continue
        finally:
            table.close()
        print(f"{name}: {freed} tombstones made empty ({freed + after} before, {after} left: "
              f"crossed by a key's probe path)")
    return status


def is_pattern(text: str) -> bool:
    """Whether ``text`` is a shell-style pattern rather than a table name (table
    names cannot hold ``*``, ``?`` or ``[``)."""
    return any(c in text for c in "*?[")


def _rm_targets(args: argparse.Namespace) -> Tuple[List[str], int]:
    """The names ``rm`` acts on, in order and once each, and the status of
    the patterns that matched nothing (1, reported here; 0 with ``--force``)."""
    status = 0
    names: List[str] = []
    existing: Optional[List[str]] = None
    for arg in args.names:
        if not is_pattern(arg):
            found = [arg]
        else:
            if existing is None:
                existing = api.list_tables()
            found = select_names(existing, [arg])
            if not found and not args.force:
                print(f"shmdict: no table matches {arg!r}", file=sys.stderr)
                status = 1
        names.extend(n for n in found if n not in names)
    return names, status


def cmd_rm(args: argparse.Namespace) -> int:
    names, status = _rm_targets(args)
    users_of = mapped_by_many([n for n in names if _valid(n)])
    for name in names:
        try:
            validate_name(name)
        except (ValueError, TypeError) as exc:
            print(f"shmdict: {exc}", file=sys.stderr)
            status = 2
            continue
        users = users_of[name]
        if users and not args.force:
            print(f"shmdict: table {name!r} is in use by "
                  f"{', '.join('pid ' + str(p['pid']) for p in users)}: "
                  f"they would go on with the removed table while new processes create a "
                  f"fresh one. Stop them first, or pass --force", file=sys.stderr)
            status = max(status, 1)
            continue
        if args.dry_run:
            if name in api.list_tables():
                print(f"would remove {name}")
            elif not args.force:
                print(f"shmdict: no table named {name!r}", file=sys.stderr)
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


def _valid(name: str) -> bool:
    try:
        validate_name(name)
    except (ValueError, TypeError):
        return False
    return True


def cmd_top(args: argparse.Namespace) -> int:
    from . import top
    if args.json:
        print_json(jsonable(top.snapshot_json(args.patterns, args.interval)))
        return 0
    return top.run(args.patterns, args.interval, args.iterations)


def cmd_save(args: argparse.Namespace) -> int:
    from .snapshot import SnapshotError
    table = attach(args.name)
    try:
        info = api.save(table, args.file, timeout=args.timeout)
    except (SnapshotError, OSError) as exc:
        raise CliError(str(exc), 1) from None
    finally:
        table.close()
    if args.json:
        print_json(info)
    else:
        noun = "key" if info["count"] == 1 else "keys"
        print(f"saved {info['name']} ({info['layout']}, {info['count']:,} {noun}) to "
              f"{info['path']} ({human_bytes(info['bytes'])})")
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from .snapshot import describe, read_file
    try:
        saved = describe(read_file(args.file))
        table = api.load(args.file, name=args.name, replace=args.replace, merge=args.merge)
    except ShmDictError as exc:       # a damaged file, an existing table, ...
        raise CliError(str(exc), 1) from None
    except FileNotFoundError:
        raise CliError(f"no snapshot file {args.file!r}", 2) from None
    except (ValueError, TypeError) as exc:     # a bad --name
        raise CliError(str(exc), 2) from None
    except OSError as exc:
        raise CliError(str(exc), 1) from None
    try:
        name, layout = table.name, repr(table.layout)
        live = table.stats()["live"]
    finally:
        table.close()
    how = "merged into" if args.merge else "loaded as"
    if args.json:
        print_json({"file": args.file, "snapshot": saved, "name": name, "layout": layout,
                    "mode": "merge" if args.merge else "replace" if args.replace else "new",
                    "keys": live})
    else:
        noun = "key" if saved["count"] == 1 else "keys"
        print(f"{how} {name} ({layout}): {saved['count']:,} {noun} from {args.file}; "
              f"the table holds {live:,}")
    return 0


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


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
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
    p.add_argument("patterns", nargs="*", metavar="PATTERN",
                   help="only tables whose names match one of these shell-style patterns "
                        "(quote them: 'myapp.*')")
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

    p = verb("compact", cmd_compact, "free the tombstones of tables now",
             "Sweep the tables' tombstones (deleted slots): every one that no key's probe "
             "path crosses becomes an empty slot again, so misses stay short.  Inserts do "
             "this by themselves, a window at a time, every nslots/8 deletes"
             "; this is for after a mass delete.  The table stays in use: reads "
             "and adds go on, inserts and deletes wait one window at a time.")
    p.add_argument("names", nargs="+", metavar="NAME", help="table name(s)")

    p = verb("rm", cmd_rm, "remove tables (segment and semaphores)",
             "Remove tables: the shared-memory segment and all its semaphores.  A table "
             "that running processes have mapped (see `shmdict stat`) is refused without "
             "--force: they would keep the removed table while new processes create a "
             "fresh one.")
    p.add_argument("names", nargs="+", metavar="NAME",
                   help="table names, or shell-style patterns over them (quote them: "
                        "'myapp.*'); a pattern that matches nothing is an error")
    p.add_argument("-f", "--force", action="store_true",
                   help="remove a table even while processes have it mapped (they keep "
                        "the removed one), and no error when a table does not exist")
    p.add_argument("-n", "--dry-run", action="store_true",
                   help="only say what would be removed (and what would be refused)")

    p = verb("top", cmd_top, "a live view of the tables: rates, load, locks, stripes",
             "Sample the tables every INTERVAL seconds and show, per table: layout, keys "
             "and load factor, tiers, ADDS/s (Counter: the change of the sum of the "
             "values, i.e. increments/s; Lock: exclusive acquisitions/s from the fencing "
             "counter), INS/s and DEL/s (from the insert/delete counters when the table "
             "keeps them, else the net change of the key count, marked ~), locks held and "
             "with waiters, stripes held, held by dead processes and repaired, and the "
             "processes mapping it.  q or Ctrl-C quits.  It only reads: it never takes a "
             "stripe or a lock.")
    p.add_argument("patterns", nargs="*", metavar="PATTERN",
                   help="only tables whose names match one of these shell-style patterns")
    p.add_argument("-d", "--interval", type=_seconds, default=1.0, metavar="SECONDS",
                   help="seconds between samples (default 1)")
    p.add_argument("-n", "--iterations", type=_positive, metavar="N",
                   help="show N refreshes and exit (the first has no rates yet)")
    p.add_argument("--json", action="store_true",
                   help="print one snapshot as JSON (two samples INTERVAL apart, so rates "
                        "exist) and exit")

    p = verb("save", cmd_save, "write a consistent snapshot of a table to a file",
             "Write a snapshot of table NAME to FILE (atomically: a temporary file renamed "
             "into place), so its values survive a reboot.  No insert or delete "
             "interleaves with it (all stripes are held while it is taken); an add to an "
             "existing key lands before or after it.  Lock tables are saved as keys "
             "(never held) with their fencing counter.")
    p.add_argument("name", help="table name")
    p.add_argument("file", help="snapshot file to write")
    p.add_argument("--timeout", type=_seconds, default=10.0, metavar="SECONDS",
                   help="give up when a live process holds a stripe this long (default 10)")
    p.add_argument("--json", action="store_true", help="print what was saved as JSON")

    p = verb("load", cmd_load, "recreate a table from a snapshot file",
             "Recreate the table saved in FILE: the same layout, capacity and key size.  "
             "A damaged or truncated file is refused before anything is created.  A table "
             "of that name that exists is refused unless --replace (only when no process "
             "has it mapped) or --merge (Counter values are added; Struct records set; "
             "Lock keys created).")
    p.add_argument("file", help="snapshot file to read")
    p.add_argument("--name", help="load under this name instead of the saved one")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--replace", action="store_true",
                     help="remove an existing table of that name first (refused while in use)")
    how.add_argument("--merge", action="store_true",
                     help="load into the existing table (Counter: add the saved values)")
    p.add_argument("--json", action="store_true", help="print what was loaded as JSON")

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
