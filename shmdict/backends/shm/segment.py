"""Segment lifecycle: create or attach a table's shared memory and semaphores.

A table named ``NAME`` is

* one POSIX shared-memory segment ``/dev/shm/shmdict.NAME`` (what
  ``multiprocessing.shared_memory.SharedMemory("shmdict.NAME")`` would open),
  created mode 0600, holding a header, a stripe table and the slot array;
* ``nstripes`` POSIX named semaphores ``/shmdict.NAME.sI`` (posix_ipc), one per
  stripe, serialising inserts and deletes of the keys whose hash falls in it;
* when it was opened with ``max_capacity > capacity`` and has grown, one
  more segment per tier, ``/dev/shm/shmdict.NAME+tK`` (format.h, "Tiers"),
  created as the first one is (O_EXCL, mode, flock until published) and
  removed with the table.  ``+`` is never in a table name, so a tier never
  collides with a table, and ``shmdict ls`` does not list it.

The segment is opened with posix_ipc and mapped with ``mmap`` rather than
through ``multiprocessing.shared_memory``: on Python < 3.13 the latter
registers every attach with ``multiprocessing.resource_tracker``, which
unlinks the segment when the attaching process exits.  Here nothing but an
explicit ``unlink`` ever removes a table.

Creation is race-free: the segment is created with O_CREAT|O_EXCL, so of
several processes opening a new table at once exactly one creates it; it
creates the semaphores, writes the header and publishes the magic word last.
The others attach, waiting (boundedly) for the magic to appear.
"""
from __future__ import annotations

import errno
import fcntl
import grp
import json
import mmap
import os
import pwd
import resource
import stat
import struct
import time
from typing import Any, Dict, List, Optional

import posix_ipc
import xxhash

from ...errors import (
    CorruptSegment,
    LayoutMismatch,
    PermissionDenied,
    ResourceLimit,
    ShmDictError,
    TableNotFound,
    UnsafeSegment,
)
from ...layouts import Layout, from_spec
from ...validate import Sharing, table_growth, table_shape
from . import _core

PREFIX = "shmdict."
SHM_DIR = "/dev/shm"
DEFAULT_STRIPES = 16
#: What a table is created with, and accepts, unless told otherwise: this
#: user's alone.
DEFAULT_SHARING = Sharing()

# The segment format is the C core's (format.h): every offset, size and
# constant below comes from it.
MAGIC: int = _core.MAGIC
VERSION: int = _core.FORMAT_VERSION
HEADER_SIZE: int = _core.HEADER_SIZE
_SPEC_MAX: int = _core.SPEC_MAX
#: ``struct`` formats of the header fields, at their offsets.
_FIELDS = {name: (offset, struct.Struct("<" + code))
           for name, (offset, code) in _core.HEADER_FIELDS.items()}
_MAGIC_AT = _FIELDS["magic"][0]
#: The header fields the creator writes (all but the magic, the spec and the
#: counters the core keeps).
_WRITTEN = ("version", "header_size", "fingerprint", "capacity", "nslots", "slot_size",
            "key_size", "extra_size", "nstripes", "seed", "stripes_offset",
            "data_offset", "created", "max_capacity", "tiers", "tier")
#: Between a table's name and a tier's index in the tier's segment name.
TIER_MARK = "+t"


def _read_field(mm: Any, field: str) -> Any:
    offset, fmt = _FIELDS[field]
    return fmt.unpack_from(mm, offset)[0]


def _write_field(mm: Any, field: str, value: Any) -> None:
    offset, fmt = _FIELDS[field]
    fmt.pack_into(mm, offset, value)


def segment_name(name: str) -> str:
    return "/" + PREFIX + name


def segment_path(name: str) -> str:
    """Where Linux shows the segment of table ``name``."""
    return SHM_DIR + "/" + PREFIX + name


def tier_name(name: str, k: int) -> str:
    """The segment name (after the prefix) of tier ``k`` >= 1 of table ``name``."""
    return f"{name}{TIER_MARK}{k}"


def semaphore_name(name: str, stripe: int) -> str:
    return f"/{PREFIX}{name}.s{stripe}"


