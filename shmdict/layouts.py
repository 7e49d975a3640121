"""Layouts: what one slot of a table holds.

A layout is the "generator" of Go's defaultdict: it fixes the value every new
key starts with and how many bytes a slot's value takes; each backend maps a
layout's ``kind`` to its table class (with that layout's verbs).  The
outcomes of the lock verbs, :class:`Outcome`, are the same on every backend.

Every value area starts with one int64 word, ``word0``, which the C core can
change together with the slot's state word in one 16-byte compare-and-swap;
layouts that need more bytes get an ``extra`` area after the key.

========  =================================  ==================================
layout    word0                              extra area
========  =================================  ==================================
Counter   the int64 value                    none
Lock      owner id (0: free)                 rw=True: 8 reader cells
Struct    record lock owner id               sequence word + two copies of the
                                             packed fields (format.h)
========  =================================  ==================================
"""
from __future__ import annotations

import collections
import enum
import json
import struct
from collections.abc import Mapping
from typing import Any, Dict, Optional, Tuple

# Codes whose size is the same everywhere (standard sizes, no native 'n',
# 'N', 'P'; 'p' and padding 'x' make no sense for a field).
_FIELD_CODE_CHARS = set("bBhHiIlLqQefd?c")
_INT_CODES = set("bBhHiIlLqQ")
READER_CELLS = 8
#: The largest packed record of a Struct: the format's value area is at most
#: 1 MiB, which holds the sequence word and two copies of the record (a
#: writer fills the copy that is not current, so one killed mid-copy leaves
#: the current one whole), each padded to 8 bytes.
MAX_RECORD_SIZE = ((1 << 20) - 8) // 2 // 8 * 8
#: The most fields a Struct may have.
MAX_FIELDS = 256


class Outcome(enum.IntEnum):
    """What a backend's lock primitive did.

    The values are the C core's result codes (``_core.OK`` ...), which are
    non-negative because the core keeps -1 for "an exception is set"; a test
    checks they agree.  Spelled out here so the Redis backend needs no C.
    """

    OK = 0            #: done
    RECOVERED = 1     #: acquired, but the previous owner had died holding it
    TIMEOUT = 2       #: not acquired within the timeout (or not blocking)
    STALE = 3         #: the slot no longer holds the caller's key: look it up again
    NOT_OWNER = 4     #: release of a lock this process does not hold
    BUSY = 5          #: delete refused: the lock is held


class Layout:
    """Base class: a description of a slot's value, comparable across processes."""

    kind = "?"

    #: int64 word0 of a new key, and the bytes of its extra area.
    def default_word0(self) -> int:
        return 0

    def default_extra(self) -> bytes:
        return b""

    def slot_extra(self) -> bytes:
        """A new key's extra area in a shared-memory slot (the segment's
        format; ``default_extra`` is the layout's value, as every backend
        keeps it)."""
        return self.default_extra()

    def spec(self) -> Dict[str, Any]:
        """A JSON-able description; equal specs mean compatible tables."""
        return {"layout": self.kind}

    def spec_json(self) -> str:
        return json.dumps(self.spec(), sort_keys=True, separators=(",", ":"))

    @property
    def extra_size(self) -> int:
        """Bytes of a shared-memory slot's extra area."""
        return len(self.slot_extra())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Layout) and self.spec() == other.spec()

    def __hash__(self) -> int:
        return hash(self.spec_json())

    def __repr__(self) -> str:
        return f"{self.kind}()"


class Counter(Layout):
    """An atomic int64 per key, starting at 0 (Go's ``new(int64)``)."""

    kind = "Counter"


class Lock(Layout):
    """A cross-process row lock per key; ``rw=True`` adds a shared mode."""

    kind = "Lock"

    def __init__(self, rw: bool = False) -> None:
        self.rw = bool(rw)

    def default_extra(self) -> bytes:
        return bytes(8 * READER_CELLS) if self.rw else b""

    def spec(self) -> Dict[str, Any]:
        return {"layout": self.kind, "rw": self.rw}

    def __repr__(self) -> str:
        return "Lock(rw=True)" if self.rw else "Lock()"


