"""Segment lifecycle: create or attach a table's shared memory and semaphores.

A table named ``NAME`` is

* one POSIX shared-memory segment ``/dev/shm/shmdict.NAME`` (what
  ``multiprocessing.shared_memory.SharedMemory("shmdict.NAME")`` would open),
  created mode 0600, holding a header, a stripe table and the slot array;
* ``nstripes`` POSIX named semaphores ``/shmdict.NAME.sI`` (posix_ipc), one per
  stripe, serialising inserts and deletes of the keys whose hash falls in it.

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

import json
import mmap
import os
import struct
import time
from typing import Any, Dict, List, Optional

import posix_ipc
import xxhash

from ...errors import CorruptSegment, LayoutMismatch, ShmDictError, TableNotFound
from ...layouts import Layout, from_spec
from ...validate import table_shape
from . import _core

PREFIX = "shmdict."
SHM_DIR = "/dev/shm"
DEFAULT_STRIPES = 16

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
            "data_offset", "created")


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


def semaphore_name(name: str, stripe: int) -> str:
    return f"/{PREFIX}{name}.s{stripe}"


class Geometry:
    """The numbers that fix a table's shape, computed or read from a header.

    The shape itself (slot count, slot size, offsets, total size) is the C
    core's ``_core.geometry``, format.h's one rule.
    """

    def __init__(self, layout: Layout, capacity: int, key_size: int,
                 nstripes: int = DEFAULT_STRIPES) -> None:
        table_shape(capacity, key_size)
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


class Segment:
    """A mapped table segment plus its stripe semaphores (one per process)."""

    def __init__(self, name: str, mm: mmap.mmap, header: Dict[str, Any],
                 layout: Layout, semaphores: List[posix_ipc.Semaphore]) -> None:
        self.name = name
        self.mm = mm
        self.header = header
        self.layout = layout
        self.semaphores = semaphores

    # ----------------------------------------------------------- open/create
    @classmethod
    def open(cls, name: str, geometry: Optional[Geometry], *, create: bool = True,
             mode: int = 0o600, attach_timeout: float = 5.0) -> "Segment":
        """Create the table, or attach to the existing one.

        With ``geometry`` None, only attach (and take the shape from the header).
        """
        if create and geometry is not None:
            try:
                return cls._create(name, geometry, mode)
            except posix_ipc.ExistentialError:
                pass  # somebody else created it first: attach
        return cls._attach(name, geometry, attach_timeout)

    @classmethod
    def _create(cls, name: str, g: Geometry, mode: int) -> "Segment":
        _check_room(g.size)
        shm = posix_ipc.SharedMemory(segment_name(name), posix_ipc.O_CREX, mode=mode, size=g.size)
        try:
            os.fchmod(shm.fd, mode)   # the umask may have narrowed it
            mm = mmap.mmap(shm.fd, g.size)
        except BaseException:
            shm.close_fd()
            shm.unlink()
            raise
        shm.close_fd()
        try:
            semaphores = []
            for i in range(g.nstripes):
                sname = semaphore_name(name, i)
                _unlink_semaphore(sname)     # a leftover from a table removed by hand
                semaphores.append(posix_ipc.Semaphore(sname, posix_ipc.O_CREX, mode=mode,
                                                      initial_value=1))
            spec = g.layout.spec_json().encode()
            if len(spec) > _SPEC_MAX:
                raise ValueError("layout description too long (too many Struct fields)")
            seed = int.from_bytes(os.urandom(8), "little")
            values = {"version": VERSION, "header_size": HEADER_SIZE,
                      "fingerprint": _fingerprint(spec), "capacity": g.capacity,
                      "nslots": g.nslots, "slot_size": g.slot_size, "key_size": g.key_size,
                      "extra_size": g.extra_size, "nstripes": g.nstripes, "seed": seed,
                      "stripes_offset": g.stripes_offset, "data_offset": g.data_offset,
                      "created": int(time.time())}
            for field in _WRITTEN:
                _write_field(mm, field, values[field])
            _write_field(mm, "spec_length", len(spec))
            _write_field(mm, "spec", spec)
            _core.store_u64(mm, _MAGIC_AT, MAGIC)    # publish: attachers may now proceed
        except BaseException:
            mm.close()
            _destroy(name, g.nstripes)
            raise
        header = read_header(mm, name)
        return cls(name, mm, header, g.layout, semaphores)

    @classmethod
    def _attach(cls, name: str, wanted: Optional[Geometry], timeout: float) -> "Segment":
        deadline = time.monotonic() + timeout
        while True:
            try:
                shm = posix_ipc.SharedMemory(segment_name(name))
            except posix_ipc.ExistentialError:
                raise TableNotFound(f"no shmdict table named {name!r} on this host") from None
            try:
                if shm.size >= HEADER_SIZE:
                    mm = mmap.mmap(shm.fd, shm.size)
                    if _core.load_u64(mm, _MAGIC_AT) != 0:
                        break
                    mm.close()
            finally:
                shm.close_fd()
            if time.monotonic() > deadline:
                raise CorruptSegment(
                    f"table {name!r} was never finished by its creator (it may have died "
                    f"while creating it); remove it with `shmdict rm {name}`")
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
            semaphores = []
            for i in range(header["nstripes"]):
                try:
                    semaphores.append(posix_ipc.Semaphore(semaphore_name(name, i)))
                except posix_ipc.ExistentialError:
                    raise CorruptSegment(
                        f"table {name!r} has lost its semaphore {i} (it is being removed?); "
                        f"remove it with `shmdict rm {name}` and create it again") from None
        except BaseException:
            mm.close()
            raise
        return cls(name, mm, header, layout, semaphores)

    # --------------------------------------------------------------- teardown
    def close(self) -> None:
        for sem in self.semaphores:
            try:
                sem.close()
            except posix_ipc.Error:
                pass
        self.semaphores = []
        if not self.mm.closed:
            self.mm.close()


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
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptSegment(f"table {name!r}: unreadable layout description ({exc})") from None
    try:
        g = Geometry(layout, capacity, key_size, nstripes)
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
            "created": fields["created"], "layout": layout, "size": g.size}


def _fingerprint(spec: bytes) -> int:
    return xxhash.xxh3_64_intdigest(spec)


def _check_room(size: int) -> None:
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return
    room = st.f_bavail * st.f_frsize
    if size > room:
        raise ShmDictError(f"a table of {size:,} bytes does not fit in /dev/shm "
                           f"({room:,} bytes free); lower capacity or key_size")


def _unlink_semaphore(sname: str) -> bool:
    try:
        posix_ipc.unlink_semaphore(sname)
        return True
    except posix_ipc.ExistentialError:
        return False


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
    existed = True
    nstripes = 0
    try:
        shm = posix_ipc.SharedMemory(segment_name(name))
        try:
            if shm.size >= HEADER_SIZE:
                mm = mmap.mmap(shm.fd, HEADER_SIZE)
                try:
                    nstripes = _read_field(mm, "nstripes")
                finally:
                    mm.close()
        finally:
            shm.close_fd()
    except posix_ipc.ExistentialError:
        existed = False
    _destroy(name, min(nstripes, _core.MAX_STRIPES) if existed else 0)
    # Also sweep semaphores whose count the header no longer tells us.
    prefix = f"sem.{PREFIX}{name}.s"
    try:
        for entry in os.listdir(SHM_DIR):
            if entry.startswith(prefix) and entry[len(prefix):].isdigit():
                _unlink_semaphore("/" + entry[4:])
    except OSError:
        pass
    return existed


def list_segments() -> List[str]:
    """Names of the shmdict tables on this host (Linux: from /dev/shm)."""
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        return []
    return sorted(e[len(PREFIX):] for e in entries if e.startswith(PREFIX))