class Geometry:
    """The numbers that fix a table's shape, computed or read from a header.

    The shape itself (slot count, slot size, offsets, total size) is the C
    core's ``_core.geometry``, format.h's one rule.
    """

    def __init__(self, layout: Layout, capacity: int, key_size: int,
                 nstripes: int = DEFAULT_STRIPES, max_capacity: Optional[int] = None) -> None:
        table_shape(capacity, key_size)
        #: The table grows online (in tiers) up to this many keys.
        self.max_capacity = table_growth(capacity, max_capacity)
        if not 1 <= nstripes <= _core.MAX_STRIPES:
            raise ValueError(f"stripe count must be between 1 and {_core.MAX_STRIPES}, "
                             f"got {nstripes}")
        self.layout = layout
        self.capacity = capacity
        self.key_size = key_size
        self.nstripes = nstripes
        self.extra_size = layout.extra_size
        shape = _core.geometry(capacity, key_size, self.extra_size, nstripes)
        self.nslots: int = shape["nslots"]
        self.slot_size: int = shape["slot_size"]
        self.stripes_offset: int = shape["stripes_offset"]
        self.data_offset: int = shape["data_offset"]
        self.size: int = shape["size"]

    def describe(self) -> str:
        return f"{self.layout!r}, capacity={self.capacity}, key_size={self.key_size}"

    def tier(self, k: int) -> "Geometry":
        """The geometry of tier ``k`` (format.h's growth rule); ValueError if none."""
        capacity = _core.tier_capacity(self.capacity, self.max_capacity, k)
        if capacity == 0:
            raise ValueError(f"a table of capacity {self.capacity} growing to "
                             f"{self.max_capacity} has no tier {k}")
        return Geometry(self.layout, capacity, self.key_size, self.nstripes,
                        self.max_capacity)


