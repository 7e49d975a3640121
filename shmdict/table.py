"""What every table shares, whatever holds it: the Go verbs and the lifecycle.

Go's Get / Load / LoadAndDelete / Delete / Range, views, iteration and the
context-manager protocol are the same on shared memory
(``backends.shm.table.Table``) and on Redis (``backends.redis.table.RedisTable``);
only a few primitives differ.  A backend's table implements them:

* ``_create(key) -> bool``: get-or-create ``key`` with the layout's default;
  True if this call created it (``_touch`` may skip computing that);
* ``_remove(key) -> (existed, snapshot)``: delete ``key``, taking the value
  it held in the same atomic step (the default snapshot when it was absent);
* ``_handle(key)``: the layout's handle on ``key``;
* ``keys()``, ``items()``, ``__len__``, ``__contains__``, ``close()``.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, List, Optional, Tuple

from .keys import Key
from .layouts import Layout
from .validate import seconds as validate_seconds
from .views import View


class BaseTable:
    """The verbs of every table, on top of a backend's few primitives."""

    name: str
    layout: Layout
    capacity: int
    key_size: int
    _closed: bool

    # ------------------------------------------------ backend primitives
    def _create(self, key: Key) -> bool:
        raise NotImplementedError

    def _touch(self, key: Key) -> None:
        """Get-or-create ``key`` when nobody asks whether it was created."""
        self._create(key)

    def _remove(self, key: Key) -> Tuple[bool, Any]:
        raise NotImplementedError

    def _handle(self, key: Key) -> Any:
        raise NotImplementedError

    def keys(self) -> List[Key]:
        raise NotImplementedError

    def items(self) -> List[Tuple[Key, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _describe_state(self) -> str:
        """What ``repr`` says of an open table."""
        return f"{len(self)} keys"                     # type: ignore[arg-type]

    # ------------------------------------------------------------- expiry
    def _expire(self, key: Key, seconds: Optional[float]) -> bool:
        """Backend primitive: set (``None``: clear) an existing key's expiry."""
        raise NotImplementedError

    def expire(self, key: Key, seconds: float) -> bool:
        """Make ``key`` expire ``seconds`` from now (a positive number); False
        (and nothing created) when it is absent.  An expired key is absent for
        every verb; a Lock or Struct key whose lock is held expires once free."""
        validate_seconds(seconds, "ttl")
        return self._expire(key, seconds)

    def persist(self, key: Key) -> bool:
        """Clear ``key``'s expiry; False when it is absent."""
        return self._expire(key, None)

    def ttl(self, key: Key) -> Optional[float]:
        """Seconds until ``key`` expires; None when it has no expiry or is absent."""
        raise NotImplementedError

    # ----------------------------------------------------------- Go verbs
    def get(self, key: Key) -> Any:
        """Get-or-create: a handle on the key (Go's ``Get``)."""
        self._touch(key)
        return self._handle(key)

    def __getitem__(self, key: Key) -> Any:
        return self.get(key)

    def load(self, key: Key) -> Tuple[Any, bool]:
        """``(handle, existed)``; ``existed`` is False when the default was just created."""
        created = self._create(key)
        return self._handle(key), not created

    def delete(self, key: Key) -> None:
        """Remove ``key``; deleting a missing key is a no-op."""
        self._remove(key)

    def __delitem__(self, key: Key) -> None:
        self._remove(key)

    def load_and_delete(self, key: Key) -> Tuple[Any, bool]:
        """Remove ``key`` and return ``(snapshot, existed)`` atomically.

        For a missing key: ``(default snapshot, False)``; nothing is created.
        """
        existed, snapshot = self._remove(key)
        return snapshot, existed

    # -------------------------------------------------------------- Range
    def values(self) -> List[Any]:
        return [value for _, value in self.items()]

    def __iter__(self) -> Iterator[Key]:
        return iter(self.keys())

    def range(self, fn: Callable[[Key, Any], Any]) -> None:
        """Go's ``Range``: call ``fn(key, value)`` per key until it returns False."""
        for key, value in self.items():
            if fn(key, value) is False:
                break

    def sub(self, prefix: Any) -> Any:
        """A view of the keys under a tuple prefix (nested maps in one table)."""
        return View(self, prefix)

    # ---------------------------------------------------------- lifecycle
    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"table {self.name!r} is closed")

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "BaseTable":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else self._describe_state()
        return (f"<shmdict {type(self).__name__} {self.name!r} {self.layout!r} "
                f"capacity={self.capacity} {state}>")
