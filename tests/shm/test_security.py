"""Trust nothing in /dev/shm this user did not make (one user's side of it).

Segments and semaphores are checked on attach (owner, mode, file type, with
``fstat`` on the descriptor that is mapped), ``mode`` is validated, the
semaphores get the table's mode whatever the umask, a crafted header is
refused at once, and an unfinished segment whose creator is gone is
re-created.  tests/shm/test_multiuser.py has the other users' side.
"""
from __future__ import annotations

import fcntl
import json
import os
import resource
import stat
import struct
import subprocess
import sys
import time

import pytest
import xxhash

import shmdict
from shmdict.backends.shm import _core
from shmdict.backends.shm.segment import _FIELDS, segment_path


def _sem_path(name, i=0):
    return f"/dev/shm/sem.shmdict.{name}.s{i}"


def _leftovers(name):
    return [e for e in os.listdir("/dev/shm")
            if e == f"shmdict.{name}" or e.startswith(f"sem.shmdict.{name}.")]


# ------------------------------------------------------------------- mode
@pytest.mark.parametrize("mode, error", [
    (-1, ValueError), (0o4777, ValueError), (0o1600, ValueError), (0o1000000, ValueError),
    (0o400, ValueError), (0o200, ValueError), (0, ValueError),
    (True, TypeError), (1.5, TypeError), ("0o600", TypeError),
])
def test_bad_mode_is_refused_before_anything_is_created(name, mode, error):
    with pytest.raises(error, match="mode"):
        shmdict.open(name, shmdict.Counter(), capacity=10, mode=mode)
    assert _leftovers(name) == []


def test_group_without_group_bits_is_refused(name):
    with pytest.raises(ValueError, match="group"):
        shmdict.open(name, shmdict.Counter(), capacity=10, mode=0o600, group=os.getegid())
    with pytest.raises(ValueError, match="no such group"):
        shmdict.open(name, shmdict.Counter(), capacity=10, group="shmdict-no-such-group")
    with pytest.raises(ValueError, match="no such user"):
        shmdict.open(name, shmdict.Counter(), capacity=10, owner="shmdict-no-such-user")
    assert _leftovers(name) == []


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_semaphores_get_the_tables_mode_whatever_the_umask(name, umask):
    old = os.umask(umask)
    try:
        shmdict.open(name, shmdict.Counter(), capacity=10, mode=0o660).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(segment_path(name)).st_mode) == 0o660
    for i in range(16):
        assert stat.S_IMODE(os.stat(_sem_path(name, i)).st_mode) == 0o660


def test_group_sets_the_group_and_mode_0660(name):
    gid = os.getegid()
    shmdict.open(name, shmdict.Counter(), capacity=10, group=gid).close()
    for path in (segment_path(name), _sem_path(name)):
        st = os.stat(path)
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o660, gid)


# ------------------------------------------------------- what attach refuses
def test_world_writable_segment_is_refused_unless_chosen(name):
    shmdict.open(name, shmdict.Counter(), capacity=10).close()
    os.chmod(segment_path(name), 0o666)
    t0 = time.monotonic()
    with pytest.raises(shmdict.UnsafeSegment, match="every user.*0o666"):
        shmdict.open(name, shmdict.Counter(), capacity=10)
    assert time.monotonic() - t0 < 1
    with pytest.raises(shmdict.UnsafeSegment):
        shmdict.attach(name)
    with pytest.raises(PermissionError):       # UnsafeSegment is a PermissionError too
        shmdict.attach(name)
    # sharing with everyone, chosen on purpose
    shmdict.open(name, shmdict.Counter(), capacity=10, mode=0o666).close()


def test_group_writable_segment_needs_group_sharing(name):
    shmdict.open(name, shmdict.Counter(), capacity=10).close()
    os.chmod(segment_path(name), 0o660)
    with pytest.raises(shmdict.UnsafeSegment, match="group="):
        shmdict.open(name, shmdict.Counter(), capacity=10)
    shmdict.open(name, shmdict.Counter(), capacity=10, mode=0o660).close()
    shmdict.open(name, shmdict.Counter(), capacity=10, group=os.getegid()).close()