class Segment:
    """A mapped table segment plus its stripe semaphores (one per process)."""

    def __init__(self, name: str, mm: mmap.mmap, header: Dict[str, Any],
                 layout: Layout, semaphores: List[posix_ipc.Semaphore],
                 sharing: Sharing = DEFAULT_SHARING, created: bool = False) -> None:
        self.name = name
        self.mm = mm
        self.header = header
        self.layout = layout
        self.semaphores = semaphores
        #: What this process accepted when it opened the table (a pickled
        #: table reattaches with the same).
        self.sharing = sharing
        #: Whether this process created the table (and so may remove it if
        #: setting it up fails further on).
        self.created = created

    # ----------------------------------------------------------- open/create
    @classmethod
    def open(cls, name: str, geometry: Optional[Geometry], *, create: bool = True,
             mode: Optional[int] = None, attach_timeout: float = 5.0,
             sharing: Optional[Sharing] = None) -> "Segment":
        """Create the table, or attach to the existing one.

        With ``geometry`` None, only attach (and take the shape from the header).
        ``sharing`` (see :class:`shmdict.validate.Sharing`) sets up a new
        table and says which existing ones this process trusts; ``mode``
        alone is a shorthand for ``Sharing(mode)``.
        """
        if sharing is None:
            sharing = Sharing(mode) if mode is not None else DEFAULT_SHARING
        deadline = time.monotonic() + attach_timeout
        while True:
            if create and geometry is not None:
                try:
                    made = cls._create(name, geometry, sharing)
                except posix_ipc.ExistentialError:
                    made = None      # somebody else created it first: attach
                if made is not None:
                    return made
            recreate = create and geometry is not None
            try:
                found = cls._attach(name, geometry, deadline, sharing, recreate=recreate)
            except TableNotFound:
                if not recreate or time.monotonic() > deadline:
                    raise
                continue         # removed meanwhile: create it
            if found is not None:
                return found
            # An unfinished segment whose creator is gone was removed: create
            # it afresh (the loop is bounded by the attach deadline).

    @classmethod
    def _create(cls, name: str, g: Geometry, sharing: Sharing) -> Optional["Segment"]:
        """Create the table; None when another process took the name over
        while this one was creating it (then attach instead)."""
        _check_room(g.size)
        path = segment_path(name)
        try:
            shm = posix_ipc.SharedMemory(segment_name(name), posix_ipc.O_CREX,
                                         mode=sharing.mode)
        except posix_ipc.ExistentialError:
            raise
        except (posix_ipc.Error, OSError, MemoryError) as exc:
            raise _os_failure(exc, f"cannot create table {name!r} ({path})") from None
        fd = shm.fd
        mm = None
        semaphores: List[posix_ipc.Semaphore] = []
        ours = False
        try:
            # The lock says "being created" to attachers until this process
            # publishes the table or dies (the kernel drops it then): an
            # unpublished segment that nobody holds was abandoned.
            if not _lock_new(fd) or not _names_file(path, fd):
                shm.close_fd()
                return None      # an attacher removed it before we locked it
            ours = True
            os.fchmod(fd, sharing.mode)    # the umask may have narrowed it
            _chown(fd, None, sharing, f"table {name!r}")
            os.ftruncate(fd, g.size)
            _reserve(fd, g.size, name)
            mm = mmap.mmap(fd, g.size)
            for i in range(g.nstripes):
                semaphores.append(_create_semaphore(name, i, sharing))
            spec = g.layout.spec_json().encode()
            if len(spec) > _SPEC_MAX:
                raise ValueError("layout description too long (too many Struct fields)")
            seed = int.from_bytes(os.urandom(8), "little")
            values = {"version": VERSION, "header_size": HEADER_SIZE,
                      "fingerprint": _fingerprint(spec), "capacity": g.capacity,
                      "nslots": g.nslots, "slot_size": g.slot_size, "key_size": g.key_size,
                      "extra_size": g.extra_size, "nstripes": g.nstripes, "seed": seed,
                      "stripes_offset": g.stripes_offset, "data_offset": g.data_offset,
                      "created": int(time.time()), "max_capacity": g.max_capacity,
                      "tiers": 1, "tier": 0}
            for field in _WRITTEN:
                _write_field(mm, field, values[field])
            _write_field(mm, "spec_length", len(spec))
            _write_field(mm, "spec", spec)
            _core.store_u64(mm, _MAGIC_AT, MAGIC)    # publish: attachers may now proceed
            header = read_header(mm, name)
        except BaseException as exc:
            for sem in semaphores:
                _close_semaphore(sem)
            if mm is not None:
                mm.close()
            if ours:
                _destroy(name, len(semaphores))
            shm.close_fd()
            if isinstance(exc, (OSError, MemoryError)) and not isinstance(exc, ShmDictError):
                raise _os_failure(exc, f"cannot create table {name!r}") from None
            raise
        shm.close_fd()    # and with it the creation lock
        return cls(name, mm, header, g.layout, semaphores, sharing, created=True)

    @classmethod
    def _attach(cls, name: str, wanted: Optional[Geometry], deadline: float,
                sharing: Sharing, recreate: bool) -> Optional["Segment"]:
        """Attach to the table; None when it was an abandoned, unfinished
        segment of this user that was removed (``recreate``: create it anew)."""
        path = segment_path(name)
        while True:
            shm = _open_segment(name, sharing)
            try:
                size = os.fstat(shm.fd).st_size
                if size >= HEADER_SIZE:
                    try:
                        mm = mmap.mmap(shm.fd, size)
                    except (OSError, MemoryError) as exc:
                        raise _os_failure(exc, f"cannot map table {name!r}") from None
                    if _core.load_u64(mm, _MAGIC_AT) != 0:
                        break
                    mm.close()
                # Not published yet: is its creator still at work?
                if _abandoned(shm.fd, path, remove=recreate):
                    if recreate:
                        return None
                    raise TableNotFound(
                        f"table {name!r} was left unfinished by a creator that died (or "
                        f"{path} was made by hand); the next shmdict.open() with a layout "
                        f"re-creates it")
            finally:
                shm.close_fd()
            if time.monotonic() > deadline:
                raise CorruptSegment(
                    f"table {name!r} is still being created by a live process that has "
                    f"not finished it; try again, or remove it with `shmdict rm {name}`")
            time.sleep(0.002)
        try:
            header = read_header(mm, name)
            layout = header["layout"]
            if wanted is not None:
                have = (header["fingerprint"], header["capacity"], header["key_size"])
                want = (_fingerprint(wanted.layout.spec_json().encode()), wanted.capacity,
                        wanted.key_size)
                if have != want:
                    raise LayoutMismatch(
                        f"table {name!r} exists with {layout!r}, capacity={header['capacity']}, "
                        f"key_size={header['key_size']}; you asked for {wanted.describe()}. "
                        f"Open it with the same arguments, or remove it with `shmdict rm {name}`")
            semaphores: List[posix_ipc.Semaphore] = []
            try:
                for i in range(header["nstripes"]):
                    semaphores.append(_open_semaphore(name, i, sharing))
            except BaseException:
                for sem in semaphores:
                    _close_semaphore(sem)
                raise
        except BaseException:
            mm.close()
            raise
        return cls(name, mm, header, layout, semaphores, sharing)

    # --------------------------------------------------------------- teardown
    def close(self) -> None:
        for sem in self.semaphores:
            _close_semaphore(sem)
        self.semaphores = []
        if not self.mm.closed:
            self.mm.close()


