"""Struct records as Python objects: the mutable record of ``update()``.

``read`` returns the layout's named tuple (``Struct.record``); inside ``with
d.update(key) as rec:`` the block gets a :class:`MutableRecord` whose
attributes are the fields, written back on a clean exit.  Both backends build
them here, so a record behaves the same wherever the table lives.
"""
from __future__ import annotations

import keyword
import struct
from typing import Any, Callable, Tuple

from .layouts import Struct


class MutableRecord:
    """The record inside ``with d.update(key) as rec:``; written back on a clean exit.

    Each Struct layout gets its own subclass whose ``__slots__`` are the
    fields (see :func:`record_class`), so ``rec.tokens -= 1`` is a plain
    attribute access and a misspelt field is an ``AttributeError``.
    ``recovered`` says whether the previous writer died inside an update.
    """

    __slots__ = ("recovered",)
    _fields: Tuple[str, ...] = ()

    def _astuple(self) -> Tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def _asdict(self) -> dict:
        return {name: getattr(self, name) for name in self._fields}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._asdict().items())
        return f"MutableRecord({inner})"

    def __reduce__(self) -> Tuple[Any, ...]:
        # The class is made at run time per layout: pickle the layout instead.
        return (_unpickle, (type(self)._layout, self._astuple(),     # type: ignore[attr-defined]
                            getattr(self, "recovered", False)))


def _unpickle(layout: Struct, values: Tuple[Any, ...], recovered: bool) -> MutableRecord:
    return make_record(record_class(layout), values, recovered)


def record_class(layout: Struct) -> type:
    """The MutableRecord subclass for one layout's fields (made once per layout)."""
    cls = layout.__dict__.get("_mutable_record")
    if cls is None:
        fields = tuple(layout.codes)
        cls = type("MutableRecord", (MutableRecord,), {"__slots__": fields, "_fields": fields,
                                                       "_layout": layout})
        layout._mutable_record = cls  # type: ignore[attr-defined]
    return cls


def make_record(cls: type, values: Tuple[Any, ...], recovered: bool) -> MutableRecord:
    """A MutableRecord of class ``cls`` (see :func:`record_class`) holding
    ``values`` in field order."""
    rec = cls.__new__(cls)
    for name, value in zip(cls._fields, values):
        setattr(rec, name, value)
    rec.recovered = recovered
    return rec


def record_codec(layout: Struct) -> Tuple[Callable[[bytes, bool], MutableRecord],
                                          Callable[[MutableRecord], bytes]]:
    """``(make, pack)`` for ``update()``'s hot path: ``make(data, recovered)``
    unpacks a record's bytes into a new MutableRecord, ``pack(rec)`` packs it
    back (padded; ``ValueError`` when a field does not fit), as
    :func:`make_record` and ``Struct.pack_in_order`` do.

    Both are compiled once per layout with the field names spelled out, as
    ``namedtuple`` does, so a round trip runs no per-field loop.  The names
    are safe to spell out: the layout's named tuple has already accepted
    them (identifiers, no keywords, no leading underscore).
    """
    codec = layout.__dict__.get("_record_codec")
    if codec is not None:
        return codec
    cls = record_class(layout)
    fields = cls._fields                                  # type: ignore[attr-defined]
    if not all(f.isidentifier() and not keyword.iskeyword(f) and f != "recovered"
               for f in fields):
        raise ValueError(f"field names must be identifiers: {fields}")
    unpack, spack, padding = layout._struct.unpack_from, layout._struct.pack, layout._padding
    targets = ", ".join(f"rec.{f}" for f in fields)
    src = (f"def make(data, recovered):\n"
           f"    rec = new(cls)\n"
           f"    {targets}, = unpack(data)\n"
           f"    rec.recovered = recovered\n"
           f"    return rec\n"
           f"def pack(rec):\n"
           f"    try:\n"
           f"        return spack({targets}) + padding\n"
           f"    except error as exc:\n"
           f"        raise ValueError(f'cannot pack record {{[{targets}]!r}}: {{exc}}')"
           f" from None\n")
    scope = {"new": cls.__new__, "cls": cls, "unpack": unpack, "spack": spack,
             "padding": padding, "error": struct.error}
    exec(compile(src, f"<record codec of {layout!r}>", "exec"), scope)
    codec = scope["make"], scope["pack"]
    layout._record_codec = codec  # type: ignore[attr-defined]
    return codec
