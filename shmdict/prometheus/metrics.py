"""prometheus_client's metric classes, their values in one shared table.

Each class is prometheus_client's own, subclassed: the constructor, names,
``labels(...)`` (and its errors), ``time()``, ``track_inprogress()``,
``count_exceptions()``, ``set_to_current_time()`` are prometheus_client's.
What changes is where values live: in the table of
:func:`shmdict.prometheus.configure`, updated by the C core's atomic float
add, so every process's metrics are one set, exact, whichever process is
scraped.  ``remove(...)`` and ``clear()`` delete the series for every
process (a process that still holds a child object and updates it starts
that series again from 0).  No ``_created`` samples (as multiprocess mode),
no exemplars (accepted, validated, not stored).
"""
from __future__ import annotations

import time
from bisect import bisect_left
from typing import Any, Iterable, Optional, Sequence

import prometheus_client.metrics as pm
from prometheus_client.registry import REGISTRY
try:                                       # prometheus_client >= 0.20
    from prometheus_client.validation import _validate_exemplar
except ImportError:                        # older releases kept it with the metrics
    from prometheus_client.metrics import _validate_exemplar  # type: ignore[no-redef]

from . import store as _store


def _unobservable(*_: Any) -> None:
    raise ValueError("metric is missing label values: call .labels(...) first")


class _NoKeys:
    """The bucket keys of a labelled parent: using them says what is missing."""

    def __getitem__(self, index: int) -> Any:
        _unobservable()


class _Shared:
    """What the shared classes have in common: the store, collect, remove, clear."""

    _store_kind = ""
    _store_extra: Sequence[str] = ()
    _add = staticmethod(_unobservable)
    _key: Optional[tuple] = None

    def _bind_store(self) -> None:
        self._store = _store.current_store()

    def _declare(self) -> None:
        if not self._labelvalues:                   # a parent, or label-less
            self._store.declare(self, self._store_kind, self._store_extra)

    def collect(self) -> Iterable[Any]:
        return self._store.families(only=self)

    def remove(self, *labelvalues: Any) -> None:
        if not self._labelnames:
            raise ValueError(f"No label names were set when constructing {self}")
        if len(labelvalues) != len(self._labelnames):
            raise ValueError("Incorrect label count (expected %d, got %s)"
                             % (len(self._labelnames), labelvalues))
        labelvalues = tuple(str(v) for v in labelvalues)
        with self._lock:
            self._metrics.pop(labelvalues, None)
        self._store.delete_series(self._name, labelvalues)

    def remove_by_labels(self, labels: dict) -> None:
        super().remove_by_labels(labels)          # type: ignore[misc]
        pos = {self._labelnames.index(k): str(v) for k, v in labels.items()}
        for key in self._store.table.keys():
            if key[0] == self._name and key[1] != "#" \
                    and all(key[3 + p] == v for p, v in pos.items()):
                self._store.table.delete(key)

    def clear(self) -> None:
        if not self._labelnames:
            return
        with self._lock:
            self._metrics = {}
        self._store.delete_series(self._name)


class _Value:
    """``metric._value.get()``, which tests often read: this process's series."""

    def __init__(self, metric: Any) -> None:
        self._metric = metric

    def get(self) -> float:
        return self._metric._store.read(self._metric._key)

    def set(self, value: float) -> None:
        self._metric._store.set(self._metric._key, float(value))


