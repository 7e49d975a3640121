"""A ``prometheus_client`` collector that exposes a shmdict Counter table.

Every gunicorn worker adds to one shared table; whichever worker answers
``/metrics`` reads the same table, so the numbers are exact across workers
without ``PROMETHEUS_MULTIPROC_DIR`` and its per-pid files (which grow with
every worker ever started, and need cleaning when workers die)::

    import shmdict
    from shmdict.prometheus import register_table

    requests = shmdict.open("myapp.requests", shmdict.Counter())
    register_table(requests, "myapp_requests", "HTTP requests served",
                   labelnames=("method", "route", "status"))
    ...
    requests.add(("GET", "/items", 200))     # in any worker

    # /metrics:  myapp_requests_total{method="GET",route="/items",status="200"} 1234.0

Keys become labels: with ``labelnames`` of length *n*, a tuple key of *n*
elements gives one sample labelled by them in order (a single name also takes
a plain key).  Without ``labelnames`` each key is one sample labelled
``key="..."`` (tuple elements joined by ``/``).  Keys of another arity are left
out (:attr:`TableCollector.skipped` counts them on the last scrape) rather
than failing the whole scrape.  ``str`` elements are used as they are,
``bytes`` are decoded as UTF-8 (invalid bytes escaped), ints written in
decimal.

A scrape reads the table with ``items()``: a snapshot of each key, no lock,
no effect on the workers' adds.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Iterator, Optional, Sequence, Tuple

from prometheus_client.core import (
    REGISTRY,
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)

_KINDS = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily}
# The classic name rules, which every Prometheus server accepts (newer
# prometheus_client versions also allow quoted UTF-8 names; older servers do not).
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _label_value(part: Any) -> str:
    if isinstance(part, bytes):
        return part.decode("utf-8", "backslashreplace")
    return str(part)


class TableCollector:
    """Exposes the Counter table (or view) ``table`` as the metric ``name``.

    ``kind`` is ``"counter"`` (the default; the sample is ``name_total``) or
    ``"gauge"`` for values that go down.  ``const_labels`` are added to every
    sample (e.g. ``{"app": "shop"}``).
    """

    def __init__(self, table: Any, name: str, documentation: str = "",
                 labelnames: Optional[Sequence[str]] = None, *, kind: str = "counter",
                 const_labels: Optional[dict] = None) -> None:
        if kind not in _KINDS:
            raise ValueError(f"kind must be 'counter' or 'gauge', not {kind!r}")
        if not callable(getattr(table, "items", None)):
            raise TypeError(f"table must be a shmdict table or view, not {table!r}")
        if labelnames is not None:
            if isinstance(labelnames, str) or not all(isinstance(n, str) for n in labelnames):
                raise TypeError("labelnames must be a sequence of str, e.g. ('method', 'route')")
            labelnames = tuple(labelnames)
            if not labelnames:
                raise ValueError("labelnames must not be empty (leave it None for key=...)")
        const_labels = dict(const_labels or {})
        self.table = table
        self.name = name
        self.documentation = documentation or f"shmdict table {getattr(table, 'name', name)}"
        self.kind = kind
        self.labelnames: Optional[Tuple[str, ...]] = labelnames
        self.const_labels = const_labels
        self.skipped = 0
        if not isinstance(name, str) or not _METRIC_NAME.fullmatch(name):
            raise ValueError(f"bad metric name {name!r}: use letters, digits, '_' and ':'")
        for label in self._all_labelnames():
            if not isinstance(label, str) or not _LABEL_NAME.fullmatch(label) \
                    or label.startswith("__"):
                raise ValueError(f"bad label name {label!r}: use letters, digits and '_'")
        if len(set(self._all_labelnames())) != len(self._all_labelnames()):
            raise ValueError(f"duplicate label names in {self._all_labelnames()}")

    def _all_labelnames(self) -> Tuple[str, ...]:
        return tuple(self.const_labels) + (self.labelnames or ("key",))

    def _empty(self) -> Metric:
        family = _KINDS[self.kind](self.name, self.documentation,
                                   labels=self._all_labelnames())
        return family

    def _labels(self, key: Any) -> Optional[Tuple[str, ...]]:
        if self.labelnames is None:
            parts = key if isinstance(key, tuple) else (key,)
            return ("/".join(_label_value(p) for p in parts),)
        parts = key if isinstance(key, tuple) else (key,)
        if len(parts) != len(self.labelnames):
            return None
        return tuple(_label_value(p) for p in parts)

    def samples(self) -> Iterator[Tuple[Tuple[str, ...], int]]:
        """``(label values, value)`` per key of the table, as a scrape sees them."""
        skipped = 0
        for key, value in self.table.items():
            labels = self._labels(key)
            if labels is None:
                skipped += 1
                continue
            yield labels, value
        self.skipped = skipped

    def collect(self) -> Iterable[Metric]:
        family = self._empty()
        const = tuple(self.const_labels.values())
        for labels, value in self.samples():
            family.add_metric(const + labels, value)
        return [family]

    def describe(self) -> Iterable[Metric]:
        # Registration calls describe(): no need to scan the table for that.
        return [self._empty()]


def register_table(table: Any, name: str, documentation: str = "",
                   labelnames: Optional[Sequence[str]] = None, *, registry: Any = REGISTRY,
                   kind: str = "counter", const_labels: Optional[dict] = None
                   ) -> TableCollector:
    """Build a :class:`TableCollector` and register it with ``registry``; return it."""
    collector = TableCollector(table, name, documentation, labelnames, kind=kind,
                               const_labels=const_labels)
    registry.register(collector)
    return collector