# ---------------------------------------------------------------- tiers
def open_tier(name: str, k: int, table: Geometry, header0: Dict[str, Any], *,
              create: bool, sharing: Sharing, attach_timeout: float = 5.0) -> mmap.mmap:
    """Map tier ``k`` >= 1 of table ``name`` (``table``: tier 0's geometry,
    with its max_capacity; ``header0``: tier 0's header).

    With ``create``, make it if it does not exist yet: exactly one process
    creates it (O_EXCL), holding an ``flock`` on it until its magic is
    published, as for a table; the others wait for the magic (bounded by
    ``attach_timeout``), and a tier whose creator died before publishing it
    is removed and created anew.  Without ``create`` the tier must exist
    (tier 0 says it was published).  The caller then publishes the tier
    (``Core.publish_tier``) and hands the mapping to ``Core.add_tier``.
    """
    g = table.tier(k)
    tname = tier_name(name, k)
    path = segment_path(tname)
    deadline = time.monotonic() + attach_timeout
    while True:
        if create:
            try:
                made = _create_tier(tname, g, k, header0, sharing)
            except posix_ipc.ExistentialError:
                made = None          # another process creates it: wait for it
            if made is not None:
                return made
        try:
            shm = _open_segment(tname, sharing)
        except TableNotFound:
            if create:
                continue             # removed meanwhile (abandoned): create it
            raise CorruptSegment(f"table {name!r} has lost its tier {k} ({path}); remove "
                                 f"it with `shmdict rm {name}` and create it again") from None
        try:
            size = os.fstat(shm.fd).st_size
            if size >= HEADER_SIZE:
                try:
                    mm = mmap.mmap(shm.fd, size)
                except (OSError, MemoryError) as exc:
                    raise _os_failure(exc, f"cannot map tier {k} of table {name!r}") from None
                if _core.load_u64(mm, _MAGIC_AT) != 0:
                    try:
                        _check_tier(mm, tname, g, k, header0)
                    except BaseException:
                        mm.close()
                        raise
                    return mm
                mm.close()
            if _abandoned(shm.fd, path, remove=create) and create:
                continue             # its creator died before publishing it
        finally:
            shm.close_fd()
        if time.monotonic() > deadline:
            raise CorruptSegment(
                f"tier {k} of table {name!r} ({path}) is still being created by a live "
                f"process that has not finished it; try again, or remove the table with "
                f"`shmdict rm {name}`")
        time.sleep(0.002)


def _create_tier(tname: str, g: Geometry, k: int, header0: Dict[str, Any],
                 sharing: Sharing) -> Optional[mmap.mmap]:
    """Create tier segment ``tname``; None when another process took the
    name over while this one was creating it (then wait for that one)."""
    _check_room(g.size)
    try:
        shm = posix_ipc.SharedMemory(segment_name(tname), posix_ipc.O_CREX, mode=sharing.mode)
    except posix_ipc.ExistentialError:
        raise
    except (posix_ipc.Error, OSError, MemoryError) as exc:
        raise _os_failure(exc, f"cannot create {segment_path(tname)}") from None
    fd = shm.fd
    mm = None
    ours = False
    try:
        # Locked until published, as a table's creation (see Segment._create).
        if not _lock_new(fd) or not _names_file(segment_path(tname), fd):
            shm.close_fd()
            return None
        ours = True
        os.fchmod(fd, sharing.mode)
        _chown(fd, None, sharing, f"tier {tname!r}")
        os.ftruncate(fd, g.size)
        _reserve(fd, g.size, tname)
        mm = mmap.mmap(fd, g.size)
        spec = g.layout.spec_json().encode()
        values = {"version": VERSION, "header_size": HEADER_SIZE,
                  "fingerprint": header0["fingerprint"], "capacity": g.capacity,
                  "nslots": g.nslots, "slot_size": g.slot_size, "key_size": g.key_size,
                  "extra_size": g.extra_size, "nstripes": g.nstripes, "seed": header0["seed"],
                  "stripes_offset": g.stripes_offset, "data_offset": g.data_offset,
                  "created": int(time.time()), "max_capacity": g.max_capacity,
                  "tiers": 0, "tier": k}
        for field in _WRITTEN:
            _write_field(mm, field, values[field])
        _write_field(mm, "spec_length", len(spec))
        _write_field(mm, "spec", spec)
        _core.store_u64(mm, _MAGIC_AT, MAGIC)       # published
        _check_tier(mm, tname, g, k, header0)
    except BaseException as exc:
        if mm is not None:
            mm.close()
        if ours:
            try:
                posix_ipc.unlink_shared_memory(segment_name(tname))
            except posix_ipc.Error:
                pass
        shm.close_fd()
        if isinstance(exc, (OSError, MemoryError)) and not isinstance(exc, ShmDictError):
            raise _os_failure(exc, f"cannot create {segment_path(tname)}") from None
        raise
    shm.close_fd()        # and with it the creation lock
    return mm


def _check_tier(mm: Any, tname: str, g: Geometry, k: int, header0: Dict[str, Any]) -> None:
    """``CorruptSegment`` unless ``mm`` is tier ``k`` of the table of ``header0``."""
    header = read_header(mm, tname)
    if (header["tier"], header["capacity"], header["seed"], header["fingerprint"],
            header["key_size"], header["nstripes"]) != (
            k, g.capacity, header0["seed"], header0["fingerprint"], header0["key_size"],
            header0["nstripes"]):
        raise CorruptSegment(f"{segment_path(tname)} is not tier {k} of table "
                             f"{header0['name']!r} (another table's leftover?); remove the "
                             f"table with `shmdict rm {header0['name']}`")


