"""The shared-memory backend: one POSIX shared-memory segment per table.

Bottom to top:

* ``format.h`` (with ``_core.c``): the segment format, field by field, and
  its version; ``_core`` exports every offset and size Python needs;
* :mod:`.segment`: creating, attaching and removing a segment and its
  stripe semaphores, and the geometry of a table;
* ``_core``: the C core (probe loop, slot atomics, locks, records);
* :mod:`.stripes`: crash-safe stripe locks around the semaphores;
* :mod:`.table` and one module per layout (:mod:`.counter`,
  :mod:`.rowlock`, :mod:`.records`): the tables;
* :mod:`.check` and :mod:`.inspect`: consistency reports and the read-only
  views the CLI shows.

This module is the backend's entry: :func:`open_table`, :func:`attach_table`,
:func:`unlink_table` and :func:`list_tables`.
"""
from __future__ import annotations

import glob
import os
from typing import Dict, List, Optional

try:
    from . import _core
except ImportError:
    if glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "_core*.so")):
        raise                # built, but it does not load: that error says why
    # Python's own message here ("cannot import name '_core' from partially
    # initialized module") sends people after a circular import that is not
    # there; say what actually happened instead.
    _here = os.path.dirname(os.path.abspath(__file__))
    raise ImportError(
        f"shmdict's C core is not built in {_here}. If this is the source tree "
        f"(Python imports it first when run from the repository root), either "
        f"build it in place with `pip install -e .` here, or run Python from "
        f"another directory to use the installed shmdict.") from None

from ...layouts import Layout
from ...validate import Sharing
from .counter import CounterTable
from .records import StructTable
from .rowlock import LockTable
from .segment import Geometry, Segment, destroy, list_segments
from .table import Table

#: The table class of each layout kind.
TABLE_CLASSES: Dict[str, type] = {"Counter": CounterTable, "Lock": LockTable,
                                  "Struct": StructTable}


def open_table(name: str, layout: Layout, capacity: int, key_size: int, *,
               create: bool = True, mode: Optional[int] = None,
               stripe_poll: Optional[float] = None, stall_timeout: Optional[float] = None,
               sharing: Optional[Sharing] = None, max_capacity: Optional[int] = None) -> Table:
    """Create table ``name`` in shared memory or attach to it (see ``shmdict.open``)."""
    geometry = Geometry(layout, capacity, key_size, max_capacity=max_capacity)
    segment = Segment.open(name, geometry, create=create, mode=mode, sharing=sharing)
    return _configured(_table(segment), stripe_poll, stall_timeout)


def attach_table(name: str, *, stripe_poll: Optional[float] = None,
                 stall_timeout: Optional[float] = None, attach_timeout: float = 5.0,
                 sharing: Optional[Sharing] = None) -> Table:
    """Attach to table ``name`` whatever its layout (see ``shmdict.attach``)."""
    if attach_timeout != attach_timeout or attach_timeout < 0:    # NaN or negative
        raise ValueError(f"attach_timeout must be a number of seconds >= 0, "
                         f"got {attach_timeout!r}")
    segment = Segment.open(name, None, create=False, attach_timeout=attach_timeout,
                           sharing=sharing)
    return _configured(_table(segment), stripe_poll, stall_timeout)


def _table(segment: Segment) -> Table:
    """The table on ``segment``; a table this process just created and could
    not set up is removed again, so a failed create leaves nothing behind."""
    try:
        return TABLE_CLASSES[segment.layout.kind](segment)
    except BaseException:
        segment.close()
        if segment.created:
            destroy(segment.name)
        raise


def _configured(table: Table, stripe_poll: Optional[float],
                stall_timeout: Optional[float]) -> Table:
    """Apply per-table stripe recovery settings (closing the table on bad values)."""
    if stripe_poll is not None or stall_timeout is not None:
        try:
            table._stripes.configure(stripe_poll, stall_timeout)
        except BaseException:
            table.close()
            raise
    return table


def unlink_table(name: str) -> bool:
    """Destroy table ``name`` (segment and semaphores); True if it existed."""
    return destroy(name)


def list_tables() -> List[str]:
    """Names of the shared-memory tables on this host."""
    return list_segments()


__all__ = ["TABLE_CLASSES", "open_table", "attach_table", "unlink_table", "list_tables",
           "Table", "CounterTable", "LockTable", "StructTable"]