def test_world_writable_semaphore_is_refused(name):
    shmdict.open(name, shmdict.Counter(), capacity=10).close()
    os.chmod(_sem_path(name, 3), 0o666)
    with pytest.raises(shmdict.UnsafeSegment, match=r"semaphore .*\.s3 .*0o666"):
        shmdict.open(name, shmdict.Counter(), capacity=10)


def test_symlink_is_refused_at_once(name, tmp_path):
    victim = shmdict.open(name + ".real", shmdict.Counter(), capacity=10)
    try:
        os.symlink(segment_path(name + ".real"), segment_path(name))
        t0 = time.monotonic()
        with pytest.raises(shmdict.UnsafeSegment, match="symbolic link"):
            shmdict.open(name, shmdict.Counter(), capacity=10)
        with pytest.raises(shmdict.UnsafeSegment, match="symbolic link"):
            shmdict.attach(name)
        assert time.monotonic() - t0 < 1
        assert shmdict.unlink(name)            # removes the link, not its target
        assert os.path.exists(segment_path(name + ".real"))
    finally:
        victim.unlink()


def test_a_fifo_is_refused_at_once(name):
    os.mkfifo(segment_path(name), 0o600)
    t0 = time.monotonic()
    with pytest.raises(shmdict.UnsafeSegment, match="not a regular file"):
        shmdict.open(name, shmdict.Counter(), capacity=10)
    assert time.monotonic() - t0 < 1


def test_symlinked_semaphore_is_refused(name):
    shmdict.open(name, shmdict.Counter(), capacity=10).close()
    path = _sem_path(name, 0)
    os.rename(path, path + ".moved")
    try:
        os.symlink(path + ".moved", path)
        with pytest.raises(shmdict.UnsafeSegment, match="symbolic link"):
            shmdict.open(name, shmdict.Counter(), capacity=10)
    finally:
        os.unlink(path + ".moved")


# ------------------------------------------------------- crafted headers
def _craft(name, spec_obj):
    """Overwrite the table's spec with ``spec_obj`` and a matching fingerprint."""
    spec = json.dumps(spec_obj).encode()
    with open(segment_path(name), "r+b") as f:
        for field, value in (("spec_length", len(spec)),
                             ("fingerprint", xxhash.xxh3_64_intdigest(spec))):
            offset, fmt = _FIELDS[field]
            f.seek(offset)
            f.write(fmt.pack(value))
        offset, _ = _FIELDS["spec"]
        f.seek(offset)
        f.write(spec)


@pytest.mark.parametrize("spec", [
    [], "Counter", None, 7, {"layout": []}, {"layout": "Lock", "rw": "yes"},
    {"layout": "Struct"}, {"layout": "Struct", "fields": []},
    {"layout": "Struct", "fields": {"a": "q"}},
    {"layout": "Struct", "fields": [["a", 5, 0]]},
    {"layout": "Struct", "fields": [[1, "q", 0]]},
    {"layout": "Struct", "fields": [["a", "q"]]},
    {"layout": "Struct", "fields": [["a", "q", "zero"]]},
    {"layout": "Struct", "fields": [["a", "4s", 12]]},
    {"layout": "Struct", "fields": [["a", "2000000000s", ""]]},
    {"layout": "Struct", "fields": [["a", "99999999999999999999s", ""]]},
    {"layout": "Struct", "fields": [["a", "q", 0], ["a", "q", 0]]},
    {"layout": "Struct", "fields": [["class", "q", 0]]},
])
def test_crafted_spec_with_a_valid_fingerprint_is_corrupt_segment(name, spec):
    shmdict.open(name, shmdict.Counter(), capacity=10).close()
    _craft(name, spec)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    with pytest.raises(shmdict.CorruptSegment):
        shmdict.attach(name)
    assert time.monotonic() - t0 < 1
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 100_000                 # no 2 GB default record built


