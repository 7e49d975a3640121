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
         create: bool = True, mode: int = 0o600, **backend_options: Any) -> Any:
    """Create table ``name`` or attach to it, from any process, in any order.

    ``layout`` is ``Counter()``, ``Lock()``/``Lock(rw=True)`` or
    ``Struct(**fields)``; ``capacity`` keys are guaranteed to fit; a key's
    encoding may take up to ``key_size`` bytes.  Attaching with another layout,
    capacity or key size raises ``LayoutMismatch``.  ``create=False`` only
    attaches (``TableNotFound`` if there is none).  ``mode`` sets the
    permissions of a new segment and its semaphores: 0600 keeps the table to
    this user; 0660 shares it with the group, deliberately.

    ``backend="redis://host:port/db"`` puts the same table on a Redis server.
    """
    validate_name(name)
    if not isinstance(layout, Layout):
        raise TypeError(f"layout must be shmdict.Counter(), Lock() or Struct(...), "
                        f"not {layout!r}")
    geometry = Geometry(layout, capacity, key_size)
    if backend is not None:
        from .backends import open_backend
        return open_backend(backend, name, layout, capacity, key_size, create=create,
                            **backend_options)
    if backend_options:
        raise TypeError(f"unexpected options {sorted(backend_options)} without a backend")
    segment = Segment.open(name, geometry, create=create, mode=mode)
    return layout.table_class()(segment)


def attach(name: str) -> Any:
    """Attach to an existing table whatever its layout (for tools such as the CLI)."""
    validate_name(name)
    segment = Segment.open(name, None, create=False)
    return segment.layout.table_class()(segment)


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
