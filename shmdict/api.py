"""``shmdict.open`` and ``shmdict.unlink``: the entry points."""
from __future__ import annotations

from typing import Any, Optional

from .keys import validate_name
from .layouts import Layout
from .segment import Geometry, Segment, destroy

DEFAULT_CAPACITY = 10_000
DEFAULT_KEY_SIZE = 64


def open(name: str, layout: Layout, capacity: int = DEFAULT_CAPACITY,
         key_size: int = DEFAULT_KEY_SIZE, backend: Optional[str] = None, *,
         create: bool = True, mode: int = 0o600, stripe_poll: Optional[float] = None,
         stall_timeout: Optional[float] = None, **backend_options: Any) -> Any:
    """Create table ``name`` or attach to it, from any process, in any order.

    ``layout`` is ``Counter()``, ``Lock()``/``Lock(rw=True)`` or
    ``Struct(**fields)``; ``capacity`` keys are guaranteed to fit; a key's
    encoding may take up to ``key_size`` bytes.  Attaching with another layout,
    capacity or key size raises ``LayoutMismatch``.  ``create=False`` only
    attaches (``TableNotFound`` if there is none).  ``mode`` sets the
    permissions of a new segment and its semaphores: 0600 keeps the table to
    this user; 0660 shares it with the group, deliberately.

    ``stripe_poll`` and ``stall_timeout`` (seconds, default 0.1 and 2; see
    :mod:`shmdict.stripes`) bound how long a process that died holding a
    stripe lock can stall this process: at most ``stripe_poll`` when it died
    after recording itself, ``stall_timeout + stripe_poll`` otherwise.

    ``backend="redis://host:port/db"`` puts the same table on a Redis server.
    """
    validate_name(name)
    if not isinstance(layout, Layout):
        raise TypeError(f"layout must be shmdict.Counter(), Lock() or Struct(...), "
                        f"not {layout!r}")
    geometry = Geometry(layout, capacity, key_size)
    _check_recovery(stripe_poll, stall_timeout)
    if backend is not None:
        from .backends import open_backend
        return open_backend(backend, name, layout, capacity, key_size, create=create,
                            **backend_options)
    if backend_options:
        raise TypeError(f"unexpected options {sorted(backend_options)} without a backend")
    segment = Segment.open(name, geometry, create=create, mode=mode)
    return _configured(layout.table_class()(segment), stripe_poll, stall_timeout)


def attach(name: str, *, stripe_poll: Optional[float] = None,
           stall_timeout: Optional[float] = None, attach_timeout: float = 5.0) -> Any:
    """Attach to an existing table whatever its layout (for tools such as the CLI).

    ``attach_timeout`` bounds the wait for a table whose creator has not
    finished writing its header (``CorruptSegment`` after it).
    """
    validate_name(name)
    _check_recovery(stripe_poll, stall_timeout)
    segment = Segment.open(name, None, create=False, attach_timeout=attach_timeout)
    return _configured(segment.layout.table_class()(segment), stripe_poll, stall_timeout)


def _check_recovery(stripe_poll: Optional[float], stall_timeout: Optional[float]) -> None:
    """Reject bad recovery settings before any table is created."""
    from .stripes import _seconds
    if stripe_poll is not None:
        _seconds(stripe_poll, "stripe_poll")
    if stall_timeout is not None:
        _seconds(stall_timeout, "stall_timeout")


def _configured(table: Any, stripe_poll: Optional[float], stall_timeout: Optional[float]) -> Any:
    """Apply per-table stripe recovery settings (closing the table on bad values)."""
    if stripe_poll is not None or stall_timeout is not None:
        try:
            table._stripes.configure(stripe_poll, stall_timeout)
        except BaseException:
            table.close()
            raise
    return table


def unlink(name: str, backend: Optional[str] = None) -> bool:
    """Destroy table ``name`` (segment and semaphores); True if it existed."""
    validate_name(name)
    if backend is not None:
        from .backends import unlink_backend
        return unlink_backend(backend, name)
    return destroy(name)


def _reattach(name: str, layout: Layout, capacity: int, key_size: int,
              backend: Optional[str]) -> Any:
    """Unpickling a table: attach to it (never silently create a new one)."""
    return open(name, layout, capacity, key_size, backend, create=False)
