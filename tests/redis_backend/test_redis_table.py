"""What only the Redis backend has: URLs and options, connection errors,
leases, tables destroyed under an open handle, and SCAN rather than KEYS."""
from __future__ import annotations

import socket
import time

import pytest
import redis

import shmdict
from shmdict.backends.redis import Connection, _lua


def _commandstat(client, command: str) -> int:
    stats = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


@pytest.fixture
def client(redis_url):
    return redis.Redis.from_url(redis_url)


def test_unreachable_server_is_a_clear_backend_error(name):
    with socket.socket() as s:                       # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(shmdict.BackendError) as err:
        shmdict.open(name, shmdict.Counter(), backend=f"redis://127.0.0.1:{port}/0",
                     socket_connect_timeout=0.5)
    assert isinstance(err.value, shmdict.ShmDictError)
    message = str(err.value)
    assert f"127.0.0.1:{port}" in message and "socket_connect_timeout=0.5s" in message


def test_options_from_url_and_keywords():
    conn = Connection("redis://127.0.0.1:1/3?socket_timeout=1.5&lease=4&health_check_interval=7",
                      {"lease": 2})
    assert conn.options["socket_timeout"] == 1.5
    assert conn.options["lease"] == 2.0 and conn.lease_ms == 2000     # keywords win
    assert "health_check_interval=7" in conn.client_url and "lease" not in conn.client_url
    with pytest.raises(TypeError, match="unknown Redis backend option"):
        Connection("redis://127.0.0.1:1/0", {"colour": 1})
    with pytest.raises(ValueError, match="must be > 0"):
        Connection("redis://127.0.0.1:1/0?lease=0", {})
    with pytest.raises(ValueError, match="unknown backend"):
        shmdict.open("x", shmdict.Counter(), backend="memcached://127.0.0.1")


def test_options_survive_pickling(redis_url, name):
    import pickle
    d = shmdict.open(name, shmdict.Lock(), backend=redis_url + "?lease=3", socket_timeout=4)
    try:
        clone = pickle.loads(pickle.dumps(d))
        assert clone._conn.options["lease"] == 3.0
        assert clone._conn.options["socket_timeout"] == 4.0
    finally:
        d.unlink()


def test_unlinked_table_raises_table_not_found(redis_url, name):
    d = shmdict.open(name, shmdict.Counter(), backend=redis_url)
    other = shmdict.open(name, shmdict.Counter(), backend=redis_url)
    d.add("k")
    assert shmdict.unlink(name, backend=redis_url)
    with pytest.raises(shmdict.TableNotFound, match="no longer exists"):
        other.add("k")
    assert other.read("k") == (0, False)             # and nothing was recreated
    with pytest.raises(shmdict.TableNotFound):
        shmdict.open(name, shmdict.Counter(), backend=redis_url, create=False)


def test_lease_lost_makes_release_raise(redis_url, name, client):
    locks = shmdict.open(name, shmdict.Lock(), backend=redis_url, lease=0.3)
    try:
        h = locks["row"]
        assert h.acquire()
        locks._keeper.stop()                         # as if this process froze
        field = locks._field("row")
        while client.hget(locks._data, field) and h.owner is not None:
            time.sleep(0.05)                         # the lease runs out on the server
        other = shmdict.open(name, shmdict.Lock(), backend=redis_url, lease=5)
        token = "otherhost/1/abc"
        # another host takes the expired lease over
        assert other._eval(_lua.LOCK_ACQUIRE, field, token, 5000, 0)[0] == 1
        with pytest.raises(shmdict.NotOwner, match="lease expired"):
            h.release()
        assert h.holder == token and h.owner == 1
    finally:
        shmdict.unlink(name, backend=redis_url)


def test_held_lock_is_renewed_past_its_lease(redis_url, name):
    locks = shmdict.open(name, shmdict.Lock(), backend=redis_url, lease=0.3)
    try:
        h = locks["row"]
        assert h.acquire()
        time.sleep(1.0)                              # three leases long
        assert h.owner is not None                   # still ours: the keeper renewed it
        h.release()
        assert h.acquire(blocking=False) and not h.recovered
        h.release()
    finally:
        locks.unlink()


def test_iteration_uses_scan_never_keys(redis_url, name, client):
    d = shmdict.open(name, shmdict.Counter(), capacity=5000, backend=redis_url)
    try:
        for i in range(1200):
            d.add(i)
        keys_before = _commandstat(client, "keys")
        scans_before = _commandstat(client, "hscan")
        assert len(d.keys()) == 1200 and len(d.items()) == 1200
        assert len(d.sub(5).keys()) == 0 and d.check()
        assert _commandstat(client, "keys") == keys_before
        assert _commandstat(client, "hscan") > scans_before
    finally:
        d.unlink()


def test_one_round_trip_per_verb(redis_url, name, monkeypatch):
    d = shmdict.open(name, shmdict.Counter(), backend=redis_url)
    s = shmdict.open(name + ".s", shmdict.Struct(n="q"), backend=redis_url)
    verbs = [lambda: d.add("k"), lambda: d.read("k"), lambda: d.cas("k", 2, 3),
             lambda: d.exchange("k", 4), lambda: d.load_and_delete("k"),
             lambda: "k" in d, lambda: len(d), lambda: s.read("k"),
             lambda: s.set("k", (2,)), lambda: s.cas("k", (2,), (3,))]
    try:
        d.add("k")
        s.set("k", (1,))
        for verb in verbs:      # a fresh server learns each script once (EVAL)
            verb()
        sent = []
        for table in (d, s):
            real = table._r.execute_command
            monkeypatch.setattr(table, "_r", type("Spy", (), {
                "execute_command": staticmethod(
                    lambda *args, _real=real: sent.append(args[0]) or _real(*args))})())
        for verb in verbs:
            verb()
        assert len(sent) == len(verbs)
    finally:
        d.unlink()
        shmdict.unlink(name + ".s", backend=redis_url)
