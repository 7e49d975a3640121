"""Nested views: d.sub(prefix), Go's SharedPoolMapGenerator in one table."""
from __future__ import annotations

import multiprocessing

import pytest
from helpers import run_to_completion

import shmdict


def test_relative_keys(counter):
    a = counter.sub(("a",))
    assert a.add("b") == 1
    assert counter.read(("a", "b")) == (1, True)
    a.add(("c", 1), 5)
    assert counter.read(("a", "c", 1)) == (5, True)
    counter.add(("z", "b"))
    counter.add("a")                       # not under the prefix ("a" is no tuple)
    assert sorted(a.keys(), key=repr) == sorted(["b", ("c", 1)], key=repr)
    assert dict(a.items()) == {"b": 1, ("c", 1): 5}
    assert len(a) == 2 and "b" in a and "z" not in a
    assert a.read("b") == (1, True) and a.read("nope") == (0, False)


def test_all_verbs_through_a_view(counter):
    v = counter.sub("tenant-1")            # a non-tuple prefix is one level
    v["hits"] += 3
    assert v["hits"].value == 3
    v.set("x", 4)
    assert v.exchange("x", 5) == 4
    assert v.cas("x", 5, 6) and v.load("x")[1]
    assert v.load_and_delete("x") == (6, True)
    v.delete("hits")
    del v["nothing"]
    assert len(v) == 0 and len(counter) == 0


def test_nested_sub(counter):
    deep = counter.sub("a").sub("b")
    deep.add("c")
    assert counter.read(("a", "b", "c")) == (1, True)
    assert counter.sub("a").keys() == [("b", "c")]
    assert deep.keys() == ["c"]


def test_views_on_other_layouts(name):
    locks = shmdict.open(name, shmdict.Lock(), capacity=10)
    try:
        with locks.sub("users")[42] as h:
            assert h.locked()
            assert locks.owner(("users", 42)) is not None
        assert locks.sub("users").keys() == [42]
    finally:
        locks.close()


def _two_layer(table, n1):
    view = table.sub(f"key1-{n1}")
    for n2 in range(1, 4):
        for _ in range(n1 * n2):
            view.add(f"key2-{n2}")


def test_go_seed_two_layer_example_with_processes(counter):
    procs = [multiprocessing.Process(target=_two_layer, args=(counter, n1)) for n1 in range(1, 4)]
    run_to_completion(procs)
    lines = []
    for n1 in range(1, 4):
        for key, value in sorted(counter.sub(f"key1-{n1}").items()):
            lines.append(f"key1-{n1}/{key} was added {value} times")
    assert lines == [f"key1-{a}/key2-{b} was added {a * b} times"
                     for a in range(1, 4) for b in range(1, 4)]


def test_view_rejects_bad_keys(counter):
    with pytest.raises(TypeError):
        counter.sub("a").add(1.5)
    with pytest.raises(AttributeError):
        counter.sub("a").no_such_verb
