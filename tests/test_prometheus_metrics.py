"""shmdict.prometheus's metric classes: prometheus_client's interface, one
shared table, real processes, exact totals."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("prometheus_client")
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics  # noqa: E402
from prometheus_client.openmetrics.parser import (  # noqa: E402
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import shmdict.prometheus as sp  # noqa: E402
from shmdict.prometheus import Counter, Enum, Gauge, Histogram, Summary  # noqa: E402

HERE = Path(__file__).resolve().parent
FORK = multiprocessing.get_context("fork")
MODES = ["all", "liveall", "livesum", "max", "min", "sum", "mostrecent", "livemax",
         "livemin", "livemostrecent"]


def samples(registry) -> dict:
    """{(sample name, frozenset(labels)): value} of a scrape."""
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(registry, name, **labels):
    return samples(registry).get((name, frozenset(labels.items())))


@pytest.fixture
def table(name):
    t = sp.configure(name, capacity=2_000)
    yield t
    t.close()


@pytest.fixture
def registry(table):
    return CollectorRegistry()


def run(target, *args):
    proc = FORK.Process(target=target, args=args)
    proc.start()
    proc.join(60)
    return proc


# ----------------------------------------------------------------- the core
def test_add_float_is_exact_and_never_loses_an_increment(name):
    t = sp.configure(name, capacity=100)
    assert t.add_float("x", 0.5) == 0.5 and t.add_float("x") == 1.5
    with pytest.raises(TypeError):
        t.add_float("x", "1")

    def adder():
        for i in range(5_000):
            t.add_float("ints", 3)
            t.add_float("halves", 0.5)
            t.add_float(("k", i % 7), 1.25)

    procs = [FORK.Process(target=adder) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    store = sp.store.current_store()
    assert store.read("ints") == 4 * 5_000 * 3
    assert store.read("halves") == 4 * 5_000 * 0.5
    assert sum(store.read(("k", j)) for j in range(7)) == 4 * 5_000 * 1.25
    t.close()


def test_add_float_never_lands_on_a_deleted_key(name):
    """Adds racing load_and_delete: what the deletes took plus what remains is
    all that was added (an add never lands on a slot deleted and reused)."""
    from shmdict.backends.shm.counter import float_of_word
    t = sp.configure(name, capacity=100)
    n = 5_000

    def adder():
        for _ in range(n):
            t.add_float("k", 0.5)

    procs = [FORK.Process(target=adder) for _ in range(2)]
    for p in procs:
        p.start()
    taken = 0.0
    while any(p.is_alive() for p in procs):
        word, existed = t.load_and_delete("k")
        if existed:
            taken += float_of_word(word)
    for p in procs:
        p.join(60)
    word, existed = t.read("k")
    assert taken + (float_of_word(word) if existed else 0.0) == 2 * n * 0.5
    t.close()


# ------------------------------------------------------------ the interface
def test_the_prometheus_client_interface(registry):
    c = Counter("app_requests_total", "Requests", ["method", "route"], registry=registry)
    c.labels("GET", "/a").inc()
    c.labels(method="GET", route="/a").inc(0.25)
    c.labels("POST", "/b").inc(2)
    with pytest.raises(ValueError):
        c.labels("GET")                                 # wrong count, at the call site
    with pytest.raises(ValueError):
        c.labels(method="GET", path="/a")               # wrong name
    with pytest.raises(ValueError):
        c.inc()                                         # a parent has no value
    with pytest.raises(ValueError):
        c.labels("GET", "/a").inc(-1)
    with pytest.raises(ValueError):
        with c.labels("GET", "/err").count_exceptions():
            raise ValueError("boom")

    g = Gauge("app_inflight", "In flight", registry=registry, multiprocess_mode="livesum")
    with g.track_inprogress():
        assert value(registry, "app_inflight") == 1.0
    g.set(4.5)
    g.dec(0.5)
    last = Gauge("app_last", "Last", registry=registry, multiprocess_mode="mostrecent")
    last.set_to_current_time()
    with pytest.raises(RuntimeError):
        last.inc()
    with pytest.raises(ValueError):
        Gauge("bad_mode", "x", multiprocess_mode="average", registry=registry)

    h = Histogram("app_latency_seconds", "Latency", registry=registry, buckets=(0.1, 1.0))
    with h.time():
        pass
    h.observe(0.5)
    s = Summary("app_size_bytes", "Size", registry=registry)
    s.observe(10)
    s.observe(0.5)
    e = Enum("app_state", "State", states=["idle", "busy"], registry=registry)
    e.state("busy")

    got = samples(registry)
    assert got[("app_requests_total", frozenset({("method", "GET"), ("route", "/a")}))] == 1.25
    assert got[("app_requests_total", frozenset({("method", "POST"), ("route", "/b")}))] == 2.0
    assert got[("app_requests_total", frozenset({("method", "GET"), ("route", "/err")}))] == 1.0
    assert got[("app_inflight", frozenset())] == 4.0
    assert abs(got[("app_last", frozenset())] - time.time()) < 60
    assert got[("app_latency_seconds_bucket", frozenset({("le", "0.1")}))] == 1.0
    assert got[("app_latency_seconds_bucket", frozenset({("le", "1.0")}))] == 2.0
    assert got[("app_latency_seconds_bucket", frozenset({("le", "+Inf")}))] == 2.0
    assert got[("app_latency_seconds_count", frozenset())] == 2.0
    assert got[("app_size_bytes_count", frozenset())] == 2.0
    assert got[("app_size_bytes_sum", frozenset())] == 10.5
    assert got[("app_state", frozenset({("app_state", "busy")}))] == 1.0
    assert got[("app_state", frozenset({("app_state", "idle")}))] == 0.0
    assert not any(n.endswith("_created") for n, _ in got)

    # OpenMetrics too, and registry.get_sample_value as tests use it.
    families = {f.name: f for f in parse_openmetrics(openmetrics(registry).decode())}
    assert families["app_requests"].type == "counter"
    assert families["app_latency_seconds"].type == "histogram"
    assert registry.get_sample_value("app_requests_total",
                                     {"method": "POST", "route": "/b"}) == 2.0
    assert c.labels("POST", "/b")._value.get() == 2.0


def test_remove_and_clear_reach_every_process(registry):
    c = Counter("rm_hits", "Hits", ["route"], registry=registry)
    g = Gauge("rm_level", "Level", ["route"], registry=registry, multiprocess_mode="liveall")

    def child():
        for route in ("/a", "/b", "/c"):
            c.labels(route).inc(3)
        g.labels("/a").set(1)

    assert run(child).exitcode == 0
    c.labels("/a").inc()
    assert value(registry, "rm_hits_total", route="/a") == 4.0
    c.remove("/a")
    with pytest.raises(ValueError):
        c.remove("/a", "extra")
    got = samples(registry)
    assert ("rm_hits_total", frozenset({("route", "/a")})) not in got
    assert got[("rm_hits_total", frozenset({("route", "/b")}))] == 3.0
    c.labels("/a").inc(0.5)                              # starts again from 0
    assert value(registry, "rm_hits_total", route="/a") == 0.5
    c.clear()
    g.clear()
    assert samples(registry) == {}


def test_a_forked_child_gets_its_own_gauge_series(registry):
    g = Gauge("fork_level", "Level", registry=registry, multiprocess_mode="liveall")
    g.set(1)
    done = FORK.Event()
    release = FORK.Event()

    def child():
        g.inc(5)
        done.set()
        release.wait(30)

    proc = FORK.Process(target=child)
    proc.start()
    assert done.wait(30)
    got = samples(registry)
    release.set()
    proc.join(30)
    assert got == {("fork_level", frozenset({("pid", str(os.getpid()))})): 1.0,
                   ("fork_level", frozenset({("pid", str(proc.pid))})): 5.0}


# ---------------------------------------------------- dead workers, bounded
def test_dead_workers_gauges_follow_their_mode_and_memory_stays_bounded(registry, table):
    gauges = {m: Gauge(f"dead_{m}", m, ["shard"], registry=registry, multiprocess_mode=m)
              for m in MODES}
    counter = Counter("dead_work", "Work", registry=registry)

    def worker(i):
        for m, gauge in gauges.items():
            gauge.labels("s").set(i)
        counter.inc(0.5)
        os.kill(os.getpid(), signal.SIGKILL)            # dies without any cleanup

    sizes = []
    for i in range(1, 31):
        proc = run(worker, i)
        assert proc.exitcode == -signal.SIGKILL
        got = samples(registry)
        for m in ("liveall", "livesum", "livemax", "livemin", "livemostrecent"):
            assert not any(n == f"dead_{m}" for n, _ in got), m
        assert got[("dead_sum", frozenset({("shard", "s")}))] == sum(range(1, i + 1))
        assert got[("dead_max", frozenset({("shard", "s")}))] == i
        assert got[("dead_min", frozenset({("shard", "s")}))] == 1
        assert got[("dead_mostrecent", frozenset({("shard", "s")}))] == i
        assert len([k for k in got if k[0] == "dead_all"]) == i   # all: one per pid, by definition
        assert got[("dead_work_total", frozenset())] == 0.5 * i
        sizes.append(len(table) - i)                    # the keys but those of mode 'all'
    assert len(set(sizes[1:])) == 1, sizes


def test_a_full_table_reclaims_dead_processes_series(name):
    t = sp.configure(name, capacity=40)
    registry = CollectorRegistry()
    g = Gauge("full_level", "Level", ["shard"], registry=registry, multiprocess_mode="livesum")

    def worker():
        for shard in range(10):
            g.labels(str(shard)).inc()

    for _ in range(12):                                 # 120 series made, 40 fit
        assert run(worker).exitcode == 0
    g.labels("mine").set(2)
    assert samples(registry) == {("full_level", frozenset({("shard", "mine")})): 2.0}
    t.close()


# -------------------------------------------------------------- histograms
def test_histogram_scrapes_are_consistent_and_totals_exact(registry):
    h = Histogram("load_seconds", "Latency", ["route"], registry=registry,
                  buckets=(0.25, 1.0, 4.0))
    s = Summary("load_bytes", "Bytes", registry=registry)
    n = 3_000

    def observer(k):
        for i in range(n):
            h.labels("/a").observe((i % 8) * 0.75)
            s.observe(2)

    procs = [FORK.Process(target=observer, args=(k,)) for k in range(2)]
    for p in procs:
        p.start()
    last = 0.0
    while any(p.is_alive() for p in procs):
        got = samples(registry)
        inf = got.get(("load_seconds_bucket", frozenset({("route", "/a"), ("le", "+Inf")})), 0.0)
        assert got.get(("load_seconds_count", frozenset({("route", "/a")})), 0.0) == inf
        assert inf >= last
        last = inf
    for p in procs:
        p.join(60)
    got = samples(registry)
    labels = frozenset({("route", "/a")})
    assert got[("load_seconds_count", labels)] == 2 * n
    assert got[("load_seconds_sum", labels)] == 2 * sum((i % 8) * 0.75 for i in range(n))
    assert got[("load_seconds_bucket", labels | {("le", "0.25")})] == 2 * n / 8
    assert got[("load_seconds_bucket", labels | {("le", "1.0")})] == 2 * n * 2 / 8
    assert got[("load_bytes_count", frozenset())] == 2 * n
    assert got[("load_bytes_sum", frozenset())] == 4 * n


# ----------------------------------------------- against multiprocess mode
def test_same_samples_as_prometheus_client_multiprocess_mode(name):
    script = str(HERE / "prometheus_workload.py")
    with tempfile.TemporaryDirectory() as directory:
        theirs = subprocess.run([sys.executable, script, "mp", directory], check=True,
                                capture_output=True, text=True, timeout=120).stdout
    ours = subprocess.run([sys.executable, script, "shmdict", name], check=True,
                          capture_output=True, text=True, timeout=120).stdout
    theirs, ours = json.loads(theirs), json.loads(ours)
    names = {n for n, _, _ in theirs}
    for m in MODES:
        assert f"wl_gauge_{m}" in names
    assert {"wl_requests_total", "wl_plain_total", "wl_latency_seconds_bucket",
            "wl_latency_seconds_count", "wl_size_bytes_sum"} <= names
    assert ours == theirs


# ----------------------------------------------------------- configuration
def test_configured_from_the_environment(name):
    code = ("from shmdict.prometheus import Counter\n"
            "Counter('env_hits', 'Hits').inc(2.5)\n")
    env = dict(os.environ, SHMDICT_PROMETHEUS_TABLE=name, SHMDICT_PROMETHEUS_CAPACITY="500")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    t = sp.configure(name, capacity=500)
    registry = CollectorRegistry()
    sp.multiprocess.MultiProcessCollector(registry)
    assert samples(registry) == {("env_hits_total", frozenset()): 2.5}
    t.close()


def test_an_unconfigured_process_is_told_what_to_do():
    env = {k: v for k, v in os.environ.items() if k != "SHMDICT_PROMETHEUS_TABLE"}
    run_ = subprocess.run([sys.executable, "-c", "from shmdict.prometheus import Counter\n"
                           "Counter('x', 'x')"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert run_.returncode != 0
    assert "configure(" in run_.stderr and "SHMDICT_PROMETHEUS_TABLE" in run_.stderr