class Counter(_Shared, pm.Counter):
    __doc__ = pm.Counter.__doc__
    _store_kind = "counter"

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (),
                 namespace: str = "", subsystem: str = "", unit: str = "",
                 registry: Any = REGISTRY, _labelvalues: Optional[Sequence[str]] = None
                 ) -> None:
        self._bind_store()
        super().__init__(name, documentation, labelnames, namespace, subsystem, unit,
                         registry, _labelvalues)
        self._declare()

    def _metric_init(self) -> None:
        self._key = (self._name, "_total", 0) + self._labelvalues
        self._store.ensure(self._key)
        self._add = self._store.add
        self._value = _Value(self)
        # The hot path, one C call: an instance attribute shadows the method
        # below (which stays for a table without C cells).
        cells = self._store.cells((self._key,), check=_validate_exemplar)
        if cells is not None:
            self.inc = cells.inc

    def inc(self, amount: float = 1, exemplar: Optional[dict] = None) -> None:
        """Increment the counter by ``amount`` (a float, not negative)."""
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self._add(self._key, amount)
        if exemplar:
            _validate_exemplar(exemplar)

    def reset(self) -> None:
        self._store.set(self._key, 0.0)


class Gauge(_Shared, pm.Gauge):
    __doc__ = pm.Gauge.__doc__
    _store_kind = "gauge"
    _most_recent = False
    _per_process = False
    _owner = 0

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (),
                 namespace: str = "", subsystem: str = "", unit: str = "",
                 registry: Any = REGISTRY, _labelvalues: Optional[Sequence[str]] = None,
                 multiprocess_mode: str = "all") -> None:
        self._bind_store()
        self._store_extra = (multiprocess_mode,)
        super().__init__(name, documentation, labelnames, namespace, subsystem, unit,
                         registry, _labelvalues, multiprocess_mode=multiprocess_mode)
        self._declare()

    def _metric_init(self) -> None:
        mode = self._multiprocess_mode
        self._per_process = mode in _store.PER_PROCESS_MODES
        self._stamped = mode == "livemostrecent"
        self._most_recent = mode in pm.Gauge._MOST_RECENT_MODES
        self._owner = -1
        self._rekey()
        self._value = _Value(self)

    def _rekey(self) -> None:
        """This process's series (a forked child gets its own)."""
        self._owner = _store.ident() if self._per_process else 0
        self._key = (self._name, "", self._owner) + self._labelvalues
        self._stamp_key = (self._name, "@", self._owner) + self._labelvalues
        self._store.ensure(self._key)
        self._add = self._store.add
        self._bind_cells()

    def _bind_cells(self) -> None:
        """inc / dec / set as one C call each (instance attributes shadowing
        the methods below), where the mode allows: not for the mostrecent
        modes' inc and dec (which raise), nor livemostrecent's set (which
        stamps).  A per-process series in a forked child calls
        :meth:`_forked`, which rekeys."""
        for verb in ("inc", "dec", "set"):
            self.__dict__.pop(verb, None)
        cells = self._store.cells((self._key,), owner=self._owner if self._per_process else 0,
                                  fallback=self._forked)
        if cells is None:
            return
        if not self._most_recent:
            self.inc = cells.add
            self.dec = cells.sub
        if not self._stamped:
            self.set = cells.set

    def _forked(self, verb: str, value: float) -> None:
        """A C cell's call in a forked child: this process's own series."""
        self._rekey()
        getattr(type(self), verb)(self, value)

    def inc(self, amount: float = 1) -> None:
        """Increment the gauge by ``amount``."""
        if self._most_recent:
            raise RuntimeError("inc must not be used with the mostrecent mode")
        if self._owner != _store._IDENT[0] and self._per_process:
            self._rekey()
        self._add(self._key, amount)

    def dec(self, amount: float = 1) -> None:
        """Decrement the gauge by ``amount``."""
        if self._most_recent:
            raise RuntimeError("dec must not be used with the mostrecent mode")
        if self._owner != _store._IDENT[0] and self._per_process:
            self._rekey()
        self._add(self._key, -amount)

    def set(self, value: float) -> None:
        """Set the gauge to ``value``."""
        if self._key is None:
            _unobservable()
        if self._owner != _store._IDENT[0] and self._per_process:
            self._rekey()
        self._store.set(self._key, float(value))
        if self._stamped:
            self._store.set(self._stamp_key, time.time())

    def set_function(self, f: Any) -> None:
        raise NotImplementedError(
            "set_function: a callback's value lives in one process; in a shared table "
            "set the gauge from the process that knows it")