class Struct(Layout):
    """A fixed-size record per key, read as a consistent named tuple.

    Fields are ``struct`` module codes, optionally with a default::

        Struct(tokens="d", stamp="q", tag="16s")
        Struct(tokens=("d", 10.0), stamp="q")

    Sizes are the standard ones (``q`` is always 8 bytes) so every process
    agrees; strings (``Ns``) are zero-padded on write and returned as stored.
    """

    kind = "Struct"

    def __init__(self, **fields: Any) -> None:
        if not fields:
            raise ValueError("Struct() needs at least one field, e.g. Struct(count='q')")
        if len(fields) > MAX_FIELDS:
            raise ValueError(f"a Struct has at most {MAX_FIELDS} fields, got {len(fields)}")
        self.codes: Dict[str, str] = {}
        self.defaults: Dict[str, Any] = {}
        for name, spec in fields.items():
            if name.startswith("_") or name in ("recovered",):
                raise ValueError(f"field name {name!r} is reserved")
            if isinstance(spec, tuple):
                if len(spec) != 2:
                    raise ValueError(f"field {name!r}: give a code or (code, default)")
                code, default = spec
            else:
                code, default = spec, None
            self.codes[name] = _check_code(name, code)
            self.defaults[name] = default if default is not None else _zero(code)
        self.format = "<" + "".join(self.codes.values())
        try:
            size = struct.calcsize(self.format)   # before anything is allocated
        except struct.error as exc:
            raise ValueError(f"bad Struct fields: {exc}") from None
        if size > MAX_RECORD_SIZE:
            raise ValueError(f"a Struct record is at most {MAX_RECORD_SIZE:,} bytes, "
                             f"these fields take {size:,}")
        self._struct = struct.Struct(self.format)
        self.size = self._struct.size
        self.padded = (self.size + 7) // 8 * 8
        self._padding = bytes(self.padded - self.size)
        self.record = collections.namedtuple("Record", list(self.codes))  # type: ignore[misc]
        # The record class is made here, at run time, so pickle cannot find
        # it by name: a record pickles as (its layout, its values) instead.
        self.record.__reduce__ = _reduce_record       # type: ignore[assignment]
        self.record._layout = self                    # type: ignore[attr-defined]
        try:
            self._default_bytes = self.pack(self.defaults)
        except (struct.error, TypeError, ValueError) as exc:
            raise ValueError(f"bad Struct default: {exc}") from None

    # packing ------------------------------------------------------------
    def pack(self, values: Any) -> bytes:
        """Pack a record, mapping, or sequence of field values to padded bytes."""
        if isinstance(values, Mapping):
            unknown = set(values) - set(self.codes)
            if unknown:
                raise ValueError(f"unknown Struct fields: {sorted(unknown)}")
            ordered = [values.get(name, self.defaults[name]) for name in self.codes]
        else:
            ordered = list(values)
            if len(ordered) != len(self.codes):
                raise ValueError(f"a record has {len(self.codes)} fields, got {len(ordered)}")
        try:
            data = self._struct.pack(*ordered)
        except struct.error as exc:
            raise ValueError(f"cannot pack record {ordered!r}: {exc}") from None
        return data + self._padding

    def pack_in_order(self, values: Any) -> bytes:
        """Pack field values given in field order (the fast path of ``update``)."""
        try:
            return self._struct.pack(*values) + self._padding
        except struct.error as exc:
            raise ValueError(f"cannot pack record {list(values)!r}: {exc}") from None

    def unpack_values(self, data: bytes) -> Tuple[Any, ...]:
        """The field values as a plain tuple (no named tuple)."""
        return self._struct.unpack_from(data)

    def unpack(self, data: bytes) -> Tuple[Any, ...]:
        return tuple.__new__(self.record, self._struct.unpack_from(data))

    def is_int_field(self, name: str) -> bool:
        return self.codes[name][-1] in _INT_CODES

    # Layout interface ----------------------------------------------------
    def default_extra(self) -> bytes:
        return bytes(8) + self._default_bytes   # sequence word, then fields

    def slot_extra(self, data: Optional[bytes] = None) -> bytes:
        """A slot's extra area holding the packed record ``data`` (default:
        the default record): sequence word 0 (copy 0 current), then both
        copies (format.h, "A Struct slot's extra area")."""
        if data is None:
            data = self._default_bytes
        return bytes(8) + data + data

    def spec(self) -> Dict[str, Any]:
        return {"layout": self.kind, "fields": [[n, c, _jsonable(self.defaults[n])]
                                                for n, c in self.codes.items()]}

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={c!r}" for n, c in self.codes.items())
        return f"Struct({inner})"

    def __reduce__(self) -> Tuple[Any, ...]:
        # A struct.Struct and a run-time named tuple class do not pickle:
        # the fields (names, codes, defaults) rebuild everything.
        return (_struct_layout, (tuple((n, c, self.defaults[n]) for n, c in self.codes.items()),))


