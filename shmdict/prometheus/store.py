"""The shared table behind :mod:`shmdict.prometheus`'s metrics, and its scrape.

One shmdict Counter table per process (:func:`configure`), whose value words
hold float64 bits (the core's ``add_float`` / ``set_float``).  Keys:

* ``(name, "#", kind, labelnames, extra)``: a metric's declaration (value 0),
  written by every process that creates the metric, so that any process can
  render metrics it never created (:class:`~.multiprocess.MultiProcessCollector`);
  ``kind`` is ``counter``, ``gauge``, ``histogram``, ``summary`` or
  ``stateset``; ``extra`` holds a gauge's mode, a histogram's ``le`` strings,
  an Enum's states;
* ``(name, suffix, extra, *labelvalues)``: a series.  ``suffix`` is the
  sample's (``_total``, ``_sum``, ``_count``, ``_bucket``, ``""``);
  ``extra`` is a histogram bucket's ``le``, a per-process gauge's process
  identity (pid | start time << 32; 0 for the series all processes share
  and for the dead processes' folded values), or 0.

A histogram keeps one counter per bucket, not cumulated: a scrape sums them,
so ``_count`` is the ``+Inf`` bucket by construction.  A scrape drops (and
deletes) the series of dead processes in the live gauge modes, and folds
those of ``sum`` / ``max`` / ``min`` into one series, so the table holds one series per
live process and label set, however many workers came and went (``all``
keeps a series per pid ever seen: that is the mode's meaning).
"""
from __future__ import annotations

import os
from array import array
from collections import defaultdict
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from ..api import open as open_table
from ..backends.shm.counter import float_of_word, word_of_float
from ..backends.shm.processes import process_alive, process_pid, this_process
from ..errors import TableFull
from ..layouts import Counter as CounterLayout

ENV_TABLE = "SHMDICT_PROMETHEUS_TABLE"
ENV_CAPACITY = "SHMDICT_PROMETHEUS_CAPACITY"
DEFAULT_CAPACITY = 20_000
DEFAULT_KEY_SIZE = 256

LIVE_MODES = frozenset(("liveall", "livesum", "livemax", "livemin", "livemostrecent"))
#: Gauge modes whose series are per process (the others share one series).
PER_PROCESS_MODES = frozenset(("all", "liveall", "sum", "livesum", "max", "min",
                               "livemax", "livemin", "livemostrecent"))
Row = Tuple[tuple, float]

# ---------------------------------------------------------------- identity
_IDENT = [0]


def _forget_ident() -> None:
    _IDENT[0] = 0


os.register_at_fork(after_in_child=_forget_ident)


def ident() -> int:
    """This process's identity; a forked child computes its own."""
    if not _IDENT[0]:
        _IDENT[0] = this_process()
    return _IDENT[0]


