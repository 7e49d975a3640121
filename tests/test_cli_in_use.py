"""``shmdict ls``/``stat`` show which processes have a table mapped, and
``shmdict rm`` refuses a table in use unless ``--force`` (a restarted worker
would otherwise create a fresh table and the workers disagree)."""
from __future__ import annotations

import json
import subprocess
import sys

import shmdict


def cli(*args):
    return subprocess.run([sys.executable, "-m", "shmdict", *args], capture_output=True,
                          text=True, timeout=60)


def _holder(name):
    """A process that has table ``name`` open until its stdin closes."""
    proc = subprocess.Popen(
        [sys.executable, "-c", f"import sys, shmdict\n"
                               f"d = shmdict.open({name!r}, shmdict.Counter(), capacity=10)\n"
                               f"d.add('k')\nprint('ready', flush=True)\nsys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_ls_and_stat_show_the_processes_that_map_a_table(name):
    holder = _holder(name)
    try:
        rows = json.loads(cli("ls", "--json").stdout)
        [row] = [r for r in rows if r["name"] == name]
        assert row["mapped_by"] == [holder.pid]
        assert str(holder.pid) in cli("ls").stdout
        stat = json.loads(cli("stat", name, "--json").stdout)
        assert [p["pid"] for p in stat["mapped_by"]] == [holder.pid]
        assert "python" in stat["mapped_by"][0]["command"]
        assert f"pid {holder.pid}" in cli("stat", name).stdout
    finally:
        holder.stdin.close()
        holder.wait(30)
    assert json.loads(cli("stat", name, "--json").stdout)["mapped_by"] == []


def test_rm_refuses_a_table_in_use_without_force(name):
    holder = _holder(name)
    try:
        refused = cli("rm", name)
        assert refused.returncode == 1
        assert f"pid {holder.pid}" in refused.stderr and "--force" in refused.stderr
        assert name in shmdict.list_tables()
        forced = cli("rm", "--force", name)
        assert forced.returncode == 0, forced.stderr
        assert name not in shmdict.list_tables()
    finally:
        holder.stdin.close()
        holder.wait(30)


def test_rm_of_a_table_nobody_uses(name):
    shmdict.open(name, shmdict.Counter(), capacity=10).close()
    done = cli("rm", name)
    assert done.returncode == 0 and name not in shmdict.list_tables()
