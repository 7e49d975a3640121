"""``shmdict.open``, ``attach``, ``unlink`` and ``list_tables``: the entry points.

The only module that knows both backends: it checks the arguments every
backend shares, then hands the table to shared memory (no ``backend``) or to
the backend that the URL's scheme names.
"""
from __future__ import annotations

from typing import Any, List, Optional

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