class Summary(_Shared, pm.Summary):
    __doc__ = pm.Summary.__doc__
    _store_kind = "summary"

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (),
                 namespace: str = "", subsystem: str = "", unit: str = "",
                 registry: Any = REGISTRY, _labelvalues: Optional[Sequence[str]] = None
                 ) -> None:
        self._bind_store()
        super().__init__(name, documentation, labelnames, namespace, subsystem, unit,
                         registry, _labelvalues)
        self._declare()

    def _metric_init(self) -> None:
        self._count_key = (self._name, "_count", 0) + self._labelvalues
        self._key = self._sum_key = (self._name, "_sum", 0) + self._labelvalues
        self._store.ensure(self._count_key)
        self._store.ensure(self._sum_key)
        self._add = self._store.add
        cells = self._store.cells((self._count_key, self._sum_key))
        if cells is not None:
            self.observe = cells.observe       # one C call (see Counter)

    def observe(self, amount: float) -> None:
        """Observe ``amount``: ``_count`` += 1, ``_sum`` += amount."""
        add = self._add
        add(self._count_key, 1.0)
        add(self._sum_key, amount)


class Histogram(_Shared, pm.Histogram):
    __doc__ = pm.Histogram.__doc__
    _store_kind = "histogram"
    _bucket_keys: Any = _NoKeys()

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (),
                 namespace: str = "", subsystem: str = "", unit: str = "",
                 registry: Any = REGISTRY, _labelvalues: Optional[Sequence[str]] = None,
                 buckets: Sequence[Any] = pm.Histogram.DEFAULT_BUCKETS) -> None:
        self._bind_store()
        self._prepare_buckets(buckets)
        self._store_extra = _store.le_strings(self._upper_bounds)
        super().__init__(name, documentation, labelnames, namespace, subsystem, unit,
                         registry, _labelvalues, buckets=buckets)
        self._declare()

    def _metric_init(self) -> None:
        self._bucket_keys = tuple((self._name, "_bucket", le) + self._labelvalues
                                  for le in self._store_extra)
        self._key = self._sum_key = (self._name, "_sum", 0) + self._labelvalues
        for key in self._bucket_keys + (self._sum_key,):
            self._store.ensure(key)
        self._add = self._store.add
        # One C call: the bucket search and the two float adds (see Counter).
        cells = self._store.cells(self._bucket_keys + (self._sum_key,),
                                  bounds=tuple(self._upper_bounds), check=_validate_exemplar)
        if cells is not None:
            self.observe = cells.observe

    def observe(self, amount: float, exemplar: Optional[dict] = None) -> None:
        """Observe ``amount``: its bucket += 1, ``_sum`` += amount."""
        add = self._add
        if amount == amount:                       # NaN falls in no bucket
            add(self._bucket_keys[bisect_left(self._upper_bounds, amount)], 1.0)
        add(self._sum_key, amount)
        if exemplar:
            _validate_exemplar(exemplar)


class Enum(_Shared, pm.Enum):
    """prometheus_client's Enum (a state set), one shared state per label set:
    the last ``state()`` of any process wins."""
    _store_kind = "stateset"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 namespace: str = "", subsystem: str = "", unit: str = "",
                 registry: Any = REGISTRY, _labelvalues: Optional[Sequence[str]] = None,
                 states: Optional[Sequence[str]] = None) -> None:
        self._bind_store()
        self._store_extra = tuple(states or ())
        super().__init__(name, documentation, labelnames, namespace, subsystem, unit,
                         registry, _labelvalues, states=states)
        self._declare()

    def _metric_init(self) -> None:
        self._key = (self._name, "", 0) + self._labelvalues
        self._store.ensure(self._key)

    def state(self, state: str) -> None:
        """Set the state (one of ``states``), for every process."""
        self._raise_if_not_observable()
        self._store.set(self._key, float(self._states.index(state)))
