"""Snapshot files: a table's keys and values on disk, and back.

``/dev/shm`` does not survive a reboot; a snapshot file does.  This module
owns the file format and the steps every backend shares (writing a file
safely, reading and checking one, filling a table from it);
``backends.shm.snapshot`` takes the consistent snapshot of a shared-memory
table, and ``shmdict.save`` / ``shmdict.load`` (``api``) tie them together.

The format (version 1), all integers little-endian::

    magic        8 bytes  b"SHMDSNAP"
    version      u32      1
    meta_length  u32      bytes of the JSON that follows
    meta         JSON     {"format": "shmdict-snapshot", "name", "layout" (the
                          layout's spec, as in a segment header), "kind",
                          "capacity", "key_size", "count", "fence",
                          "saved_at", "shmdict"}
    count entries:
      key_length u32, key bytes (the canonical encoding, shmdict.keys)
      value      Counter: int64; Struct: u32 length + the packed record;
                 Lock: nothing (locks are never saved held: keys only)
    sha256       32 bytes over everything before it

A file that is truncated, has bytes past its end, or whose checksum does not
match is refused with :class:`SnapshotError` before anything is created.  The
checksum catches damage and careless edits, not an attacker (who can
recompute it): load only snapshots you made.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .errors import ShmDictError
from .keys import decode_key, encode_key
from .layouts import Layout, from_spec

MAGIC = b"SHMDSNAP"
VERSION = 1
FORMAT_NAME = "shmdict-snapshot"
_DIGEST = 32
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
#: The longest meta JSON a reader accepts (a Struct's spec is < 1 KiB).
_META_MAX = 1 << 20
#: Counter values go to a table in batches of this many keys.
_BATCH = 4096


class SnapshotError(ShmDictError, ValueError):
    """A snapshot file is not one shmdict wrote, is truncated or damaged,
    or does not fit the table it is loaded into."""


class Snapshot:
    """A snapshot read back: the table's shape and its entries.

    ``entries`` are ``(encoded key, value)``: an int (Counter), the packed
    record bytes (Struct) or None (Lock); ``keys`` are the same keys decoded
    (given when known, else decoded here).
    """

    def __init__(self, name: str, layout: Layout, capacity: int, key_size: int,
                 entries: List[Tuple[bytes, Any]], fence: int = 0,
                 saved_at: float = 0.0, keys: Optional[List[Any]] = None,
                 max_capacity: Optional[int] = None) -> None:
        self.name = name
        self.layout = layout
        self.capacity = capacity
        #: What the table may grow to (files from before growth: capacity).
        self.max_capacity = capacity if max_capacity is None else max_capacity
        self.key_size = key_size
        self.entries = entries
        self.keys = [decode_key(k) for k, _ in entries] if keys is None else keys
        self.fence = fence
        self.saved_at = saved_at

    def items(self) -> List[Tuple[Any, Any]]:
        """``(key, value)`` with keys decoded and Struct records unpacked."""
        kind = self.layout.kind
        return [(key, self.layout.unpack(v) if kind == "Struct" else v)
                for key, (_, v) in zip(self.keys, self.entries)]

    def __repr__(self) -> str:
        return (f"<Snapshot of {self.name!r}: {self.layout!r}, {len(self.entries)} keys, "
                f"capacity={self.capacity}, key_size={self.key_size}>")


# ------------------------------------------------------------------ write
def encode(name: str, layout: Layout, capacity: int, key_size: int,
           entries: Sequence[Tuple[bytes, Any]], fence: int = 0,
           max_capacity: Optional[int] = None) -> bytes:
    """The bytes of a snapshot file of these entries (see the module)."""
    meta = {"format": FORMAT_NAME, "name": name, "layout": json.loads(layout.spec_json()),
            "kind": layout.kind, "capacity": capacity, "key_size": key_size,
            "max_capacity": capacity if max_capacity is None else max_capacity,
            "count": len(entries), "fence": int(fence), "saved_at": time.time(),
            "shmdict": _package_version()}
    meta_bytes = json.dumps(meta, sort_keys=True).encode("utf-8")
    parts = [MAGIC, _U32.pack(VERSION), _U32.pack(len(meta_bytes)), meta_bytes]
    kind = layout.kind
    for encoded, value in entries:
        parts.append(_U32.pack(len(encoded)))
        parts.append(encoded)
        if kind == "Counter":
            parts.append(_I64.pack(value))
        elif kind == "Struct":
            record = bytes(value)[:layout.size]     # without the padding
            parts.append(_U32.pack(len(record)))
            parts.append(record)
    body = b"".join(parts)
    return body + hashlib.sha256(body).digest()


def write_file(path: "os.PathLike[str] | str", data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same
    directory, flushed to disk, then renamed over ``path``, so a crash
    leaves the old file or the new one, never half of one.  The file is
    mode 0600, as the tables are."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".shmdict-snapshot.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)           # the rename itself survives a power cut
    except OSError:
        pass
    finally:
        os.close(dfd)


def generic_entries(table: Any) -> List[Tuple[bytes, Any]]:
    """A snapshot's entries from any backend's ``items()``: consistent per
    key only (keys inserted or deleted meanwhile may or may not appear)."""
    kind = table.layout.kind
    out = []
    for key, value in table.items():
        encoded = encode_key(key, table.key_size)
        if kind == "Counter":
            out.append((encoded, int(value)))
        elif kind == "Struct":
            out.append((encoded, table.layout.pack(value)[:table.layout.size]))
        else:
            out.append((encoded, None))
    out.sort()
    return out


# ------------------------------------------------------------------- read
def decode(data: bytes, source: str = "snapshot") -> Snapshot:
    """Parse and check the bytes of a snapshot file; :class:`SnapshotError`
    naming what is wrong when they are not a whole, unchanged snapshot."""
    if data[:len(MAGIC)] != MAGIC:
        raise SnapshotError(f"{source} is not a shmdict snapshot (no {MAGIC.decode()} "
                            f"signature{'; it is empty' if not data else ''})")
    if len(data) < len(MAGIC) + 8 + _DIGEST:
        raise SnapshotError(f"{source} is truncated ({len(data)} bytes); refusing it")
    version = _U32.unpack_from(data, 8)[0]
    if version != VERSION:
        raise SnapshotError(f"{source} is a version {version} snapshot; this shmdict "
                            f"reads version {VERSION}")
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise SnapshotError(f"{source} is damaged: its checksum does not match (truncated, "
                            f"or changed after it was saved); refusing it")
    meta_len = _U32.unpack_from(data, 12)[0]
    pos = 16 + meta_len
    if meta_len > _META_MAX or pos > len(body):
        raise SnapshotError(f"{source}: its description overruns the file")
    try:
        meta = json.loads(body[16:pos].decode("utf-8"))
        if meta.get("format") != FORMAT_NAME:
            raise ValueError(f"format {meta.get('format')!r}")
        layout = from_spec(meta["layout"])
        name, capacity, key_size = meta["name"], meta["capacity"], meta["key_size"]
        count, fence = meta["count"], meta.get("fence", 0)
        max_capacity = meta.get("max_capacity", capacity)
        if layout.kind != meta["kind"] or not all(
                isinstance(v, int) and v >= 0
                for v in (capacity, key_size, count, fence, max_capacity)) \
                or max_capacity < capacity:
            raise ValueError("inconsistent shape")
        if not isinstance(name, str):
            raise ValueError("name is not a string")
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError,
            OverflowError, RecursionError) as exc:
        raise SnapshotError(f"{source}: unreadable description ({type(exc).__name__}: "
                            f"{exc})") from None
    entries, keys = _entries(body, pos, count, layout, key_size, source)
    return Snapshot(name, layout, capacity, key_size, entries, fence,
                    float(meta.get("saved_at", 0.0)), keys, max_capacity)


def _entries(body: bytes, pos: int, count: int, layout: Layout, key_size: int,
             source: str) -> Tuple[List[Tuple[bytes, Any]], List[Any]]:
    kind = layout.kind
    record_size = layout.size if kind == "Struct" else 0
    end = len(body)
    out: List[Tuple[bytes, Any]] = []
    keys: List[Any] = []
    seen = set()

    def need(n: int) -> None:
        if pos + n > end:
            raise SnapshotError(f"{source}: entry {len(out) + 1} of {count} is cut short")

    for _ in range(count):      # bounded by the count, each step by the file's end
        need(4)
        klen = _U32.unpack_from(body, pos)[0]
        pos += 4
        need(klen)
        encoded = bytes(body[pos:pos + klen])
        pos += klen
        if not 0 < klen <= key_size:
            raise SnapshotError(f"{source}: entry {len(out) + 1} has a {klen}-byte key, "
                                f"the table's key_size is {key_size}")
        try:
            keys.append(decode_key(encoded))
        except (ValueError, RecursionError) as exc:
            raise SnapshotError(f"{source}: entry {len(out) + 1} has an undecodable key "
                                f"({exc})") from None
        if encoded in seen:
            raise SnapshotError(f"{source}: key {decode_key(encoded)!r} appears twice")
        seen.add(encoded)
        value: Any = None
        if kind == "Counter":
            need(8)
            value = _I64.unpack_from(body, pos)[0]
            pos += 8
        elif kind == "Struct":
            need(4)
            vlen = _U32.unpack_from(body, pos)[0]
            pos += 4
            if vlen != record_size:
                raise SnapshotError(f"{source}: entry {len(out) + 1} has a {vlen}-byte "
                                    f"record, the layout's is {record_size}")
            need(vlen)
            value = bytes(body[pos:pos + vlen])
            pos += vlen
        out.append((encoded, value))
    if pos != end:
        raise SnapshotError(f"{source}: {end - pos} bytes follow the last entry")
    return out, keys


def read_file(path: "os.PathLike[str] | str") -> Snapshot:
    """Read and check the snapshot file at ``path``."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    return decode(data, f"snapshot file {path!r}")


