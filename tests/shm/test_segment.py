"""Segment lifecycle: create/attach, mismatches, corruption, permissions, unlink."""
from __future__ import annotations

import os
import stat

import posix_ipc
import pytest

import shmdict
from shmdict.backends.shm.segment import semaphore_name


def test_layout_mismatch_names_both(name):
    d = shmdict.open(name, shmdict.Counter(), capacity=100)
    try:
        with pytest.raises(shmdict.LayoutMismatch) as err:
            shmdict.open(name, shmdict.Lock(), capacity=100)
        assert "Counter()" in str(err.value) and "Lock()" in str(err.value)
        with pytest.raises(shmdict.LayoutMismatch, match="capacity=100.*capacity=200"):
            shmdict.open(name, shmdict.Counter(), capacity=200)
        with pytest.raises(shmdict.LayoutMismatch, match="key_size"):
            shmdict.open(name, shmdict.Counter(), capacity=100, key_size=32)
        with pytest.raises(shmdict.LayoutMismatch):
            shmdict.open(name, shmdict.Struct(a="q"), capacity=100)
    finally:
        d.close()


def test_struct_field_changes_are_mismatches(name):
    d = shmdict.open(name, shmdict.Struct(a="q", b="d"), capacity=10)
    try:
        with pytest.raises(shmdict.LayoutMismatch):
            shmdict.open(name, shmdict.Struct(a="q", b="q"), capacity=10)
        with pytest.raises(shmdict.LayoutMismatch):
            shmdict.open(name, shmdict.Struct(a="q", b=("d", 1.0)), capacity=10)
        same = shmdict.open(name, shmdict.Struct(a="q", b="d"), capacity=10)
        same.close()
    finally:
        d.close()


@pytest.mark.parametrize("capacity", [0, -1, 2**40])
def test_bad_capacity(name, capacity):
    with pytest.raises(ValueError, match="capacity"):
        shmdict.open(name, shmdict.Counter(), capacity=capacity)
    assert name not in shmdict.list_tables()


@pytest.mark.parametrize("capacity", [1.5, "10", None])
def test_capacity_type(name, capacity):
    with pytest.raises(TypeError):
        shmdict.open(name, shmdict.Counter(), capacity=capacity)


@pytest.mark.parametrize("key_size", [0, 5000])
def test_bad_key_size(name, key_size):
    with pytest.raises(ValueError, match="key_size"):
        shmdict.open(name, shmdict.Counter(), key_size=key_size)


def test_bad_layout(name):
    with pytest.raises(TypeError, match="layout"):
        shmdict.open(name, "Counter")
    with pytest.raises(ValueError):
        shmdict.Struct()
    with pytest.raises(ValueError, match="unsupported struct code"):
        shmdict.Struct(a="P")
    with pytest.raises(ValueError, match="length"):
        shmdict.Struct(a="s")


def test_create_false_needs_a_table(name):
    with pytest.raises(shmdict.TableNotFound):
        shmdict.open(name, shmdict.Counter(), create=False)
    with pytest.raises(FileNotFoundError):
        shmdict.attach(name)


def _segment_path(name):
    return f"/dev/shm/shmdict.{name}"


def test_wrong_magic_is_corrupt_segment_and_no_crash(name):
    d = shmdict.open(name, shmdict.Counter(), capacity=10)
    d.add("k")
    d.close()
    with open(_segment_path(name), "r+b") as f:
        f.write(b"NOTMAGIC")
    with pytest.raises(shmdict.CorruptSegment, match="magic"):
        shmdict.open(name, shmdict.Counter(), capacity=10)


def test_wrong_version_and_geometry_are_corrupt_segment(name):
    shmdict.open(name, shmdict.Counter(), capacity=10).close()
    path = _segment_path(name)
    original = open(path, "rb").read()
    for offset, garbage in [(8, b"\x63\x00\x00\x00"),        # version
                            (32, b"\xff" * 8),              # slot count
                            (40, b"\x03\x00\x00\x00\x00\x00\x00\x00")]:  # slot size
        with open(path, "r+b") as f:
            f.write(original)
            f.seek(offset)
            f.write(garbage)
        with pytest.raises(shmdict.CorruptSegment):
            shmdict.open(name, shmdict.Counter(), capacity=10)


def test_permissions_are_0600(name):
    old = os.umask(0)
    try:
        shmdict.open(name, shmdict.Counter(), capacity=10).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(_segment_path(name)).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(f"/dev/shm/sem.shmdict.{name}.s0").st_mode) == 0o600


def test_mode_shares_deliberately(name):
    shmdict.open(name, shmdict.Counter(), capacity=10, mode=0o660).close()
    assert stat.S_IMODE(os.stat(_segment_path(name)).st_mode) == 0o660


def test_unlink_removes_segment_and_semaphores(name):
    d = shmdict.open(name, shmdict.Counter(), capacity=10)
    assert name in shmdict.list_tables()
    d.unlink()
    assert name not in shmdict.list_tables()
    with pytest.raises(posix_ipc.ExistentialError):
        posix_ipc.Semaphore(semaphore_name(name, 0))
    assert not [e for e in os.listdir("/dev/shm") if e.startswith(f"sem.shmdict.{name}.")]
    assert shmdict.unlink(name) is False


def test_attached_process_keeps_working_after_unlink(name):
    d = shmdict.open(name, shmdict.Counter(), capacity=10)
    d.add("k")
    shmdict.unlink(name)
    assert d.add("k") == 2        # its mapping stays valid until close
    d.close()
    fresh = shmdict.open(name, shmdict.Counter(), capacity=10)
    assert fresh.read("k") == (0, False)
    fresh.close()


def test_segment_size_per_slot(name):
    d = shmdict.open(name, shmdict.Counter(), capacity=1000, key_size=64)
    header = d._segment.header
    assert header["slot_size"] <= 64 + 32     # 24 bytes of slot header, to 16
    assert header["capacity"] / header["nslots"] <= 0.75
    d.close()


def test_an_attacher_checking_a_new_segment_in_the_creators_first_instant(name, monkeypatch):
    """Between a creator's O_EXCL create and its creation lock, an attacher
    may find the new file unpublished and unlocked, take it for a dead
    creator's, lock it and remove it.  The creator, whose lock then fails,
    starts over (it used to raise "Resource temporarily unavailable")."""
    import fcntl
    import threading
    from shmdict.backends.shm import segment
    real = posix_ipc.SharedMemory
    path = segment.segment_path(name)
    raced = []

    def racing(shm_name, flags=0, *args, **kwargs):
        made = real(shm_name, flags, *args, **kwargs)
        if flags == posix_ipc.O_CREX and not raced and shm_name == segment.segment_name(name):
            # The attacher's _abandoned(): lock, see no magic, remove, unlock.
            fd = os.open(path, os.O_RDWR)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.unlink(path)
            raced.append(fd)
            threading.Timer(0.3, os.close, (fd,)).start()
        return made

    monkeypatch.setattr(segment.posix_ipc, "SharedMemory", racing)
    table = shmdict.open(name, shmdict.Counter(), capacity=10)
    assert raced, "the race was not staged"
    table.add("k", 2)
    assert shmdict.open(name, shmdict.Counter(), capacity=10).read("k") == (2, True)
    table.close()
