"""Two "hosts": fresh interpreters that share nothing but the Redis server.

Each host is a separate ``python`` process started with only the server's
URL (no inherited table, no shared memory); they meet at a barrier kept in
Redis, then count and take a row lock together.  Their counters must agree
and the lock must never be held by both.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import shmdict

HOST = textwrap.dedent("""
    import sys, time
    import shmdict
    url, name, host, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    counters = shmdict.open(name + ".c", shmdict.Counter(), 1000, 64, backend=url)
    locks = shmdict.open(name + ".l", shmdict.Lock(), 1000, 64, backend=url, lease=2)
    counters.add("ready")
    while counters.read("ready")[0] < 2:        # a barrier on the server
        time.sleep(0.005)
    for _ in range(rounds):
        counters.add(("hits", host))
        counters.add("total")
        with locks["row"]:
            if counters.add("inside") != 1:      # someone else is in here
                counters.add("overlaps")
            value = counters.read("guarded")[0]
            time.sleep(0.001)
            counters.set("guarded", value + 1)
            counters.add("inside", -1)
    print(counters.read("total")[0])
""")


def test_two_hosts_agree_on_counters_and_locks(redis_url, name):
    rounds = 60
    hosts = [subprocess.Popen([sys.executable, "-c", HOST, redis_url, name, host, str(rounds)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for host in ("host-a", "host-b")]
    try:
        outputs = [h.communicate(timeout=300) for h in hosts]
        for h, (out, err) in zip(hosts, outputs):
            assert h.returncode == 0, err
        counters = shmdict.open(name + ".c", shmdict.Counter(), 1000, 64, backend=redis_url)
        assert counters.read("total") == (2 * rounds, True)
        assert counters.read(("hits", "host-a")) == (rounds, True)
        assert counters.read(("hits", "host-b")) == (rounds, True)
        assert counters.read("guarded") == (2 * rounds, True)      # no lost update
        assert counters.read("overlaps") == (0, False)             # never both inside
        assert counters.read("inside") == (0, True)
        # Each host saw the other's counts: the last to finish printed the total.
        assert max(int(out) for out, _ in outputs) == 2 * rounds
        # Nothing went through this host's shared memory.
        assert not any(t.startswith(name) for t in shmdict.list_tables())
        counters.close()
    finally:
        for h in hosts:
            if h.poll() is None:
                h.kill()
        shmdict.unlink(name + ".c", backend=redis_url)
        shmdict.unlink(name + ".l", backend=redis_url)