# ---------------------------------------------------------------- trust
def _user(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _group(gid: int) -> str:
    try:
        return f"gid {gid} ({grp.getgrgid(gid).gr_name})"
    except KeyError:
        return f"gid {gid}"


def _my_groups() -> set:
    return {os.getegid(), *os.getgroups()}


def describe_file(st: os.stat_result) -> str:
    """``owned by uid 1000 (alice), group gid 1000 (alice), mode 0o600``."""
    return (f"owned by {_user(st.st_uid)}, group {_group(st.st_gid)}, "
            f"mode {stat.S_IMODE(st.st_mode):#o}")


def check_trusted(st: os.stat_result, what: str, path: str, sharing: Sharing) -> None:
    """Refuse (``UnsafeSegment``) a file this process did not choose to trust.

    Trusted: a regular file owned by this user (or root, or ``sharing.uid``),
    or, when the caller shares with a group (``group=``), one whose group is
    that group; writable by the group only when the caller chose group
    sharing, by others only when it chose ``mode`` with the others' write bit.
    """
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise UnsafeSegment(f"{what} {path} is {kind} ({describe_file(st)}), which shmdict "
                            f"never makes: refusing it. Remove it (as its owner or root)")
    me = os.geteuid()
    mode = stat.S_IMODE(st.st_mode)
    group_chosen = sharing.gid is not None and st.st_gid == sharing.gid
    owners = {me, 0} if sharing.uid is None else {me, 0, sharing.uid}
    if st.st_uid not in owners and not group_chosen:
        raise UnsafeSegment(
            f"{what} {path} is {describe_file(st)}, not by this process's user "
            f"({_user(me)}): another user may have planted it to read or change this "
            f"user's data, so shmdict refuses it. If you share this table with that user on "
            f"purpose, open it with owner={st.st_uid} (or group=... with the table's group); "
            f"otherwise remove it as that user or root (`shmdict rm`)")
    if st.st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX):
        raise UnsafeSegment(f"{what} {path} is {describe_file(st)} with setuid/setgid/sticky "
                            f"bits ({stat.S_IMODE(st.st_mode) & 0o7000:#o}), which shmdict "
                            f"never sets: refusing it")
    if mode & 0o002 and not sharing.mode & 0o002:
        raise UnsafeSegment(
            f"{what} {path} is {describe_file(st)}: writable by every user on this host, "
            f"so anyone could change or corrupt it; refusing it. Pass mode={mode:#o} if "
            f"you chose that on purpose, or remove it and create it again")
    if mode & 0o020 and not (sharing.mode & 0o020 and (
            group_chosen or (sharing.gid is None and st.st_gid in _my_groups()))):
        raise UnsafeSegment(
            f"{what} {path} is {describe_file(st)}: writable by the members of "
            f"{_group(st.st_gid)}, a sharing this process did not choose; refusing it. "
            f"Open it with group={st.st_gid} (and mode={mode:#o}) to share it with them")