# ------------------------------------------------------------------- store
class Store:
    """A metrics table: the verbs the metric classes bind, and the scrape."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self.add: Callable[..., float] = table.add_float
        self.set: Callable[[Any, float], None] = table.set_float
        self.metrics: Dict[str, Any] = {}        # name -> a metric made here (its help)

    # ----------------------------------------------------------- writing
    def ensure(self, key: tuple) -> None:
        """Create ``key`` at 0.0 if missing; sweep dead series once if full."""
        try:
            self.add(key, 0.0)
        except TableFull:
            self.sweep()
            self.add(key, 0.0)

    def declare(self, metric: Any, kind: str, extra: Sequence[str]) -> None:
        self.metrics.setdefault(metric._name, metric)
        self.ensure((metric._name, "#", kind, tuple(metric._labelnames), tuple(extra)))

    def cells(self, keys: Sequence[tuple], **options: Any) -> Any:
        """The C series of one metric child (``FloatCells``), or None when the
        table has none (then the metric keeps its Python methods)."""
        make = getattr(self.table, "float_cells", None)
        return None if make is None else make(tuple(keys), **options)

    def read(self, key: tuple) -> float:
        word, _ = self.table.read(key)
        return float_of_word(word)

    def delete_series(self, name: str, labelvalues: Optional[tuple] = None) -> None:
        """Delete the series of ``name`` (those of ``labelvalues`` only, if given)."""
        for key in self.table.keys():
            if key[0] == name and key[1] != "#" \
                    and (labelvalues is None or key[3:] == labelvalues):
                self.table.delete(key)

    # ------------------------------------------------------------ reading
    def rows(self) -> List[Row]:
        items = self.table.items()
        floats = array("d", array("q", [w for _, w in items]).tobytes())
        return [(key, floats[i]) for i, (key, _) in enumerate(items)]

    @staticmethod
    def group(rows: Iterable[Row]) -> Tuple[Dict[str, list], Dict[str, List[Row]]]:
        """``(declarations by name, series rows by name)``."""
        decls: Dict[str, list] = defaultdict(list)
        series: Dict[str, List[Row]] = defaultdict(list)
        for row in rows:
            key = row[0]
            if not isinstance(key, tuple) or len(key) < 3 or not isinstance(key[0], str):
                continue
            if key[1] == "#":
                if len(key) == 5:
                    decls[key[0]].append(key[2:])
            else:
                series[key[0]].append(row)
        return decls, series

    def sweep(self, rows: Optional[List[Row]] = None) -> bool:
        """Delete the dead processes' series of live gauges, fold those of
        ``sum`` / ``max`` / ``min`` into the shared series (id 0); True if
        anything changed."""
        decls, series = self.group(self.rows() if rows is None else rows)
        alive: Dict[int, bool] = {}
        changed = False
        for name, decl in decls.items():
            kind, _, extra = decl[0]
            if kind != "gauge" or not extra or extra[0] not in PER_PROCESS_MODES \
                    or extra[0] == "all":
                continue
            if self._sweep_gauge(extra[0], series.get(name, ()), alive):
                changed = True
        return changed

    def _sweep_gauge(self, mode: str, rows: Iterable[Row], alive: Dict[int, bool]) -> bool:
        changed = False
        for key, _ in rows:
            owner = key[2]
            if not isinstance(owner, int) or owner == 0:
                continue
            if owner not in alive:
                alive[owner] = process_alive(owner)
            if alive[owner]:
                continue
            word, existed = self.table.load_and_delete(key)
            changed = True
            if existed and key[1] == "" and mode in ("sum", "max", "min"):
                shared = key[:2] + (0,) + key[3:]
                if mode == "sum":
                    self.add(shared, float_of_word(word))
                else:
                    self._fold(shared, float_of_word(word), mode == "max")
        return changed

    def _fold(self, key: tuple, value: float, larger: bool) -> None:
        """Keep the max (or min) of a dead process's last value in the shared series."""
        for _ in range(10_000):
            word, exists = self.table.read(key)
            if exists:
                current = float_of_word(word)
                if (value <= current) if larger else (value >= current):
                    return
            if self.table.cas(key, word, word_of_float(value), set_on_not_exists=True):
                return

    def scrape(self) -> Tuple[Dict[str, list], Dict[str, List[Row]]]:
        """Declarations and series, the dead processes' gauges swept first."""
        rows = self.rows()
        if self.sweep(rows):
            rows = self.rows()
        return self.group(rows)

    # ---------------------------------------------------------- rendering
    def families(self, only: Optional[Any] = None) -> List[Metric]:
        """Metric families of every declared metric (or of the metric ``only``)."""
        decls, series = self.scrape()
        out = []
        if only is not None:
            decl = (only._store_kind, tuple(only._labelnames), tuple(only._store_extra))
            names = [(only._name, decl)]
        else:
            names = [(name, d[0]) for name, d in sorted(decls.items())]
        for name, decl in names:
            local = only if only is not None else self.metrics.get(name)
            kind, labelnames, extra = decl
            if local is not None:
                family = local._get_metric()
            else:
                family = Metric(name, "Multiprocess metric", kind)
            render(family, kind, labelnames, extra, series.get(name, ()))
            out.append(family)
        return out


