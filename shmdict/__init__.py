"""shmdict: a defaultdict shared by the processes of one host.

::

    import shmdict

    hits = shmdict.open("myapp.hits", shmdict.Counter(), capacity=100_000)
    hits.add(("GET", "/"))              # atomic, from any process
    locks = shmdict.open("myapp.rows", shmdict.Lock())
    with locks["user:42"]:              # a cross-process row lock
        ...

See README.md for the whole API.
"""
from .api import attach, list_tables, load, open, save, unlink
from .errors import (
    BackendError,
    CorruptSegment,
    KeyTooLong,
    LayoutMismatch,
    LockHeld,
    NotOwner,
    OwnerDiedWarning,
    PermissionDenied,
    ResourceLimit,
    ShmDictError,
    TableFull,
    TableNotFound,
    UnsafeSegment,
)
from .layouts import Counter, Layout, Lock, Struct
from .snapshot import SnapshotError

__all__ = [
    "open", "attach", "unlink", "list_tables", "save", "load", "SnapshotError",
    "Layout", "Counter", "Lock", "Struct",
    "ShmDictError", "LayoutMismatch", "CorruptSegment", "TableFull", "KeyTooLong",
    "TableNotFound", "NotOwner", "LockHeld", "BackendError", "OwnerDiedWarning",
    "PermissionDenied", "UnsafeSegment", "ResourceLimit",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Heavier pieces load on first use, so `import shmdict` stays light.
    if name == "RateLimiter":
        from .ratelimit import RateLimiter
        return RateLimiter
    raise AttributeError(f"module 'shmdict' has no attribute {name!r}")
