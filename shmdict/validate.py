"""Validators of the arguments every layer takes: names, table shapes, durations,
file modes and sharing.

They sit at the bottom of the package (only :mod:`shmdict.errors` below
them), so the public entry points, both backends and the limiters check the
same things the same way, before anything is created.
"""
from __future__ import annotations

import grp
import math
import os
import pwd
import re
from typing import NamedTuple, Optional

_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")

#: The largest capacity and key size of a table, on every backend (the
#: shared-memory format stores a key's length in 12 bits).
MAX_CAPACITY = 1 << 31
MAX_KEY_SIZE = 4095


def validate_name(name: object) -> str:
    """Return ``name`` if it is a valid table name, else raise ``ValueError``."""
    if not isinstance(name, str):
        raise TypeError(f"a table name is a str, not {type(name).__name__}")
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise ValueError(
            f"bad table name {name!r}: use 1 to 200 letters, digits, '.', '_' or '-'")
    return name


def table_shape(capacity: object, key_size: object) -> None:
    """Check a table's ``capacity`` and ``key_size`` (``TypeError``/``ValueError``)."""
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        raise TypeError(f"capacity must be an int, not {type(capacity).__name__}")
    if isinstance(key_size, bool) or not isinstance(key_size, int):
        raise TypeError(f"key_size must be an int, not {type(key_size).__name__}")
    if not 1 <= capacity <= MAX_CAPACITY:
        raise ValueError(f"capacity must be between 1 and {MAX_CAPACITY}, got {capacity}")
    if not 1 <= key_size <= MAX_KEY_SIZE:
        raise ValueError(f"key_size must be between 1 and {MAX_KEY_SIZE}, got {key_size}")


def table_growth(capacity: int, max_capacity: object) -> int:
    """Check ``max_capacity`` against ``capacity``; the max capacity (None: capacity)."""
    if max_capacity is None:
        return capacity
    if isinstance(max_capacity, bool) or not isinstance(max_capacity, int):
        raise TypeError(f"max_capacity must be an int, not {type(max_capacity).__name__}")
    if not capacity <= max_capacity <= MAX_CAPACITY:
        raise ValueError(f"max_capacity must be between capacity ({capacity}) and "
                         f"{MAX_CAPACITY}, got {max_capacity}")
    return max_capacity


def seconds(value: object, what: str) -> float:
    """``value`` as a positive, finite number of seconds, or ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__}")
    as_float = float(value)
    if not (as_float > 0 and math.isfinite(as_float)):
        raise ValueError(f"{what} must be a positive, finite number of seconds, got {value!r}")
    return as_float


def env_seconds(variable: str, default: float) -> float:
    """The environment variable ``variable`` as :func:`seconds`, or ``default``."""
    raw = os.environ.get(variable)
    if not raw:
        return default
    try:
        return seconds(float(raw), variable)
    except ValueError:
        raise ValueError(f"environment variable {variable}={raw!r} is not a positive "
                         f"number of seconds") from None


class Sharing(NamedTuple):
    """Who may use a shared-memory table, as its creator sets it up and as an
    attaching process accepts it (see :func:`sharing`)."""

    #: Permission bits of a new segment and its semaphores (0o600 by default).
    mode: int = 0o600
    #: The group a new table is given, and the group whose table an
    #: attaching process trusts (group-writable included); None: none.
    gid: Optional[int] = None
    #: The user a new table is created for (root only), and the user whose
    #: table an attaching process trusts besides itself; None: only itself.
    uid: Optional[int] = None


def file_mode(mode: object) -> int:
    """``mode`` as permission bits: an int of 0o600..0o777 with the owner's read
    and write bits (``TypeError``/``ValueError`` otherwise)."""
    if isinstance(mode, bool) or not isinstance(mode, int):
        raise TypeError(f"mode must be an int such as 0o600 or 0o660, not {type(mode).__name__}")
    if mode < 0 or mode & ~0o777:
        raise ValueError(f"mode must be permission bits within 0o777 (no setuid, setgid or "
                         f"sticky bits), got {mode!r} ({mode:#o})" if mode >= 0 else
                         f"mode must be permission bits within 0o777, got {mode!r}")
    if mode & 0o600 != 0o600:
        raise ValueError(f"mode {mode:#o} would lock the table's owner out: it needs the "
                         f"owner's read and write bits (0o600)")
    return mode


def user_id(owner: object) -> int:
    """A user name or uid as a uid (``ValueError`` for an unknown name)."""
    if isinstance(owner, bool) or not isinstance(owner, (int, str)):
        raise TypeError(f"owner must be a user name or uid, not {type(owner).__name__}")
    if isinstance(owner, int):
        if not 0 <= owner < 1 << 32:
            raise ValueError(f"owner must be a uid between 0 and 2**32-1, got {owner}")
        return owner
    try:
        return pwd.getpwnam(owner).pw_uid
    except KeyError:
        raise ValueError(f"owner {owner!r}: no such user on this host") from None


def group_id(group: object) -> int:
    """A group name or gid as a gid (``ValueError`` for an unknown name)."""
    if isinstance(group, bool) or not isinstance(group, (int, str)):
        raise TypeError(f"group must be a group name or gid, not {type(group).__name__}")
    if isinstance(group, int):
        if not 0 <= group < 1 << 32:
            raise ValueError(f"group must be a gid between 0 and 2**32-1, got {group}")
        return group
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"group {group!r}: no such group on this host") from None


def sharing(mode: object = None, group: object = None, owner: object = None) -> Sharing:
    """Check and resolve ``open``'s ``mode``, ``group`` and ``owner``.

    ``mode`` defaults to 0o600, or 0o660 when a ``group`` is given; a group
    without group permission bits shares nothing, so it is a ``ValueError``.
    """
    gid = None if group is None else group_id(group)
    uid = None if owner is None else user_id(owner)
    if mode is None:
        mode = 0o660 if gid is not None else 0o600
    bits = file_mode(mode)
    if gid is not None and not bits & 0o060:
        raise ValueError(f"group={group!r} with mode={bits:#o} shares nothing with the group: "
                         f"pass mode=0o660 (or 0o640), or leave mode out")
    return Sharing(bits, gid, uid)
