"""``shmdict.open``, ``attach``, ``unlink``, ``list_tables``, ``save`` and ``load``:
the entry points.

The only module that knows both backends: it checks the arguments every
backend shares, then hands the table to shared memory (no ``backend``) or to
the backend that the URL's scheme names.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from .layouts import Layout
from .validate import seconds, sharing, table_growth, table_shape, validate_name

DEFAULT_CAPACITY = 10_000
DEFAULT_KEY_SIZE = 64


def open(name: str, layout: Layout, capacity: int = DEFAULT_CAPACITY,
         key_size: int = DEFAULT_KEY_SIZE, backend: Optional[str] = None, *,
         create: bool = True, mode: Optional[int] = None, group: Any = None,
         owner: Any = None, stripe_poll: Optional[float] = None,
         stall_timeout: Optional[float] = None, max_capacity: Optional[int] = None,
         **backend_options: Any) -> Any:
    """Create table ``name`` or attach to it, from any process, in any order.

    ``layout`` is ``Counter()``, ``Lock()``/``Lock(rw=True)`` or
    ``Struct(**fields)``; ``capacity`` keys are guaranteed to fit; a key's
    encoding may take up to ``key_size`` bytes.  Attaching with another layout,
    capacity or key size raises ``LayoutMismatch``.  ``create=False`` only
    attaches (``TableNotFound`` if there is none).

    Sharing (shared memory; see the README's "Who may use a table"): by
    default a table is this user's alone (mode 0o600), and an existing one is
    used only if this user (or root) owns it and nobody else may write it.
    ``mode`` sets the permissions of a new segment and its semaphores;
    ``group`` (a name or gid) gives a new table to that group (mode 0o660
    unless told otherwise) and lets this process use a table of that group;
    ``owner`` (a name or uid; creating for another user needs root) creates
    the table for that user, and lets this process use that user's table.
    Pass the same ``mode``/``group``/``owner`` in every process.

    ``stripe_poll`` and ``stall_timeout`` (seconds, default 0.1 and 2; see
    :mod:`shmdict.stripes`) bound how long a process that died holding a
    stripe lock can stall this process: at most ``stripe_poll`` when it died
    after recording itself, ``stall_timeout + stripe_poll`` otherwise.

    ``max_capacity`` (default ``capacity``: a fixed-size table) lets a
    shared-memory table grow online: when its ``capacity`` keys are in use it
    adds tiers (new segments, each as large as the table so far, probed in
    order; keys and their values never move, so other processes go on
    updating them meanwhile), and raises ``TableFull`` only at
    ``max_capacity``.  It is fixed by the table's creator: attaching
    compares layout, capacity and key size only, and takes max_capacity
    from the table (``table.max_capacity``).  On Redis, which has no slot
    array to size, the table's limit is ``max_capacity``.

    ``backend="redis://host:port/db"`` puts the same table on a Redis server.
    """
    validate_name(name)
    if not isinstance(layout, Layout):
        raise TypeError(f"layout must be shmdict.Counter(), Lock() or Struct(...), "
                        f"not {layout!r}")
    table_shape(capacity, key_size)         # the same bounds on every backend
    max_capacity = table_growth(capacity, max_capacity)
    _check_recovery(stripe_poll, stall_timeout)
    shared = sharing(mode, group, owner)
    if backend is not None:
        if group is not None or owner is not None:
            raise TypeError("group= and owner= are for shared-memory tables, not a backend")
        return _remote(backend).open_table(backend, name, layout, max_capacity, key_size,
                                           create=create, **backend_options)
    if backend_options:
        raise TypeError(f"unexpected options {sorted(backend_options)} without a backend")
    from .backends import shm
    return shm.open_table(name, layout, capacity, key_size, create=create, sharing=shared,
                          stripe_poll=stripe_poll, stall_timeout=stall_timeout,
                          max_capacity=max_capacity)


def attach(name: str, *, stripe_poll: Optional[float] = None,
           stall_timeout: Optional[float] = None, attach_timeout: float = 5.0,
           mode: Optional[int] = None, group: Any = None, owner: Any = None) -> Any:
    """Attach to an existing shared-memory table whatever its layout (for tools
    such as the CLI).

    ``attach_timeout`` bounds the wait for a table whose creator has not
    finished writing its header (``CorruptSegment`` after it).  ``mode``,
    ``group`` and ``owner`` say which sharing this process accepts, as in
    :func:`open`.
    """
    validate_name(name)
    _check_recovery(stripe_poll, stall_timeout)
    shared = sharing(mode, group, owner)
    seconds(attach_timeout, "attach_timeout")
    from .backends import shm
    return shm.attach_table(name, stripe_poll=stripe_poll, stall_timeout=stall_timeout,
                            attach_timeout=attach_timeout, sharing=shared)


def unlink(name: str, backend: Optional[str] = None) -> bool:
    """Destroy table ``name`` (segment and semaphores); True if it existed."""
    validate_name(name)
    if backend is not None:
        return _remote(backend).unlink_table(backend, name)
    from .backends import shm
    return shm.unlink_table(name)


def list_tables() -> List[str]:
    """Names of the shared-memory tables on this host (Linux: from /dev/shm)."""
    from .backends import shm
    return shm.list_tables()


def _check_recovery(stripe_poll: Optional[float], stall_timeout: Optional[float]) -> None:
    """Reject bad recovery settings before any table is created."""
    if stripe_poll is not None:
        seconds(stripe_poll, "stripe_poll")
    if stall_timeout is not None:
        seconds(stall_timeout, "stall_timeout")


def _remote(backend: object) -> Any:
    """The backend module that serves URL ``backend`` (only Redis today)."""
    if not isinstance(backend, str) or "://" not in backend:
        raise ValueError(f"backend must be a URL such as 'redis://127.0.0.1:6379/0', "
                         f"not {backend!r}")
    from .backends import redis
    if backend.split("://", 1)[0].lower() not in redis.SCHEMES:
        raise ValueError(f"unknown backend {backend!r}: shmdict knows "
                         f"{', '.join(s + '://' for s in redis.SCHEMES)}")
    return redis


def save(table: Any, path: Any, *, timeout: float = 10.0) -> Dict[str, Any]:
    """Write a snapshot of ``table`` (a table, or the name of a shared-memory
    table) to the file ``path``, atomically (a temporary file renamed into
    place); returns what was saved (name, layout, count, bytes, path).

    A shared-memory table is saved consistently: its stripes are held while
    it is walked, so no insert or delete interleaves, and each value is read
    atomically; a concurrent add to an existing key lands, per key, before
    or after the snapshot (see :mod:`shmdict.backends.shm.snapshot`).
    ``timeout`` bounds the wait for a stripe a live process holds.  Another
    backend's table (Redis) is saved from its ``items()``: consistent per
    key only.  Lock tables are saved as keys (never held), with their
    fencing counter.
    """
    from . import snapshot
    seconds(timeout, "timeout")
    if isinstance(table, str):
        validate_name(table)
        from .backends import shm
        with shm.attach_table(table) as attached:
            return save(attached, path, timeout=timeout)
    from .backends import shm
    if isinstance(table, shm.Table):
        from .backends.shm import snapshot as shm_snapshot
        entries, fence = shm_snapshot.take(table, timeout)
    else:
        entries, fence = snapshot.generic_entries(table), 0
    data = snapshot.encode(table.name, table.layout, table.capacity, table.key_size,
                           entries, fence, getattr(table, "max_capacity", table.capacity))
    snapshot.write_file(path, data)
    return {"name": table.name, "layout": repr(table.layout), "count": len(entries),
            "fence": fence, "bytes": len(data), "path": str(path)}


def load(path: Any, name: Optional[str] = None, *, replace: bool = False,
         merge: bool = False, backend: Optional[str] = None) -> Any:
    """Recreate a table from the snapshot file ``path`` (see :func:`save`) and
    return it open: the same layout, capacity, max_capacity and key size,
    under the saved name or ``name``.

    The whole file is read and checked first (``shmdict.snapshot.SnapshotError``
    for a truncated, damaged or foreign file), so a bad file creates nothing.
    A table of that name that exists is refused (``SnapshotError``) unless
    ``replace`` (remove it first: refused while processes have it mapped)
    or ``merge`` (load into it: Counter values are added, exactly, even under
    concurrent adds; Struct records are set; Lock keys are created free).
    Processes that attach while a new table is filling see it fill.  A new
    Lock table's fencing counter starts at the saved one (a merge keeps the
    live table's).
    ``backend`` loads into a table on that backend (Redis) instead.
    """
    from . import snapshot
    if replace and merge:
        raise ValueError("pass replace=True or merge=True, not both")
    snap = snapshot.read_file(path)
    target = snap.name if name is None else name
    validate_name(target)
    shape = (snap.layout, snap.capacity, snap.key_size)
    if backend is not None:
        return _load_remote(snap, target, backend, replace, merge)
    from .backends import shm
    from .backends.shm import snapshot as shm_snapshot
    from .backends.shm.inspection import mapped_by
    exists = target in shm.list_tables()
    if exists and merge:
        table = shm.attach_table(target)
        try:
            # A live table keeps its own fencing counter: raising it here
            # could race with acquires (it is a load and a store, not a CAS).
            snapshot.fill(table, snap)
        except BaseException:
            table.close()
            raise
        return table
    if exists and replace:
        users = mapped_by(target)
        if users:
            raise snapshot.SnapshotError(
                f"table {target!r} is in use by "
                f"{', '.join('pid ' + str(p['pid']) for p in users)}; replacing it would "
                f"leave them on the removed table. Stop them first, or merge into it")
        shm.unlink_table(target)
    elif exists:
        raise snapshot.SnapshotError(
            f"table {target!r} exists; load with replace=True (`--replace`) to remove it "
            f"first, merge=True (`--merge`) to load into it, or name=... another name")
    table = shm.open_table(target, *shape, max_capacity=snap.max_capacity)
    if not table._segment.created:
        table.close()
        raise snapshot.SnapshotError(f"table {target!r} was created by another process "
                                     f"while loading; nothing was loaded into it")
    try:
        shm_snapshot.raise_fence(table, snap.fence)
        snapshot.fill(table, snap)
    except BaseException:
        table.unlink()            # a failed load leaves no half table
        raise
    return table


def _load_remote(snap: Any, target: str, backend: str, replace: bool, merge: bool) -> Any:
    """:func:`load` onto a remote backend: the table is opened there (created
    if missing) and filled with its verbs; ``replace`` clears it first."""
    from . import snapshot
    module = _remote(backend)
    if replace:
        module.unlink_table(backend, target)
    # (A Redis table's limit is its max_capacity, as shmdict.open passes it.)
    table = module.open_table(backend, target, snap.layout, snap.max_capacity, snap.key_size,
                              create=True)
    try:
        if not (replace or merge) and len(table):
            raise snapshot.SnapshotError(
                f"table {target!r} on {backend} holds keys; load with replace=True or "
                f"merge=True")
        snapshot.fill(table, snap)
    except BaseException:
        table.close()
        raise
    return table
