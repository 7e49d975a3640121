"""shmdict.prometheus's hot path in C (issue 13): ``inc``, ``dec``, ``set`` and
``observe`` of a metric child are one C call (``_core.FloatCells``, bound at
``labels()`` time), with prometheus_client's behaviour: exact float totals
across real processes, the same buckets as ``bisect_left``, a forked child's
own per-process series, and the errors of the Python methods."""
from __future__ import annotations

import math
import multiprocessing
from bisect import bisect_left

import pytest

pytest.importorskip("prometheus_client")
from prometheus_client import CollectorRegistry  # noqa: E402

import shmdict.prometheus as sp  # noqa: E402
from shmdict.backends.shm import _core  # noqa: E402
from shmdict.prometheus import Counter, Gauge, Histogram, Summary  # noqa: E402

FORK = multiprocessing.get_context("fork")


@pytest.fixture
def table(name):
    t = sp.configure(name, capacity=2_000)
    yield t
    t.close()


@pytest.fixture
def registry(table):
    return CollectorRegistry()


def _is_c(method) -> bool:
    return type(method).__name__ == "builtin_function_or_method"


def test_children_update_through_one_c_call(registry):
    c = Counter("cells_hits", "h", ["route"], registry=registry).labels("/a")
    g = Gauge("cells_level", "l", ["shard"], registry=registry).labels("s")
    h = Histogram("cells_seconds", "s", ["route"], registry=registry).labels("/a")
    s = Summary("cells_size", "s", ["route"], registry=registry).labels("/a")
    assert all(_is_c(m) for m in (c.inc, g.inc, g.dec, g.set, h.observe, s.observe))
    c.inc()
    c.inc(2.5)
    g.set(10)
    g.inc(2)
    g.dec(0.5)
    s.observe(3)
    s.observe(4)
    assert c._value.get() == 3.5 and g._value.get() == 11.5
    assert s._store.read(s._count_key) == 2.0 and s._store.read(s._sum_key) == 7.0


def test_the_errors_of_the_python_methods(registry):
    parent = Counter("cells_errs", "e", ["route"], registry=registry)
    with pytest.raises(ValueError):
        parent.inc()                                   # a parent has no value
    c = parent.labels("/a")
    with pytest.raises(ValueError, match="non-negative"):
        c.inc(-1)
    with pytest.raises(TypeError):
        c.inc("1")
    with pytest.raises(ValueError):
        c.inc(1, {"x" * 200: "y"})                     # exemplar too long: validated
    with pytest.raises(TypeError):
        c.inc(1, None, 3)
    assert c._value.get() == 1.0                       # only the exemplar call added
    recent = Gauge("cells_recent", "r", registry=registry, multiprocess_mode="mostrecent")
    with pytest.raises(RuntimeError):
        recent.inc()
    recent.set(4)
    assert recent._value.get() == 4.0


def test_histogram_buckets_are_bisect_left_of_the_bounds(registry):
    bounds = [0.1, 0.5, 1.0, 5.0]
    h = Histogram("cells_edges", "e", registry=registry, buckets=bounds)
    values = [0.0, 0.1, 0.10000001, 0.5, 0.7, 1.0, 4.99, 5.0, 6.0, math.inf, -3.0]
    for v in values:
        h.observe(v)
    h.observe(math.nan)                                # in no bucket; the sum turns NaN
    upper = h._upper_bounds
    want = [0] * len(upper)
    for v in values:
        want[bisect_left(upper, v)] += 1
    got = [h._store.read(k) for k in h._bucket_keys]
    assert got == want
    assert math.isnan(h._store.read(h._sum_key))


def _hammer(counter_child, hist_child, rounds):
    for _ in range(rounds):
        counter_child.inc(1.5)
        hist_child.observe(0.25)


def test_float_adds_are_exact_across_processes(registry):
    c = Counter("cells_total", "t", ["route"], registry=registry)
    h = Histogram("cells_lat", "l", ["route"], registry=registry)
    rounds = 4000
    procs = [FORK.Process(target=_hammer, args=(c.labels("/x"), h.labels("/x"), rounds))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    child = h.labels("/x")
    assert c.labels("/x")._value.get() == 2 * rounds * 1.5
    assert sum(child._store.read(k) for k in child._bucket_keys) == 2 * rounds
    assert child._store.read(child._sum_key) == 2 * rounds * 0.25


def test_a_forked_childs_c_cells_rekey_to_its_own_series(registry):
    g = Gauge("cells_fork", "f", ["shard"], registry=registry, multiprocess_mode="liveall")
    child_gauge = g.labels("s")
    child_gauge.set(1)
    result = FORK.Queue()

    def child():
        child_gauge.inc(5)                             # C cells of the parent: rekeyed
        child_gauge.dec(1)
        result.put((child_gauge._key, child_gauge._value.get()))

    p = FORK.Process(target=child)
    p.start()
    key, got = result.get(timeout=30)
    p.join(30)
    assert got == 4.0 and key != child_gauge._key      # the child's own series
    assert child_gauge._value.get() == 1.0             # the parent's untouched


def test_a_removed_series_starts_again_from_zero(registry):
    c = Counter("cells_gone", "g", ["route"], registry=registry)
    child = c.labels("/a")
    child.inc(3)
    c.remove("/a")
    child.inc(0.5)                                     # the cached slot is stale: found again
    assert child._value.get() == 0.5


def test_float_cells_misuse_raises(table):
    core = table._core
    with pytest.raises(TypeError):
        _core.FloatCells(core, ["not", "a tuple"])
    with pytest.raises(ValueError):
        _core.FloatCells(core, ())
    with pytest.raises(ValueError, match="bound"):
        _core.FloatCells(core, (("a",), ("b",)), bounds=(1.0, 2.0))
    with pytest.raises(ValueError, match="increase"):
        _core.FloatCells(core, (("a",), ("b",), ("s",)), bounds=(2.0, 1.0))
    one = _core.FloatCells(core, (("cells", "one"),))
    with pytest.raises(TypeError):
        one.observe(1.0)                               # one key: no histogram, no summary
    with pytest.raises(RuntimeError):
        one.__init__(core, (("x",),))                  # initialised once
    one.add(2)
    assert table.read(("cells", "one"))[1]
    table.close()
    with pytest.raises(ValueError, match="closed"):
        one.add(1)


def test_a_per_process_cell_without_fallback_refuses_a_forked_child(table):
    cell = _core.FloatCells(table._core, (("cells", "pp"),), owner=_core.my_id() ^ 1)
    with pytest.raises(RuntimeError):
        cell.add(1)                                    # "another process's" series
