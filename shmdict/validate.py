"""Validators of the arguments every layer takes: names, table shapes, durations.

They sit at the bottom of the package (only :mod:`shmdict.errors` below
them), so the public entry points, both backends and the limiters check the
same things the same way, before anything is created.
"""
from __future__ import annotations

import math
import os
import re

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
