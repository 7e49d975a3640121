"""A consistent snapshot of a shared-memory table, for ``shmdict save``.

The walk holds every stripe of the table, in stripe order (the order any
code taking several stripes uses), so no insert or delete interleaves with
it: the set of keys saved is the set the table held at one instant.  Values
are read atomically one by one (a Counter's value word, a Struct record
through its seqlock) without stopping the processes that update existing
keys, so a concurrent ``add`` to an existing key lands, per key, either
before the snapshot or after it.  Lock tables are saved as keys only, never
held.  Inserts of new keys wait while the stripes are held, which is as long
as the walk takes (a few ms per 10,000 keys).

Every wait is bounded: a stripe held by a live process for longer than
``timeout`` seconds (a stuck or stopped process) makes the save fail with
:class:`~shmdict.snapshot.SnapshotError` and release what it took; a stripe
held by a dead process is taken over and repaired as any waiter would.
"""
from __future__ import annotations

import time
from typing import Any, List, Tuple

from ...layouts import Outcome
from ...snapshot import SnapshotError
from . import _core
from .inspection import fence
from .table import Table

#: Seconds a save waits for a stripe or a record held by a live process.
DEFAULT_TIMEOUT = 10.0
_FENCE_AT: int = _core.HEADER_FIELDS["fence"][0]


def take(table: Table, timeout: float = DEFAULT_TIMEOUT) -> Tuple[List[Tuple[bytes, Any]], int]:
    """``(entries, fence)`` of ``table`` at one instant: entries are
    ``(encoded key, value)`` sorted by key, values as :class:`Snapshot`
    keeps them (int, record bytes, None for a lock).

    The stripes are taken and released by the core around the walk
    (``holding_all_stripes``), so no signal handler's exception can leave one
    taken; a live holder that keeps one past ``timeout`` fails the save."""
    table._check_open()
    deadline = time.monotonic() + timeout
    try:
        entries, last_fence = table._core.holding_all_stripes(
            timeout, lambda: (_walk(table, deadline), fence(table)))
    except TimeoutError as exc:
        raise SnapshotError(
            f"table {table.name!r}: {exc}; nothing was saved. Is that process stopped? "
            f"(`shmdict stat {table.name}`)") from None
    entries.sort()      # keys are unique: only the keys are compared
    return entries, last_fence


def _walk(table: Table, deadline: float) -> List[Tuple[bytes, Any]]:
    """The entries, unsorted, with every stripe held (slots cannot change
    key); kept short, as inserts wait meanwhile."""
    core = table._core
    kind = table.layout.kind
    published = core.published()
    if kind == "Counter":
        word0 = core.word0
        values = [word0(slot, state) for slot, state, _ in published]
        # None cannot happen with the stripes held (a slot changes key only
        # under its stripe); skipped all the same.
        return [(e, v) for (_, _, e), v in zip(published, values) if v is not None]
    size = getattr(table.layout, "size", 0)
    out: List[Tuple[bytes, Any]] = []
    for slot, state, encoded in published:
        if kind == "Struct":
            record = _record(table, slot, state, deadline)
            if record is None:
                continue
            value = record[:size]
        else:
            value = None
        out.append((encoded, value))
    return out


def _record(table: Table, slot: int, state: int, deadline: float) -> Any:
    """A record's bytes, read lock-free; one that writers keep changing
    faster than it can be copied is read under its lock (at most until
    ``deadline``), as :meth:`StructTable._snapshot_at` does."""
    core = table._core
    for _ in range(1000):
        try:
            return core.record_read(slot, state)
        except _core.TornRecord:
            pass
        if time.monotonic() >= deadline:
            break
        time.sleep(0.001)
    left = max(0.0, deadline - time.monotonic())
    code = core.lock_acquire(slot, state, True, left)
    if code == Outcome.STALE:
        return None
    if code not in (Outcome.OK, Outcome.RECOVERED):
        raise SnapshotError(f"table {table.name!r}: a record keeps changing while pid "
                            f"{core.lock_owner(slot, state)} holds it; nothing was saved")
    data = core.record_read(slot, state, True)
    core.record_commit(slot, state, None)        # release: nothing to write back
    return data


def raise_fence(table: Table, value: int) -> None:
    """Make the table's fencing counter at least ``value`` (a reloaded Lock
    table goes on handing out tokens above those of its saved past, so a
    resource that remembers the last token still accepts new holders).
    Call it only on a table this process just created, before others use
    it: it is a load and a store, not a compare-and-swap, so an acquire
    racing with it could see a token handed out twice."""
    table._check_open()
    mm = table._segment.mm
    if _core.load_u64(mm, _FENCE_AT) < value:
        _core.store_u64(mm, _FENCE_AT, value)
