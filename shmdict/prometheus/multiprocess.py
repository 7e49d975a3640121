"""Drop-in names for ``prometheus_client.multiprocess``.

The multiprocess recipe's ``/metrics`` handler keeps working with only its
import changed::

    from shmdict.prometheus import multiprocess      # was: from prometheus_client import multiprocess
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    data = generate_latest(registry)

:class:`MultiProcessCollector` renders every metric declared in the shared
table, by any process (those this process never created get the help text
"Multiprocess metric", as in prometheus_client).  :func:`mark_process_dead`
is a no-op: a dead worker's live gauges are dropped by the next scrape.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

from . import store as _store


class MultiProcessCollector:
    """Every metric of the configured table, in one pass over it."""

    def __init__(self, registry: Any, path: Optional[str] = None) -> None:
        self._store = _store.current_store()
        if registry:
            registry.register(self)

    def collect(self) -> Iterable[Any]:
        return self._store.families()


def mark_process_dead(pid: int, path: Optional[str] = None) -> None:
    """Nothing to do: live gauge modes judge processes alive by pid and start time."""