def test_deeply_nested_spec_is_corrupt_segment(name):
    shmdict.open(name, shmdict.Counter(), capacity=10).close()
    spec = b"[" * 440 + b"]" * 440
    with open(segment_path(name), "r+b") as f:
        for field, value in (("spec_length", len(spec)),
                             ("fingerprint", xxhash.xxh3_64_intdigest(spec))):
            offset, fmt = _FIELDS[field]
            f.seek(offset)
            f.write(fmt.pack(value))
        f.seek(_FIELDS["spec"][0])
        f.write(spec)
    with pytest.raises(shmdict.CorruptSegment):
        shmdict.attach(name)


def test_struct_records_are_bounded():
    with pytest.raises(ValueError, match="at most"):
        shmdict.Struct(a="2000000000s")
    with pytest.raises(ValueError):
        shmdict.Struct(a="99999999999999999999s")


def test_a_struct_too_large_for_the_format_leaves_nothing_behind(name):
    with pytest.raises(ValueError):
        shmdict.open(name, shmdict.Struct(a="1048570s"), capacity=10)
    assert _leftovers(name) == []


# ------------------------------------- unfinished segments and their creators
def test_an_empty_file_of_this_user_is_replaced_at_once(name):
    open(segment_path(name), "wb").close()
    os.chmod(segment_path(name), 0o600)
    t0 = time.monotonic()
    d = shmdict.open(name, shmdict.Counter(), capacity=10)
    assert time.monotonic() - t0 < 1
    assert d.add("k") == 1
    d.close()


def test_attach_only_of_an_abandoned_segment_is_table_not_found(name):
    open(segment_path(name), "wb").close()
    t0 = time.monotonic()
    with pytest.raises(shmdict.TableNotFound, match="unfinished"):
        shmdict.attach(name)
    assert time.monotonic() - t0 < 1


def test_a_creator_killed_before_publishing_is_replaced(name):
    """A real creator SIGKILLed after writing part of its header: the next
    opener re-creates the table at once instead of CorruptSegment."""
    script = f"""
import os, signal, shmdict
from shmdict.backends.shm import _core, segment
real = _core.store_u64
def die(mm, offset, value):
    if offset == segment._MAGIC_AT:
        os.kill(os.getpid(), signal.SIGKILL)     # just before publishing
    real(mm, offset, value)
segment._core.store_u64 = die
shmdict.open({name!r}, shmdict.Counter(), capacity=10)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    assert os.path.exists(segment_path(name))
    t0 = time.monotonic()
    d = shmdict.open(name, shmdict.Counter(), capacity=10)
    assert time.monotonic() - t0 < 1
    assert d.add("k") == 1 and len(d) == 1
    assert d.check()
    d.close()


def test_a_live_creator_is_waited_for_not_replaced(name):
    """An unpublished segment whose creator holds its creation lock (is alive)
    is never removed: the attacher waits, and gives up after its timeout."""
    path = segment_path(name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, 4096)
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(shmdict.CorruptSegment, match="still being created"):
            shmdict.attach(name, attach_timeout=0.3)
        assert os.path.exists(path)
        st = os.fstat(fd)
        assert (os.stat(path).st_ino, os.stat(path).st_dev) == (st.st_ino, st.st_dev)
    finally:
        os.close(fd)


def test_concurrent_openers_of_an_abandoned_segment_agree(name):
    """Several processes finding the same abandoned segment: one re-creates it,
    all end up on the same table (every add is counted)."""
    open(segment_path(name), "wb").close()
    script = f"""
import shmdict
d = shmdict.open({name!r}, shmdict.Counter(), capacity=100)
for _ in range(500):
    d.add("k")
d.close()
"""
    procs = [subprocess.Popen([sys.executable, "-c", script]) for _ in range(4)]
    assert [p.wait(timeout=60) for p in procs] == [0] * 4
    d = shmdict.open(name, shmdict.Counter(), capacity=100)
    assert d.read("k") == (2000, True)
    d.close()
