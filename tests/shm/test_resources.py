"""Running out of things: /dev/shm space and inodes, descriptors, address space.

A table that cannot be backed fails at ``open`` with ``ResourceLimit`` naming
the limit (never later with SIGBUS), and a failed create leaves nothing
behind.  The small-/dev/shm cases run in a private mount namespace (``unshare
-m``, root) with a tmpfs of their own, as Docker's 64 MiB default would be.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _can_unshare():
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


needs_namespace = pytest.mark.skipif(not _can_unshare(),
                                     reason="needs root and unshare -m (a private /dev/shm)")


def _in_small_shm(code, options):
    """Run ``code`` with a private, small tmpfs on /dev/shm; (rc, stdout, stderr)."""
    script = textwrap.dedent(code)
    shell = (f"mount -t tmpfs -o {options} tmpfs /dev/shm && "
             f"exec {sys.executable} -c \"$0\"")
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", shell,
                           script], capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


@needs_namespace
def test_a_table_that_cannot_be_backed_fails_at_open_not_with_sigbus():
    rc, out, err = _in_small_shm("""
        import os, shmdict
        a = shmdict.open("a", shmdict.Counter(), capacity=40_000)   # ~5 MiB of 8
        try:
            b = shmdict.open("b", shmdict.Counter(), capacity=40_000)
        except shmdict.ResourceLimit as exc:
            print("refused:", exc)
        else:
            for t in (a, b):                # without reserving: SIGBUS here
                for i in range(40_000):
                    t.add(i)
            print("both filled")
        for i in range(40_000):
            a.add(i)
        print("a filled", len(a))
        print("left:", sorted(e for e in os.listdir("/dev/shm") if ".b" in e or e.endswith("b")))
    """, "size=8m")
    assert rc == 0, err
    assert "refused:" in out and "/dev/shm" in out, out
    assert "a filled 40000" in out
    assert "left: []" in out


@needs_namespace
def test_out_of_inodes_is_a_resource_limit_and_leaves_nothing():
    rc, out, err = _in_small_shm("""
        import os, shmdict
        try:
            shmdict.open("t", shmdict.Counter(), capacity=10)
        except shmdict.ResourceLimit as exc:
            print("refused:", exc)
        print("left:", os.listdir("/dev/shm"))
    """, "size=8m,nr_inodes=8")
    assert rc == 0, err
    assert "refused:" in out and "inodes" in out, out
    assert "left: []" in out


def _run(code):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_out_of_descriptors_is_a_resource_limit_naming_it(name):
    out = _run(f"""
        import os, resource, shmdict, shmdict.backends.shm
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        fds = []
        try:
            while True:
                fds.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        try:
            shmdict.open({name!r}, shmdict.Counter(), capacity=10)
        except shmdict.ResourceLimit as exc:
            print("refused:", exc)
        for fd in fds:
            os.close(fd)
        print("left:", [e for e in os.listdir("/dev/shm") if {name!r} in e])
    """)
    assert "refused:" in out and "file descriptors" in out and "64" in out, out
    assert "left: []" in out


def test_out_of_address_space_is_a_resource_limit_naming_it(name):
    out = _run(f"""
        import os, resource, shmdict
        with open("/proc/self/status") as f:
            vm = [int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize")][0]
        resource.setrlimit(resource.RLIMIT_AS, (vm + (64 << 20), resource.RLIM_INFINITY))
        try:
            shmdict.open({name!r}, shmdict.Counter(), capacity=2_000_000)   # ~200 MB
        except shmdict.ResourceLimit as exc:
            print("refused:", exc)
        print("left:", [e for e in os.listdir("/dev/shm") if {name!r} in e])
    """)
    assert "refused:" in out and "address space" in out, out
    assert "left: []" in out
