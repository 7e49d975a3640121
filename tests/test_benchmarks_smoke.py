"""The benchmarks run at tiny sizes, so they cannot rot.

They check what the benchmarks check (conservation, mutual exclusion) and
that a peer which is not installed, or cannot start, becomes a row saying
why instead of a crash.  Figures at these sizes mean nothing.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType

import pytest

import shmdict
from shmdict import bench

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "benchmarks")
sys.path.insert(0, BENCHMARKS)      # the scripts import their shared `harness`
import harness  # noqa: E402


def load(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}",
                                                  os.path.join(BENCHMARKS, f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module     # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_shmdict_bench_verb(capsys):
    assert bench.main(["--keys", "200", "--repeats", "2", "--budget", "0.005"]) == 0
    out = capsys.readouterr().out
    assert "add, existing key (1 key)" in out and "insert of a new key" in out


def test_timing_helpers():
    calls = []
    timing = harness.measure(lambda n: calls.append(n), 7, repeats=3)
    assert calls == [7, 7, 7] and timing.ops == 21 and timing.median > 0
    n, done = harness.calibrate_counted(lambda n: None, 0.001, max_n=64)
    assert 1 <= n <= 64 and done >= 1
    run = harness.run_parallel(lambda i: (lambda n: None), 2, 10)
    assert run.processes == 2 and run.ops == 20
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        harness.run_parallel(lambda i: (lambda n: 1 // 0), 1, 1)
    assert harness.markdown_table(["a"], [["x|y"]]).splitlines()[2] == "| x\\|y |"


def test_bench_core(capsys):
    core = load("bench_core")
    assert core.main(["--keys", "300", "--repeats", "2", "--budget", "0.005"]) == 0
    out = capsys.readouterr().out
    assert "2 processes adding on disjoint keys" in out and "segment bytes per slot" in out


def test_bench_layouts(capsys):
    layouts = load("bench_layouts")
    assert layouts.main(["--repeats", "1", "--budget", "0.005", "--first", "3",
                         "--second", "4"]) == 0
    out = capsys.readouterr().out
    assert "threading.Lock" in out and "Struct.update" in out and "nested view" in out


def test_bench_verbs(capsys):
    verbs = load("bench_verbs")
    assert verbs.main(["--repeats", "1", "--budget", "0.005", "--no-instructions",
                       "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "with locks[key]:" in out and "updates lost under the locks: 0" in out


def test_bench_verbs_section_is_replaced_in_place(tmp_path):
    verbs = load("bench_verbs")
    path = tmp_path / "RESULTS.md"
    path.write_text("# peers\n\ntable\n")
    verbs.write_section(f"{verbs.START}\none\n{verbs.END}\n", str(path))
    verbs.write_section(f"{verbs.START}\ntwo\n{verbs.END}\n", str(path))
    text = path.read_text()
    assert text.startswith("# peers") and "two" in text and "one" not in text


def test_instructions_child_program_compiles():
    instructions = load("instructions")
    compile(instructions.child_source(), "<child>", "exec")   # no valgrind needed


def test_bench_prometheus():
    """In a subprocess: it switches prometheus_client to multiprocess mode."""
    import subprocess
    pytest.importorskip("prometheus_client")
    run = subprocess.run([sys.executable, "bench_prometheus.py", "--series", "150",
                          "--restarts", "4", "--per-worker", "20", "--repeats", "1",
                          "--budget", "0.003"], cwd=BENCHMARKS, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Counter.inc(1.5), shmdict.prometheus" in run.stdout
    assert "scrape, 150 series after 4 restarts" in run.stdout
    assert "increments lost, shmdict | 0" in run.stdout


def test_peers_small_run(tmp_path, capsys):
    peers = load("peers")
    code = peers.main(["--keys", "200", "--repeats", "1", "--budget", "0.003",
                       "--out-dir", str(tmp_path), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    results = (tmp_path / "RESULTS.md").read_text()
    assert "| workload | peer |" in results and "Command:" in results
    for workload in ("counter add, 1 key, 2 processes", "insert of a new key",
                     "lock, 2 processes on one key", "struct update", "memory per key"):
        assert f"| {workload}" in out
    # shmdict itself ran every workload, and lost nothing.
    for line in out.splitlines():
        if line.startswith("| ") and "| shmdict |" in line:
            assert "| — |" not in line, line
            assert "**yes" not in line, line


def test_missing_peer_is_a_row(monkeypatch, capsys):
    peers = load("peers")
    real_import = peers._import

    def pretend_missing(module, package):
        if module == "diskcache":
            raise peers.Unsupported(f"not installed (pip install {package})")
        return real_import(module, package)
    monkeypatch.setattr(peers, "_import", pretend_missing)
    monkeypatch.setattr(peers, "redis_compatible_server", lambda: None)   # no server at all
    run = peers.Run(50, 1, 0.002, [peers.ShmdictPeer, peers.DiskcachePeer, peers.RedisPeer],
                    log=lambda line: None)
    try:
        run.cell("insert of a new key", run.peers[0], run.insert_row)
        run.cell("insert of a new key", run.peers[1], run.insert_row)
        run.cell("insert of a new key", run.peers[2], run.insert_row)
    finally:
        run.stop()
    rows = {row.peer: row for row in run.rows}
    assert rows["shmdict"].value is not None and rows["shmdict"].lost == 0
    assert rows["diskcache"].value is None and "not installed" in rows["diskcache"].note
    assert rows["Redis (redis-py)"].value is None and "redis-server" in \
        rows["Redis (redis-py)"].note
    assert "not installed" in peers.results_table(run.rows)


def test_no_tables_left_behind():
    leftovers = [t for t in shmdict.list_tables() if str(t).startswith(
        (f"bench.peers.{os.getpid()}", f"bench.core.{os.getpid()}",
         f"bench.layouts.{os.getpid()}"))]
    assert not leftovers


def test_bench_redis_runs(redis_url, capsys):
    """benchmarks/bench_redis.py at a tiny size, so it cannot rot."""
    module = load("bench_redis")
    assert module.main(["--url", redis_url, "--repeats", "1", "--budget", "0.002",
                        "--clients", "2", "--client-adds", "50"]) == 0
    out = capsys.readouterr().out
    assert "| Counter add (HINCRBY) |" in out and "RateLimiter.hit" in out
    assert "2 client processes at once" in out and "| shmdict on Redis (`add`) |" in out


def test_bench_tools(capsys):
    tools = load("bench_tools")
    assert tools.main(["--keys", "300", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "shmdict save (whole)" in out and "one top sample" in out


def test_bench_growth(capsys):
    growth = load("bench_growth")
    assert growth.main(["--keys", "400", "--start", "20", "--repeats", "2",
                        "--budget", "0.005"]) == 0
    out = capsys.readouterr().out
    assert "growth steps" in out and "key in the last tier" in out


def test_bench_ttl(capsys):
    """benchmarks/bench_ttl.py at a tiny size, so it cannot rot."""
    ttl = load("bench_ttl")
    assert ttl.main(["--keys", "200", "--repeats", "1", "--budget", "0.005"]) == 0
    out = capsys.readouterr().out
    assert "ttl=3600" in out and "reclaim + insert" in out


def test_bench_repair(capsys):
    """The takeover benchmark: its assertions (the dead claim dropped, the
    count put back, the table consistent) hold at a tiny size."""
    assert load("bench_repair").main(["--keys", "2000", "--repeats", "2"]) == 0
    assert "whole-table recount" in capsys.readouterr().out


def test_bench_churn(capsys):
    """The churn benchmark at a tiny size: its tables stay consistent and
    the unswept one has no empty slot left for compact() to start from."""
    assert load("bench_churn").main(["--sizes", "1000:5", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "no sweeps (before)" in out and "one ring" in out