#: Struct layouts rebuilt by unpickling, by fields, so the records of one
#: layout unpickled one by one share one record class (bounded).
_UNPICKLED: Dict[Tuple[Any, ...], "Struct"] = {}


def _struct_layout(fields: Tuple[Tuple[str, str, Any], ...]) -> "Struct":
    """Unpickle a Struct layout."""
    layout = _UNPICKLED.get(fields)
    if layout is None:
        layout = Struct(**{name: (code, default) for name, code, default in fields})
        if len(_UNPICKLED) >= 64:
            _UNPICKLED.clear()
        _UNPICKLED[fields] = layout
    return layout


def _reduce_record(record: Tuple[Any, ...]) -> Tuple[Any, ...]:
    return (_record, (type(record)._layout, tuple(record)))  # type: ignore[attr-defined]


def _record(layout: "Struct", values: Tuple[Any, ...]) -> Tuple[Any, ...]:
    """Unpickle a Struct record (a named tuple of ``layout``)."""
    return tuple.__new__(layout.record, values)


def _check_code(name: str, code: object) -> str:
    if not isinstance(code, str) or not code:
        raise ValueError(f"field {name!r}: a struct code such as 'q', 'd' or '16s'")
    count, letter = code[:-1], code[-1]
    if letter == "s":
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"field {name!r}: strings need a length, e.g. '16s'")
    elif count or letter not in _FIELD_CODE_CHARS:
        raise ValueError(f"field {name!r}: unsupported struct code {code!r} "
                         f"(use one of {''.join(sorted(_FIELD_CODE_CHARS))} or 'Ns')")
    return code


def _zero(code: str) -> Any:
    letter = code[-1]
    if letter == "s" or letter == "c":
        return b"" if letter == "s" else b"\x00"
    if letter == "?":
        return False
    if letter in "efd":
        return 0.0
    return 0


def _jsonable(value: Any) -> Any:
    return value.hex() if isinstance(value, bytes) else value


def from_spec(spec: Any) -> Layout:
    """Rebuild a layout from the spec stored in a segment's header.

    The spec is data from outside (anyone who can write the segment can
    write it), so every part of it is type-checked and bounded before it is
    used: anything unexpected is a ``ValueError``.
    """
    if not isinstance(spec, dict):
        raise ValueError(f"a layout description is an object, not {type(spec).__name__}")
    kind = spec.get("layout")
    if kind == "Counter" and set(spec) == {"layout"}:
        return Counter()
    if kind == "Lock" and set(spec) == {"layout", "rw"} and isinstance(spec["rw"], bool):
        return Lock(rw=spec["rw"])
    if kind == "Struct" and set(spec) == {"layout", "fields"}:
        entries = spec["fields"]
        if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_FIELDS:
            raise ValueError(f"Struct fields must be a list of 1 to {MAX_FIELDS} entries")
        fields: Dict[str, Any] = {}
        for entry in entries:
            if not (isinstance(entry, list) and len(entry) == 3
                    and isinstance(entry[0], str) and isinstance(entry[1], str)):
                raise ValueError(f"bad Struct field entry {entry!r:.80}")
            name, code, default = entry
            if not name.isidentifier() or name in fields or len(code) > 12:
                raise ValueError(f"bad Struct field {name!r:.80}: {code!r:.20}")
            _check_code(name, code)
            letter = code[-1]
            if letter in "sc":
                if not isinstance(default, str) or len(default) > 2 * MAX_RECORD_SIZE:
                    raise ValueError(f"field {name!r}: default is not hex text")
                default = bytes.fromhex(default)
            elif letter == "?":
                if not isinstance(default, bool):
                    raise ValueError(f"field {name!r}: default is not a bool")
            elif letter in "efd":
                if isinstance(default, bool) or not isinstance(default, (int, float)):
                    raise ValueError(f"field {name!r}: default is not a number")
            elif isinstance(default, bool) or not isinstance(default, int):
                raise ValueError(f"field {name!r}: default is not an int")
            fields[name] = (code, default)
        return Struct(**fields)
    raise ValueError(f"unknown or malformed layout {str(kind)[:40]!r}")