# ------------------------------------------------------------------- fill
def fill(table: Any, snapshot: Snapshot) -> int:
    """Write a snapshot's entries into ``table`` with its public verbs and
    return how many keys were written: Counter values are added (one batch
    call per few thousand keys: into a new table that is the saved value,
    into a live one it keeps every concurrent add), Struct records set,
    Lock keys created (free)."""
    kind = snapshot.layout.kind
    if table.layout != snapshot.layout:
        raise SnapshotError(f"table {table.name!r} is {table.layout!r}; the snapshot of "
                            f"{snapshot.name!r} holds {snapshot.layout!r}")
    if kind == "Counter":
        pairs = [(key, v) for key, (_, v) in zip(snapshot.keys, snapshot.entries)]
        for start in range(0, len(pairs), _BATCH):
            table.add_many(pairs[start:start + _BATCH])
        return len(pairs)
    for key, (_, value) in zip(snapshot.keys, snapshot.entries):
        if kind == "Struct":
            table.set(key, snapshot.layout.unpack(value))
        else:
            table.get(key)          # get-or-create: a free lock
    return len(snapshot.entries)


def _package_version() -> str:
    try:
        from importlib.metadata import version
        return version("shmdict")
    except Exception:
        return "?"


def describe(snapshot: Snapshot) -> Dict[str, Any]:
    """A snapshot's shape as JSON-ready data (for the CLI)."""
    return {"name": snapshot.name, "layout": repr(snapshot.layout),
            "capacity": snapshot.capacity, "max_capacity": snapshot.max_capacity,
            "key_size": snapshot.key_size,
            "count": len(snapshot.entries), "fence": snapshot.fence,
            "saved_at": snapshot.saved_at}


__all__ = ["Snapshot", "SnapshotError", "encode", "decode", "read_file", "write_file",
           "generic_entries", "fill", "describe", "MAGIC", "VERSION"]
