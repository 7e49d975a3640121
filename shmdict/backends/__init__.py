"""Backends other than shared memory, behind the same ``shmdict.open()``.

``shmdict.open(name, layout, capacity, key_size, backend="redis://host:port/db")``
routes here; so does ``shmdict.unlink(name, backend=...)``.  A backend is
chosen by the URL's scheme: ``redis://``, ``rediss://`` (TLS) and
``unix://`` (a Redis socket) all go to :mod:`shmdict.backends.redis`.
"""
from __future__ import annotations

from typing import Any

from ..layouts import Layout

_REDIS_SCHEMES = ("redis", "rediss", "unix")


def _scheme(backend: object) -> str:
    if not isinstance(backend, str) or "://" not in backend:
        raise ValueError(f"backend must be a URL such as 'redis://127.0.0.1:6379/0', "
                         f"not {backend!r}")
    scheme = backend.split("://", 1)[0].lower()
    if scheme not in _REDIS_SCHEMES:
        raise ValueError(f"unknown backend {backend!r}: shmdict knows "
                         f"{', '.join(s + '://' for s in _REDIS_SCHEMES)}")
    return scheme


def open_backend(backend: str, name: str, layout: Layout, capacity: int, key_size: int,
                 *, create: bool = True, **options: Any) -> Any:
    """Open table ``name`` on the backend at URL ``backend`` (see ``shmdict.open``)."""
    _scheme(backend)
    from .redis import open_table
    return open_table(backend, name, layout, capacity, key_size, create=create, **options)


def unlink_backend(backend: str, name: str, **options: Any) -> bool:
    """Destroy table ``name`` on the backend at URL ``backend``; True if it existed."""
    _scheme(backend)
    from .redis import unlink_table
    return unlink_table(backend, name, **options)
