"""Prometheus metrics for multiprocess apps, in one shared-memory table.

Two ways in:

* **Metric classes** with prometheus_client's interface, a complete
  replacement for its multiprocess mode (no ``PROMETHEUS_MULTIPROC_DIR``, no
  per-pid files, ``remove``/``clear`` work, dead workers' live gauges drop
  out by themselves)::

      import shmdict.prometheus
      shmdict.prometheus.configure("myapp.metrics")    # once, before forking
      from shmdict.prometheus import Counter, Gauge, Histogram, Summary

      REQUESTS = Counter("app_requests", "Requests", ["route"])
      REQUESTS.labels("/items").inc(0.5)
      # /metrics: prometheus_client.generate_latest(REGISTRY), or the
      # multiprocess recipe with shmdict.prometheus.multiprocess

* **register_table** (:mod:`.tables`): expose a plain Counter table whose
  tuple keys become labels.

See :mod:`.store` for how series are kept, :mod:`.metrics` for the classes.
"""
from __future__ import annotations

from . import multiprocess
from .metrics import Counter, Enum, Gauge, Histogram, Summary
from .store import ENV_CAPACITY, ENV_TABLE, configure
from .tables import TableCollector, register_table

__all__ = ["Counter", "Gauge", "Histogram", "Summary", "Enum", "configure",
           "multiprocess", "register_table", "TableCollector", "ENV_TABLE", "ENV_CAPACITY"]
