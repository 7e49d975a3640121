"""The prometheus_client collector for Counter tables."""
from __future__ import annotations

import multiprocessing

import pytest

pytest.importorskip("prometheus_client")
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import shmdict  # noqa: E402
from shmdict.prometheus import TableCollector, register_table  # noqa: E402


def scrape(registry):
    """{(metric sample name, frozenset(labels)): value} of an exposition."""
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def test_tuple_keys_become_labels(counter):
    registry = CollectorRegistry()
    collector = register_table(counter, "app_requests", "requests",
                               labelnames=("method", "route", "status"), registry=registry)
    counter.add(("GET", "/items", 200), 3)
    counter.add(("POST", b"/caf\xc3\xa9", 201))
    counter.add("not-a-triple")
    samples = scrape(registry)
    assert samples == {
        ("app_requests_total", frozenset({("method", "GET"), ("route", "/items"),
                                          ("status", "200")})): 3.0,
        ("app_requests_total", frozenset({("method", "POST"), ("route", "/café"),
                                          ("status", "201")})): 1.0,
    }
    assert collector.skipped == 1
    assert "# HELP app_requests_total requests" in generate_latest(registry).decode()


def test_default_label_is_the_key(counter):
    registry = CollectorRegistry()
    register_table(counter, "hits", registry=registry, kind="gauge",
                   const_labels={"app": "shop"})
    counter.add("a", 2)
    counter.add(("x", 7), 5)
    counter.add(("y",), -4)
    assert scrape(registry) == {
        ("hits", frozenset({("app", "shop"), ("key", "a")})): 2.0,
        ("hits", frozenset({("app", "shop"), ("key", "x/7")})): 5.0,
        ("hits", frozenset({("app", "shop"), ("key", "y")})): -4.0,
    }


def test_a_view_exposes_its_keys(counter):
    registry = CollectorRegistry()
    register_table(counter.sub("tenant-1"), "tenant_hits", labelnames=["route"],
                   registry=registry)
    counter.add(("tenant-1", "/a"), 4)
    counter.add(("tenant-2", "/a"), 9)
    assert scrape(registry) == {
        ("tenant_hits_total", frozenset({("route", "/a")})): 4.0}


def test_bad_arguments(counter):
    with pytest.raises(ValueError):
        TableCollector(counter, "bad name")
    with pytest.raises(ValueError):
        TableCollector(counter, "ok", kind="histogram")
    with pytest.raises(TypeError):
        TableCollector(counter, "ok", labelnames="route")
    with pytest.raises(ValueError):
        TableCollector(counter, "ok", labelnames=())
    with pytest.raises(ValueError):
        TableCollector(counter, "ok", labelnames=("bad-label",))
    with pytest.raises(ValueError):
        TableCollector(counter, "ok", labelnames=("app",), const_labels={"app": "x"})
    with pytest.raises(TypeError):
        TableCollector(object(), "ok")


def _adder(name, n, barrier):
    table = shmdict.open(name, shmdict.Counter(), capacity=1000)
    barrier.wait()
    for i in range(n):
        table.add(("GET", f"/r{i % 3}"))
    table.close()


def test_exact_across_processes(counter, name):
    """4 processes add; one scrape in another process sees every add."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_adder, args=(name, 3000, barrier)) for _ in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    registry = CollectorRegistry()
    register_table(counter, "reqs", labelnames=("method", "route"), registry=registry)
    samples = scrape(registry)
    for route in ("/r0", "/r1", "/r2"):
        assert samples[("reqs_total", frozenset({("method", "GET"), ("route", route)}))] \
            == 4 * 1000
