"""Read-only views of a shared-memory table, for ``shmdict stat`` and ``dump``.

These functions are the inspection API the CLI is written on: a snapshot of
the keys with their slots, a value by slot, the row and record locks that
are held and by whom, the stripes and their holders, the recovery settings.
They read the table through the C core without changing it.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ...keys import decode_key
from . import _core
from .segment import segment_path
from .table import _STALE, Table


def entries(table: Table) -> Tuple[List[Tuple[Any, int, int]], int]:
    """``([(key, slot, state)], undecodable)``: a snapshot of the keys, sorted.

    Keys whose bytes do not decode (a corrupted slot) are counted, not raised.
    """
    table._check_open()
    out = []
    bad = 0
    for slot, state, encoded in table._core.published():
        try:
            key = decode_key(encoded)
        except (ValueError, RecursionError):
            bad += 1
            continue
        out.append((key, slot, state))
    out.sort(key=lambda e: _sort_key(e[0]))
    return out, bad


def _sort_key(key: Any) -> Tuple:
    if isinstance(key, tuple):
        return (3, tuple(_sort_key(k) for k in key))
    if isinstance(key, int):
        return (0, key, "")
    if isinstance(key, str):
        return (1, 0, key)
    return (2, 0, repr(key))


def value_at(table: Table, slot: int, state: int) -> Any:
    """The value snapshot of ``slot`` (a Lock's is ``{"owner", "readers"}``), or
    None when the slot changed since ``state`` was read."""
    if table.layout.kind == "Lock":
        word0 = table._core.word0(slot, state)
        if word0 is None:
            return None
        out: Dict[str, Any] = {"owner": _core.id_pid(word0) or None}
        if table.layout.rw:
            out["readers"] = table._core.rw_readers(slot, state)
        return out
    value = table._snapshot_at(slot, state)
    return None if value is _STALE else value


def lock_kind(table: Table) -> str:
    """``"lock"`` for Lock tables, ``"record"`` for Struct ones (whose word0 is a
    record lock), ``""`` for tables without locks."""
    return {"Lock": "lock", "Struct": "record"}.get(table.layout.kind, "")


def lock_holders(table: Table) -> List[Dict[str, Any]]:
    """Every held row lock (Lock) or record lock (Struct): key, pid, alive, mode."""
    kind = lock_kind(table)
    if not kind:
        return []
    core = table._core
    rw = bool(getattr(table.layout, "rw", False))
    held = []
    for key, slot, state in entries(table)[0]:
        word0 = core.word0(slot, state)
        if word0 is None:
            continue
        pid = _core.id_pid(word0)
        if pid:
            held.append({"key": key, "pid": pid, "alive": _core.id_alive(word0),
                         "mode": "exclusive" if kind == "lock" else "writer"})
        if rw:
            for reader in core.rw_readers(slot, state):
                held.append({"key": key, "pid": reader, "alive": _pid_exists(reader),
                             "mode": "shared"})
    return held


def lock_summary(table: Table, most: int = 1000) -> Dict[str, Any]:
    """What ``top`` shows of a table's locks, in one pass over the slots:
    ``{"held": n, "waiting": n, "holders": [...]}``, where ``waiting`` counts
    the locks whose word has the waiters bit set (someone sleeps on it; the
    bit says "at least one", not how many), and ``holders`` lists at most
    ``most`` of them as :func:`lock_holders` does.  Only the keys of held
    locks are decoded, so a big idle table costs one walk."""
    out: Dict[str, Any] = {"held": 0, "waiting": 0, "holders": []}
    kind = lock_kind(table)
    if not kind:
        return out
    table._check_open()
    core = table._core
    rw = bool(getattr(table.layout, "rw", False))
    for slot, state, encoded in core.published():
        word0 = core.word0(slot, state)
        if word0 is None:
            continue
        if word0 & _core.WAITERS_BIT:
            out["waiting"] += 1
        pid = _core.id_pid(word0)
        readers = core.rw_readers(slot, state) if rw else []
        if not pid and not readers:
            continue
        out["held"] += 1
        if len(out["holders"]) >= most:
            continue
        try:
            key: Any = decode_key(encoded)
        except (ValueError, RecursionError):
            key = {"undecodable": encoded.hex()}
        if pid:
            out["holders"].append({"key": key, "pid": pid, "alive": _core.id_alive(word0),
                                   "mode": "exclusive" if kind == "lock" else "writer"})
        for reader in readers:
            out["holders"].append({"key": key, "pid": reader, "alive": _pid_exists(reader),
                                   "mode": "shared"})
    return out


def counter_sum(table: Table) -> int:
    """The sum of every value of a Counter table, each read atomically (not
    one atomic snapshot of them all: an add lands before or after)."""
    table._check_open()
    core = table._core
    total = 0
    for slot, state, _ in core.published():
        word0 = core.word0(slot, state)
        if word0 is not None:
            total += word0
    return total


def fence(table: Table) -> int:
    """The last fencing token the table handed out (Lock tables: the number
    of exclusive acquisitions since the table was made)."""
    table._check_open()
    return _core.load_u64(table._segment.mm, _FENCE_AT)


_FENCE_AT: int = _core.HEADER_FIELDS["fence"][0]


def _pid_exists(pid: int) -> bool:
    """Whether a process with this pid exists (rw reader cells report bare pids)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stripe_table(table: Table) -> List[Dict[str, Any]]:
    """Per stripe: its key count, semaphore value and holder."""
    table._check_open()
    core = table._core
    rows = []
    for i, sem in enumerate(table._stripes.semaphores):
        holder = core.stripe_holder(i)
        try:
            value: Optional[int] = sem.value
        except Exception:
            value = None
        rows.append({"stripe": i, "keys": core.stripe_live(i), "semaphore": value,
                     "holder": _core.id_pid(holder) if holder else None,
                     "holder_alive": _core.id_alive(holder) if holder else None})
    return rows


def recovery(table: Table) -> Dict[str, float]:
    """This process's stripe recovery settings for the table, and their bound."""
    stripes = table._stripes
    return {"stripe_poll": stripes.poll, "stall_timeout": stripes.stall_timeout,
            "bound": stripes.bound}


def mapped_by(name: str, exclude_self: bool = True) -> List[Dict[str, Any]]:
    """The processes that have table ``name``'s current segment mapped, from
    ``/proc/*/maps`` (matched by device and inode, so a process still using a
    removed, older segment of the same name does not count): ``[{"pid",
    "command"}]``, sorted by pid.  Only processes whose maps this user may
    read are seen (all of them as root)."""
    return mapped_by_many([name], exclude_self)[name]


def mapped_by_many(names: Sequence[str],
                   exclude_self: bool = True) -> Dict[str, List[Dict[str, Any]]]:
    """:func:`mapped_by` of several tables, reading each ``/proc/PID/maps``
    once (``ls`` and ``top`` look at every table of the host each time)."""
    wanted: Dict[Tuple[str, str], str] = {}     # (inode, path) -> table name
    out: Dict[str, List[Dict[str, Any]]] = {n: [] for n in names}
    for name in names:
        try:
            st = os.lstat(segment_path(name))
        except OSError:
            continue
        wanted[(str(st.st_ino), segment_path(name))] = name
    if not wanted:
        return out
    me = os.getpid()
    try:
        pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    except OSError:
        return out
    for pid in pids:
        if exclude_self and pid == me:
            continue
        try:
            with open(f"/proc/{pid}/maps", "rb") as f:
                found = {name for line in f
                         for name in (_maps_line_table(line, wanted),) if name}
        except OSError:
            continue            # gone, or not ours to read
        if found:
            command = _command(pid)
            for name in sorted(found):
                out[name].append({"pid": pid, "command": command})
    return out


def _maps_line_table(line: bytes, wanted: Dict[Tuple[str, str], str]) -> Optional[str]:
    """The table whose segment a ``/proc/PID/maps`` line maps, if wanted."""
    if b"/shmdict." not in line:
        return None
    parts = line.decode("utf-8", "replace").rstrip("\n").split(None, 5)
    if len(parts) != 6:
        return None
    return wanted.get((parts[4], parts[5]))


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read().split(b"\0")
        text = " ".join(w.decode("utf-8", "replace") for w in words if w)
        return text[:80] or "?"
    except OSError:
        return "?"


def segment_size(name: str) -> Optional[int]:
    """The size in bytes of table ``name``'s segment, or None if unreadable."""
    try:
        return os.stat(segment_path(name)).st_size
    except OSError:
        return None