def _names_file(path: str, fd: int) -> bool:
    """Whether ``path`` (not followed) still names the file open on ``fd``."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _lstat(path: str) -> Optional[os.stat_result]:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _os_failure(exc, f"cannot look at {path}") from None


def _open_segment(name: str, sharing: Sharing) -> posix_ipc.SharedMemory:
    """Open an existing segment, checked with ``fstat`` before anything maps it."""
    path = segment_path(name)
    st = _lstat(path)
    if st is None:
        raise TableNotFound(f"no shmdict table named {name!r} on this host")
    # First on what the path shows (a symlink, another user's file: refused
    # before anything opens it), then, authoritatively, on the open descriptor.
    check_trusted(st, "segment", path, sharing)
    try:
        shm = posix_ipc.SharedMemory(segment_name(name))
    except posix_ipc.ExistentialError:
        raise TableNotFound(f"no shmdict table named {name!r} on this host") from None
    except posix_ipc.PermissionsError:
        raise PermissionDenied(
            f"this process's user ({_user(os.geteuid())}) may not open table {name!r}: "
            f"{path} is {describe_file(st)}. Have its creator pass owner= this user, or "
            f"group= a group of this user (mode 0o660), to shmdict.open") from None
    except (posix_ipc.Error, OSError, MemoryError) as exc:
        raise _os_failure(exc, f"cannot open table {name!r} ({path})") from None
    try:
        check_trusted(os.fstat(shm.fd), "segment", path, sharing)
    except BaseException:
        shm.close_fd()
        raise
    return shm


def _lock_new(fd: int) -> bool:
    """Take the creation lock on a segment this process just created (O_EXCL).

    False when an attacher holds it: between our create and this lock the
    new file was unpublished and unlocked, which :func:`_abandoned` takes for
    a dead creator's, so that attacher is removing it; the caller starts
    over (its create then makes a fresh file)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _abandoned(fd: int, path: str, remove: bool) -> bool:
    """Whether the unpublished segment open on ``fd`` has no live creator.

    A creator holds an exclusive ``flock`` on its segment until it publishes
    it (the kernel drops it when the creator dies, however it dies), so an
    unpublished segment that can be locked was abandoned, or made by hand.
    With ``remove``, remove it while holding the lock, if ``path`` still
    names it (so two processes never both remove, and never a successor).
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False          # its creator is at work
    except OSError:
        return False
    try:
        magic = os.pread(fd, 8, _MAGIC_AT)
        if len(magic) == 8 and int.from_bytes(magic, "little") != 0:
            return False      # published meanwhile
        if not _names_file(path, fd):
            return False      # already replaced: look again
        if remove:
            os.unlink(path)
        return True
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _chown(fd: Optional[int], path: Optional[str], sharing: Sharing, what: str) -> None:
    """Give a new segment (``fd``) or semaphore (``path``) its owner and group."""
    uid = -1 if sharing.uid is None or sharing.uid == os.geteuid() else sharing.uid
    gid = -1 if sharing.gid is None else sharing.gid
    if uid == -1 and gid == -1:
        return
    try:
        if fd is not None:
            os.fchown(fd, uid, gid)
        else:
            os.chown(path, uid, gid, follow_symlinks=False)   # type: ignore[arg-type]
    except PermissionError:
        if uid != -1 and os.geteuid() != 0:
            raise PermissionDenied(
                f"cannot create {what} for {_user(uid)}: only root can create a table "
                f"owned by another user (owner=); run this as root, or let that user "
                f"create it") from None
        raise PermissionDenied(
            f"cannot give {what} to {_group(gid)}: this user ({_user(os.geteuid())}) is "
            f"not a member of that group") from None


def _semaphore_path(name: str, stripe: int) -> str:
    return f"{SHM_DIR}/sem.{PREFIX}{name}.s{stripe}"


def _create_semaphore(name: str, stripe: int, sharing: Sharing) -> posix_ipc.Semaphore:
    """Create stripe semaphore ``stripe`` of a new table, with its mode and owner."""
    sname, path = semaphore_name(name, stripe), _semaphore_path(name, stripe)
    st = _lstat(path)
    if st is not None:
        # A leftover of a table removed by hand is this user's to remove;
        # anyone else's is refused (it could be held forever by its maker).
        if st.st_uid != os.geteuid() or not stat.S_ISREG(st.st_mode):
            raise UnsafeSegment(
                f"semaphore {path} of new table {name!r} already exists, {describe_file(st)}"
                f": another user may be squatting this table's name. Remove it as root "
                f"(or that user), or choose another name")
        _unlink_semaphore(sname)
    try:
        sem = posix_ipc.Semaphore(sname, posix_ipc.O_CREX, mode=sharing.mode, initial_value=1)
    except posix_ipc.ExistentialError:
        raise UnsafeSegment(f"semaphore {path} of new table {name!r} was created by another "
                            f"process meanwhile; refusing it") from None
    except (posix_ipc.Error, OSError, MemoryError) as exc:
        raise _os_failure(exc, f"cannot create semaphore {path}") from None
    try:
        st = os.lstat(path)
        if st.st_uid != os.geteuid() or not stat.S_ISREG(st.st_mode):
            raise UnsafeSegment(f"semaphore {path} changed while it was created "
                                f"({describe_file(st)}); refusing it")
        os.chmod(path, sharing.mode)   # posix_ipc applied the umask
        _chown(None, path, sharing, f"semaphore {path}")
    except BaseException:
        _close_semaphore(sem)
        raise
    return sem


def _open_semaphore(name: str, stripe: int, sharing: Sharing) -> posix_ipc.Semaphore:
    """Open an existing stripe semaphore, refusing one this process does not trust."""
    path = _semaphore_path(name, stripe)
    lost = CorruptSegment(f"table {name!r} has lost its semaphore {stripe} (it is being "
                          f"removed?); remove it with `shmdict rm {name}` and create it again")
    before = _lstat(path)
    if before is None:
        raise lost
    check_trusted(before, "semaphore", path, sharing)
    try:
        sem = posix_ipc.Semaphore(semaphore_name(name, stripe))
    except posix_ipc.ExistentialError:
        raise lost from None
    except posix_ipc.PermissionsError:
        raise PermissionDenied(
            f"this process's user ({_user(os.geteuid())}) may not open semaphore {path} of "
            f"table {name!r}: it is {describe_file(before)}. Have the table's creator pass "
            f"owner= this user (gunicorn --user: the worker's user), or group= a group "
            f"of this user with mode=0o660, to shmdict.open") from None
    except (posix_ipc.Error, OSError, MemoryError) as exc:
        raise _os_failure(exc, f"cannot open semaphore {path}") from None
    after = _lstat(path)
    if after is None or (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
        _close_semaphore(sem)
        raise UnsafeSegment(f"semaphore {path} of table {name!r} was replaced while it "
                            f"was opened; refusing it")
    return sem


def _close_semaphore(sem: posix_ipc.Semaphore) -> None:
    try:
        sem.close()
    except posix_ipc.Error:
        pass


# ------------------------------------------------------------- resources
def _reserve(fd: int, size: int, name: str) -> None:
    """Back every page of a new segment now, so a full /dev/shm fails here,
    with an error, and never later with SIGBUS on first touch."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return      # a filesystem that cannot reserve (not tmpfs)
        if exc.errno == errno.ENOSPC:
            raise ResourceLimit(
                f"cannot reserve {size:,} bytes for table {name!r}: {SHM_DIR} is full "
                f"({_shm_room()}); lower capacity or key_size, remove unused tables "
                f"(`shmdict ls`, `shmdict rm`), or enlarge {SHM_DIR} (Docker: --shm-size)"
            ) from None
        raise _os_failure(exc, f"cannot reserve {size:,} bytes for table {name!r}") from None


