"""Everything a user hands to another process pickles: Struct layouts, Struct
tables, records (read's named tuples and update's mutable records), ``sub()``
views (pickle *and* unpickle, ``copy.copy``), under every start method.
Also ``RateLimiter.hit(key, cost=n)`` with the keyword on shared memory."""
from __future__ import annotations

import copy
import multiprocessing
import pickle

import pytest

import shmdict

LAYOUT = shmdict.Struct(tokens=("d", 2.5), stamp="q", tag="8s", flag="?")


def test_struct_layout_pickles_with_its_defaults():
    for proto in range(2, pickle.HIGHEST_PROTOCOL + 1):
        again = pickle.loads(pickle.dumps(LAYOUT, proto))
        assert again == LAYOUT and again.defaults == LAYOUT.defaults
        assert again.record._fields == ("tokens", "stamp", "tag", "flag")
    assert copy.deepcopy(LAYOUT) == LAYOUT


def test_struct_table_and_records_pickle(name):
    d = shmdict.open(name, LAYOUT, capacity=10)
    try:
        d.set("a", (1.0, 7, b"x", True))
        again = pickle.loads(pickle.dumps(d))
        rec, exists = again.read("a")
        assert exists and rec.stamp == 7
        assert pickle.loads(pickle.dumps(rec)) == rec
        assert pickle.loads(pickle.dumps(rec))._asdict() == rec._asdict()
        with d.update("a") as mutable:
            mutable.stamp = 8
            clone = pickle.loads(pickle.dumps(mutable))
        assert clone._astuple() == mutable._astuple() and clone.recovered is False
        assert d.read("a")[0].stamp == 8
        again.close()
    finally:
        d.close()


def test_views_pickle_unpickle_and_copy(name):
    d = shmdict.open(name, shmdict.Counter(), capacity=100)
    try:
        view = d.sub(("route",)).sub("GET")
        view.add("/a", 3)
        for n, clone in enumerate((pickle.loads(pickle.dumps(view)), copy.copy(view),
                                   copy.deepcopy(view))):
            assert clone.prefix == ("route", "GET")
            assert clone.read("/a") == (3 + n, True)
            clone.add("/a")
        assert d.read(("route", "GET", "/a")) == (6, True)
    finally:
        d.close()


def _worker(view, record, layout, queue):
    view.add("k", 5)
    queue.put((record.stamp, layout.defaults["tokens"], view.read("k")))


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_views_and_records_cross_start_methods(name, method):
    ctx = multiprocessing.get_context(method)
    d = shmdict.open(name, shmdict.Counter(), capacity=100)
    s = shmdict.open(name + ".s", LAYOUT, capacity=10)
    try:
        s.set("a", (1.0, 42, b"t", False))
        record = s.read("a")[0]
        queue = ctx.Queue()
        p = ctx.Process(target=_worker, args=(d.sub("v"), record, LAYOUT, queue))
        p.start()
        got = queue.get(timeout=60)
        p.join(60)
        assert p.exitcode == 0
        assert got == (42, 2.5, (5, True))
        assert d.read(("v", "k")) == (5, True)
    finally:
        d.close()
        s.unlink()


def test_rate_limiter_hit_takes_cost_as_a_keyword(name):
    limiter = shmdict.RateLimiter(name, rate=10, period=1.0, burst=5)
    try:
        assert limiter.hit("k", cost=2).remaining == 3
        assert limiter.hit("k", 2).remaining == 1
        assert limiter.hit(key="j", cost=1).remaining == 4
        assert limiter.hit("k").remaining == 0
        with pytest.raises(TypeError, match="unexpected keyword"):
            limiter.hit("k", weight=1)
        with pytest.raises(TypeError, match="multiple values"):
            limiter.hit("k", 1, cost=1)
        with pytest.raises(ValueError, match="burst"):
            limiter.hit("k", cost=6)
        with pytest.raises(TypeError):
            limiter.hit("k", cost=1.5)
    finally:
        limiter.table.unlink()
