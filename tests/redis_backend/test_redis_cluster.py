"""Redis Cluster for real: one URL for the whole cluster, a live reshard, a failover.

The cluster is the ``redis_cluster`` fixture: six real server processes (3
masters, 3 replicas) on 127.0.0.1.  A table lives in one hash slot (its
three Redis keys share the tag ``{NAME}``), so which master serves it
depends on its name; the tests pick names on different masters.
"""
from __future__ import annotations

import multiprocessing as mp
import time
from typing import Dict, List

import pytest
from redis.cluster import key_slot

import shmdict

SPAWN = mp.get_context("spawn")


def slot_of(name: str) -> int:
    return key_slot(f"shmdict:{{{name}}}:data".encode())


def names_on_every_master(cluster, base: str) -> List[str]:
    """Table names whose slots lie on each of the cluster's masters."""
    by_master: Dict[str, str] = {}
    for i in range(500):
        candidate = f"{base}.{i}"
        master = cluster.master_of_slot(slot_of(candidate))["id"]
        by_master.setdefault(master, candidate)
        if len(by_master) == 3:
            return list(by_master.values())
    raise AssertionError("could not find names on every master")


def test_every_verb_through_one_url(redis_cluster, name):
    url = redis_cluster.url
    for table_name in names_on_every_master(redis_cluster, name):
        d = shmdict.open(table_name, shmdict.Counter(), capacity=100, backend=url)
        locks = shmdict.open(table_name + ".l", shmdict.Lock(rw=True), backend=url)
        recs = shmdict.open(table_name + ".s", shmdict.Struct(n="q", x="d"), backend=url)
        try:
            assert d.add("a") == 1 and d.add("a", 2 ** 53) == 2 ** 53 + 1
            d.set("b", 5)
            assert d.exchange("b", 6) == 5 and d.cas("b", 6, 7) and d.read("b") == (7, True)
            assert sorted(d.keys()) == ["a", "b"] and len(d) == 2 and "a" in d
            assert d.load_and_delete("a") == (2 ** 53 + 1, True) and "a" not in d
            assert d.check()
            with locks["row"] as h:
                assert h.held_by_me
            with locks["row"].read():
                assert locks.held_by_me("row", shared=True)
            with recs.update("r") as rec:
                rec.n += 3
            recs.set("q", (1, 2.0))
            assert recs.read("r")[0] == (3, 0.0) and recs.cas("q", (1, 2.0), (2, 3.0))
            assert dict(recs.items()) == {"r": (3, 0.0), "q": (2, 3.0)}
            limiter = shmdict.RateLimiter(table_name + ".rl", rate=1, period=3600, burst=2,
                                          backend=url)
            assert [limiter.allow("c") for _ in range(3)] == [True, True, False]
            limiter.unlink()
        finally:
            for t in (d, locks, recs):
                t.unlink()


def _adder(url: str, table_name: str, n: int, barrier, results) -> None:
    d = shmdict.open(table_name, shmdict.Counter(), backend=url)
    acked = errors = 0
    barrier.wait()
    for i in range(n):
        try:
            d.add(("k", i % 10))
            acked += 1
        except shmdict.BackendError:
            errors += 1
    results.put((acked, errors))
    d.close()


def migrate_slot(cluster, slot: int, source: Dict[str, str], target: Dict[str, str]) -> None:
    """Move one hash slot between masters with the cluster's own commands,
    keys and all, while clients keep using it (they see ASK, then MOVED)."""
    src, dst = cluster.client(source["port"]), cluster.client(target["port"])
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source["id"])
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target["id"])
    while True:
        keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
        if not keys:
            break
        src.execute_command("MIGRATE", "127.0.0.1", target["port"], "", 0, 5000, "KEYS", *keys)
    for node in cluster.nodes():
        if "master" in node["flags"] and "fail" not in node["flags"]:
            cluster.client(node["port"]).execute_command("CLUSTER", "SETSLOT", slot, "NODE",
                                                         target["id"])


def test_a_live_reshard_loses_and_doubles_nothing(redis_cluster, name):
    url = redis_cluster.url
    d = shmdict.open(name, shmdict.Counter(), backend=url)
    d.add(("k", 0), 0)                       # the table exists before the move
    slot = slot_of(name)
    source = redis_cluster.master_of_slot(slot)
    target = next(n for n in redis_cluster.nodes()
                  if "master" in n["flags"] and n["id"] != source["id"])
    barrier, results = SPAWN.Barrier(3), SPAWN.Queue()
    n = 1500
    procs = [SPAWN.Process(target=_adder, args=(url, name, n, barrier, results))
             for _ in range(2)]
    for p in procs:
        p.start()
    try:
        barrier.wait()
        time.sleep(0.2)                      # adds are flowing
        migrate_slot(redis_cluster, slot, source, target)
        outcome = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
        assert redis_cluster.master_of_slot(slot)["id"] == target["id"]
        acked = sum(a for a, _ in outcome)
        errors = sum(e for _, e in outcome)
        total = d.total()
        # Nothing a call returned is lost or doubled; a call that raised may
        # or may not have been applied.
        assert acked <= total <= acked + errors, (acked, errors, total)
        assert errors <= 2 * n // 100, f"{errors} of {2 * n} adds failed during the move"
        assert d.check()
    finally:
        for p in procs:
            p.kill()
        d.unlink()


def test_a_failover_is_followed_and_waited_writes_survive_it(redis_cluster, name):
    """Kill the table's master: its replica is promoted, the client follows it,
    and with ``wait_replicas=1`` every acknowledged add survives.  (The killed
    node is restarted once the replica took over: it rejoins as the new
    master's replica, without which no write could be confirmed by WAIT.)"""
    url = redis_cluster.url + "?wait_replicas=1&wait_timeout=1"
    d = shmdict.open(name, shmdict.Counter(), backend=url, socket_timeout=3)
    slot = slot_of(name)
    master = redis_cluster.master_of_slot(slot)
    acked = unknown = 0
    for _ in range(300):
        d.add("k")
        acked += 1
    redis_cluster.kill_node(master["port"])
    try:
        deadline = time.monotonic() + 60
        while True:                           # the cluster promotes the replica
            try:
                if redis_cluster.master_of_slot(slot)["id"] != master["id"]:
                    break
            except RuntimeError:
                pass                          # the slot is not served for a moment
            assert time.monotonic() < deadline, "no replica was promoted"
            time.sleep(0.1)
    finally:
        redis_cluster.start_node(master["port"])   # it rejoins as a replica
    redis_cluster.wait_ok(60)
    deadline = time.monotonic() + 60
    while True:                               # the client follows the new master
        try:
            d.add("k")
            acked += 1
            break
        except shmdict.BackendError:
            unknown += 1
            assert time.monotonic() < deadline, "the client never reached the new master"
            time.sleep(0.1)
    try:
        for _ in range(300):
            d.add("k")
            acked += 1
        value = d.read("k")[0]
        assert acked <= value <= acked + unknown, (acked, unknown, value)
    finally:
        d.unlink()


def test_cluster_urls_are_checked(redis_cluster):
    with pytest.raises(ValueError, match="only database 0"):
        shmdict.open("x", shmdict.Counter(), backend=redis_cluster.url + "/3")
    with pytest.raises(ValueError, match="wait_replicas"):
        shmdict.open("x", shmdict.Counter(), backend=redis_cluster.url + "?wait_replicas=-1")
    with pytest.raises(ValueError, match="below socket_timeout"):
        shmdict.open("x", shmdict.Counter(), backend=redis_cluster.url + "?wait_replicas=1"
                     "&wait_timeout=5&socket_timeout=5")