def render(family: Metric, kind: str, labelnames: Sequence[str], extra: Sequence[str],
           rows: Iterable[Row]) -> None:
    """Add the samples of one metric's series rows to ``family``."""
    name = family.name
    n = len(labelnames)
    if kind in ("counter", "summary"):
        for key, value in rows:
            if len(key) == n + 3:
                family.add_sample(name + key[1], dict(zip(labelnames, key[3:])), value)
    elif kind == "histogram":
        bounds = list(extra)
        buckets: Dict[tuple, Dict[str, float]] = {}
        sums: Dict[tuple, float] = {}
        for key, value in rows:
            if len(key) != n + 3:
                continue
            lv = key[3:]
            if key[1] == "_bucket":
                b = buckets.setdefault(lv, {})
                b[key[2]] = b.get(key[2], 0.0) + value
            elif key[1] == "_sum":
                sums[lv] = value
        for lv in sorted(set(buckets) | set(sums)):
            labels = dict(zip(labelnames, lv))
            acc = 0.0
            got = buckets.get(lv, {})
            for le in bounds:
                acc += got.get(le, 0.0)
                family.add_sample(name + "_bucket", dict(labels, le=le), acc)
            family.add_sample(name + "_count", labels, acc)
            if not bounds or float(bounds[0]) >= 0:
                family.add_sample(name + "_sum", labels, sums.get(lv, 0.0))
    elif kind == "stateset":
        for key, value in rows:
            if len(key) == n + 3:
                labels = dict(zip(labelnames, key[3:]))
                for i, state in enumerate(extra):
                    family.add_sample(name, dict(labels, **{name: state}),
                                      1.0 if i == int(value) else 0.0)
    elif kind == "gauge":
        _render_gauge(family, extra[0] if extra else "all", labelnames, rows)


def _render_gauge(family: Metric, mode: str, labelnames: Sequence[str],
                  rows: Iterable[Row]) -> None:
    name = family.name
    n = len(labelnames)
    values: Dict[tuple, List[Tuple[int, float]]] = defaultdict(list)
    stamps: Dict[Tuple[tuple, int], float] = {}
    for key, value in rows:
        if len(key) != n + 3 or not isinstance(key[2], int):
            continue
        if key[1] == "@":
            stamps[(key[3:], key[2])] = value
        elif key[1] == "":
            values[key[3:]].append((key[2], value))
    for lv in sorted(values):
        labels = dict(zip(labelnames, lv))
        per = values[lv]
        if mode in ("all", "liveall"):
            for owner, value in sorted(per, key=lambda p: process_pid(p[0])):
                family.add_sample(name, dict(labels, pid=str(process_pid(owner))), value)
        elif mode in ("sum", "livesum"):
            family.add_sample(name, labels, sum(v for _, v in per))
        elif mode in ("max", "livemax"):
            family.add_sample(name, labels, max(v for _, v in per))
        elif mode in ("min", "livemin"):
            family.add_sample(name, labels, min(v for _, v in per))
        elif mode == "mostrecent":
            family.add_sample(name, labels, per[0][1])
        elif mode == "livemostrecent":
            best = max(per, key=lambda p: stamps.get((lv, p[0]), 0.0))
            family.add_sample(name, labels, best[1])


# ----------------------------------------------------------- configuration
_STORE: List[Optional[Store]] = [None]


def configure(table_name: str, capacity: int = DEFAULT_CAPACITY,
              key_size: int = DEFAULT_KEY_SIZE, **open_options: Any) -> Any:
    """Choose this process's metrics table (created or attached); return it.

    Processes that configure the same name share their metrics.  Metrics
    created afterwards use it (those made before keep the table they had).
    ``capacity`` bounds the series (a histogram costs one per bucket plus
    one; a per-process gauge one per live process).  Call it before forking
    workers (gunicorn: in ``gunicorn.conf.py``), or set the environment
    variable ``SHMDICT_PROMETHEUS_TABLE`` (and ``SHMDICT_PROMETHEUS_CAPACITY``).
    """
    current = _STORE[0]
    if current is not None and current.table.name == table_name \
            and not getattr(current.table, "closed", False):
        return current.table
    table = open_table(table_name, CounterLayout(), capacity=capacity, key_size=key_size,
                       **open_options)
    _STORE[0] = Store(table)
    return table


def current_store() -> Store:
    """The configured store (from the environment if :func:`configure` was not called)."""
    store = _STORE[0]
    if store is None:
        name = os.environ.get(ENV_TABLE)
        if not name:
            raise RuntimeError(
                "shmdict.prometheus is not configured: call "
                "shmdict.prometheus.configure('myapp.metrics') before creating metrics "
                f"(before forking workers), or set {ENV_TABLE}=myapp.metrics")
        configure(name, capacity=int(os.environ.get(ENV_CAPACITY, DEFAULT_CAPACITY)))
        store = _STORE[0]
        assert store is not None
    return store


def le_strings(bounds: Sequence[float]) -> Tuple[str, ...]:
    return tuple(floatToGoString(b) for b in bounds)