def _shm_room() -> str:
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return "free space unknown"
    return (f"{st.f_bavail * st.f_frsize:,} bytes and {st.f_favail:,} inodes free of "
            f"{st.f_blocks * st.f_frsize:,} bytes")


def _os_failure(exc: BaseException, what: str) -> ShmDictError:
    """A shmdict error for an ``OSError``/``MemoryError``/posix_ipc error,
    naming the limit that was hit."""
    import resource
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code is None:
        # posix_ipc raises its own classes, some with only a message.
        lowered = text.lower()
        for num, phrases in ((errno.EMFILE, ("maximum number of files open",)),
                             (errno.ENFILE, ("file table overflow", "system-wide")),
                             (errno.ENOSPC, ("no space",)),
                             (errno.ENOMEM, ("memory",))):
            if os.strerror(num).lower() in lowered or any(p in lowered for p in phrases):
                code = num
                break
    if code == errno.EMFILE:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return ResourceLimit(f"{what}: this process is out of file descriptors (limit "
                             f"{soft}, `ulimit -n`); close some or raise the limit")
    if code == errno.ENFILE:
        return ResourceLimit(f"{what}: the system's table of open files is full "
                             f"(sysctl fs.file-max)")
    if code == errno.ENOSPC:
        return ResourceLimit(f"{what}: {SHM_DIR} is out of space or inodes ({_shm_room()}); "
                             f"remove unused tables or enlarge {SHM_DIR}")
    if code == errno.ENOMEM or isinstance(exc, MemoryError):
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        limit = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft:,} bytes"
        return ResourceLimit(f"{what}: out of memory or address space (address-space "
                             f"limit {limit}, `ulimit -v`)")
    if code in (errno.EACCES, errno.EPERM) or isinstance(exc, posix_ipc.PermissionsError):
        return PermissionDenied(f"{what}: permission denied ({text})")
    return ShmDictError(f"{what}: {text or type(exc).__name__}")


def read_header(mm: Any, name: str = "?") -> Dict[str, Any]:
    """Parse and check a segment's header; ``CorruptSegment`` if it is wrong."""
    size = len(mm)
    if size < HEADER_SIZE:
        raise CorruptSegment(f"table {name!r}: segment too small ({size} bytes)")
    fields = {field: _read_field(mm, field) for field in _FIELDS if field != "spec"}
    magic, version, fingerprint = fields["magic"], fields["version"], fields["fingerprint"]
    capacity, key_size, nstripes = fields["capacity"], fields["key_size"], fields["nstripes"]
    if magic != MAGIC:
        raise CorruptSegment(f"table {name!r}: wrong magic {magic:#x}; not a shmdict segment "
                             f"or overwritten. Remove it with `shmdict rm {name}`")
    if version != VERSION:
        raise CorruptSegment(f"table {name!r}: format version {version}, this shmdict "
                             f"reads version {VERSION}")
    spec_len = fields["spec_length"]
    if spec_len > _SPEC_MAX:
        raise CorruptSegment(f"table {name!r}: layout description overruns the header")
    spec = _read_field(mm, "spec")[:spec_len]
    if _fingerprint(spec) != fingerprint:
        raise CorruptSegment(f"table {name!r}: layout description does not match its fingerprint")
    try:
        layout = from_spec(json.loads(spec))
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError,
            RecursionError) as exc:
        raise CorruptSegment(f"table {name!r}: unreadable layout description "
                             f"({type(exc).__name__}: {exc})") from None
    try:
        g = Geometry(layout, capacity, key_size, nstripes, fields["max_capacity"])
    except (ValueError, TypeError) as exc:
        raise CorruptSegment(f"table {name!r}: impossible header ({exc})") from None
    shape = ("nslots", "slot_size", "extra_size", "stripes_offset", "data_offset")
    if any(fields[f] != getattr(g, f) for f in shape) \
            or fields["header_size"] != HEADER_SIZE or size < g.size:
        raise CorruptSegment(f"table {name!r}: header geometry is inconsistent "
                             f"(slots {fields['nslots']}, slot size {fields['slot_size']}, "
                             f"{size} bytes mapped)")
    return {"name": name, "version": version, "fingerprint": fingerprint, "capacity": capacity,
            "nslots": g.nslots, "slot_size": g.slot_size, "key_size": key_size,
            "extra_size": g.extra_size, "nstripes": nstripes, "seed": fields["seed"],
            "stripes_offset": g.stripes_offset, "data_offset": g.data_offset,
            "created": fields["created"], "layout": layout, "size": g.size,
            "max_capacity": g.max_capacity, "tier": fields["tier"]}


