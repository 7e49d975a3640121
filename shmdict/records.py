"""Struct records as Python objects: the mutable record of ``update()``.

``read`` returns the layout's named tuple (``Struct.record``); inside ``with
d.update(key) as rec:`` the block gets a :class:`MutableRecord` whose
attributes are the fields, written back on a clean exit.  Both backends build
them here, so a record behaves the same wherever the table lives.
"""
from __future__ import annotations

from typing import Any, Tuple

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
