"""Nested views: ``d.sub(prefix)`` -- Go's SharedPoolMapGenerator in one table.

A view holds a tuple prefix.  Inside it keys are relative:
``d.sub(("a",)).add("b")`` is ``d.add(("a", "b"))``, and
``d.sub(("a",)).add(("b", "c"))`` is ``d.add(("a", "b", "c"))``.  Listing a
view gives relative keys back (a one-element remainder unwrapped, so the view
above lists ``"b"``).  All views share the table's one pool of slots, so a
thousand second-level maps cost no more than their keys.

Every verb of the table works on a view; ``len`` and iteration scan the
table and keep the keys under the prefix.
"""
from __future__ import annotations

from typing import Any, Iterator, List, Tuple

from .keys import Key

# Verbs whose first argument is a key, forwarded with the key made absolute.
_KEYED_VERBS = frozenset({
    "get", "load", "delete", "load_and_delete", "add", "set", "read", "cas",
    "exchange", "update", "owner", "__getitem__", "__setitem__", "__delitem__",
})


class View:
    """The keys of ``table`` under a tuple ``prefix``, addressed relatively."""

    def __init__(self, table: Any, prefix: Any) -> None:
        if not isinstance(prefix, tuple):
            prefix = (prefix,)
        self._table = table
        self.prefix: Tuple[Any, ...] = prefix

    def _full(self, key: Key) -> tuple:
        return self.prefix + (key if isinstance(key, tuple) else (key,))

    def _relative(self, full: Any) -> Any:
        if not isinstance(full, tuple) or len(full) <= len(self.prefix) \
                or full[:len(self.prefix)] != self.prefix:
            return _OUTSIDE
        rest = full[len(self.prefix):]
        return rest[0] if len(rest) == 1 else rest

    def __reduce__(self) -> Tuple[Any, ...]:
        # The table pickles as what it takes to reattach; the view is its prefix.
        return (View, (self._table, self.prefix))

    def __getattr__(self, name: str) -> Any:
        # Only verbs are forwarded: a lookup of anything else (``_table``
        # itself while ``copy``/``pickle`` rebuild a view) must not recurse.
        if name not in _KEYED_VERBS:
            raise AttributeError(f"{type(self._table).__name__} view has no attribute {name!r}")
        verb = getattr(self._table, name)

        def keyed(key: Key, *args: Any, **kwargs: Any) -> Any:
            return verb(self._full(key), *args, **kwargs)

        keyed.__name__ = name
        keyed.__doc__ = verb.__doc__
        self.__dict__[name] = keyed      # found directly from now on
        return keyed

    # Dunder methods are looked up on the type, so forward them explicitly.
    def __getitem__(self, key: Key) -> Any:
        return self._table[self._full(key)]

    def __setitem__(self, key: Key, value: Any) -> None:
        self._table[self._full(key)] = value

    def __delitem__(self, key: Key) -> None:
        del self._table[self._full(key)]

    def __contains__(self, key: object) -> bool:
        try:
            return self._full(key) in self._table  # type: ignore[arg-type]
        except TypeError:
            return False

    def sub(self, prefix: Any) -> "View":
        """A view nested in this one."""
        return View(self._table, self._full(prefix) if not isinstance(prefix, tuple)
                    else self.prefix + prefix)

    def items(self) -> List[Tuple[Any, Any]]:
        out = []
        for key, value in self._table.items():
            rel = self._relative(key)
            if rel is not _OUTSIDE:
                out.append((rel, value))
        return out

    def keys(self) -> List[Any]:
        out = []
        for key in self._table.keys():
            rel = self._relative(key)
            if rel is not _OUTSIDE:
                out.append(rel)
        return out

    def values(self) -> List[Any]:
        return [value for _, value in self.items()]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __repr__(self) -> str:
        return f"<view {self.prefix!r} of {self._table!r}>"


_OUTSIDE = object()