def _fingerprint(spec: bytes) -> int:
    return xxhash.xxh3_64_intdigest(spec)


def _check_room(size: int) -> None:
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return
    room = st.f_bavail * st.f_frsize
    if size > room:
        raise ResourceLimit(f"a table of {size:,} bytes does not fit in /dev/shm "
                           f"({room:,} bytes free); lower capacity or key_size")


def _unlink_semaphore(sname: str) -> bool:
    try:
        posix_ipc.unlink_semaphore(sname)
        return True
    except posix_ipc.ExistentialError:
        return False
    except posix_ipc.PermissionsError:
        path = f"{SHM_DIR}/sem.{sname[1:]}"
        st = _lstat(path)
        raise PermissionDenied(f"cannot remove semaphore {path}"
                               + (f": it is {describe_file(st)}" if st else "")
                               + "; remove it as its owner or root") from None


def _destroy(name: str, nstripes: int) -> None:
    try:
        posix_ipc.unlink_shared_memory(segment_name(name))
    except posix_ipc.ExistentialError:
        pass
    for i in range(nstripes):
        _unlink_semaphore(semaphore_name(name, i))


def destroy(name: str) -> bool:
    """Remove table ``name``: its segment and all its semaphores.

    Processes still attached keep their mapping until they close it, but the
    name is free at once.  Returns whether a segment existed.
    """
    path = segment_path(name)
    st = _lstat(path)
    existed = st is not None
    nstripes = 0
    if st is not None and stat.S_ISREG(st.st_mode):
        # Read the stripe count without mapping anything (a file truncated
        # under a mapping would SIGBUS us) and without following links.
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                offset, fmt = _FIELDS["nstripes"]
                raw = os.pread(fd, fmt.size, offset)
                if len(raw) == fmt.size:
                    nstripes = fmt.unpack(raw)[0]
            finally:
                os.close(fd)
    if existed:
        try:
            posix_ipc.unlink_shared_memory(segment_name(name))
        except posix_ipc.ExistentialError:
            pass
        except posix_ipc.PermissionsError:
            raise PermissionDenied(f"cannot remove table {name!r}: {path} is "
                                   f"{describe_file(st)}; remove it as its owner or "
                                   f"root") from None
    for i in range(min(nstripes, _core.MAX_STRIPES)):
        _unlink_semaphore(semaphore_name(name, i))
    _destroy_tiers(name)
    # Also sweep semaphores whose count the header no longer tells us.
    prefix = f"sem.{PREFIX}{name}.s"
    try:
        for entry in os.listdir(SHM_DIR):
            if entry.startswith(prefix) and entry[len(prefix):].isdigit():
                _unlink_semaphore("/" + entry[4:])
    except OSError:
        pass
    return existed


def _destroy_tiers(name: str) -> None:
    """Remove the tier segments of table ``name`` (``NAME+tK``)."""
    prefix = PREFIX + tier_name(name, 0)[:-1]
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        return
    for entry in entries:
        if entry.startswith(prefix) and entry[len(prefix):].isdigit():
            try:
                posix_ipc.unlink_shared_memory("/" + entry)
            except posix_ipc.ExistentialError:
                pass
            except posix_ipc.PermissionsError:
                raise PermissionDenied(f"cannot remove {SHM_DIR}/{entry}, a tier of table "
                                       f"{name!r}; remove it as its owner or root") from None


def list_segments() -> List[str]:
    """Names of the shmdict tables on this host (Linux: from /dev/shm)."""
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        return []
    # A tier (NAME+tK) is part of its table, not a table.
    return sorted(e[len(PREFIX):] for e in entries
                  if e.startswith(PREFIX) and TIER_MARK not in e)
