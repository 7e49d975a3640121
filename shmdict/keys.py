"""Keys: the canonical byte encoding.

A key is encoded to bytes that are identical in every process (Python's
``hash()`` is salted per process, so it is never used), then hashed with
xxh3_64 under the table's seed.  The encoding is type-distinct -- ``1``,
``"1"`` and ``b"1"`` are three keys -- and reversible, so iteration can give
the original keys back.

Encoding (one tag byte, then the payload)::

    b"..."      0x01 + raw bytes
    "..."       0x02 + UTF-8
    int         0x03 + minimal two's-complement, big-endian (True is 1)
    tuple       0x04 + for each element: varint(len(enc)) + enc

so a ``str`` or ``bytes`` key costs its length plus one byte, and a nested key
a few bytes per level.
"""
from __future__ import annotations

from typing import Tuple, Union

from .errors import KeyTooLong

Key = Union[str, bytes, int, Tuple["Key", ...]]

_BYTES, _STR, _INT, _TUPLE = 1, 2, 3, 4


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _encode(key: object, depth: int) -> bytes:
    if isinstance(key, str):
        return b"\x02" + key.encode("utf-8", "surrogatepass")
    if isinstance(key, bytes):
        return b"\x01" + key
    if isinstance(key, int):  # bool included: True is 1
        n = int(key)
        length = (n + (n < 0)).bit_length() // 8 + 1
        return b"\x03" + n.to_bytes(length, "big", signed=True)
    if isinstance(key, tuple):
        if depth > 32:
            raise TypeError("key tuples may nest at most 32 levels")
        parts = [b"\x04"]
        for element in key:
            enc = _encode(element, depth + 1)
            parts.append(_varint(len(enc)))
            parts.append(enc)
        return b"".join(parts)
    raise TypeError(
        f"shmdict keys are str, bytes, int or tuples of those, not {type(key).__name__}")


def encode_key(key: object, key_size: int) -> bytes:
    """Encode ``key`` canonically; ``KeyTooLong`` past ``key_size`` bytes."""
    encoded = _encode(key, 0)
    if len(encoded) > key_size:
        raise KeyTooLong(
            f"key {_short(key)} encodes to {len(encoded)} bytes but this table's "
            f"key_size is {key_size}; use a shorter key or a table with a larger key_size")
    return encoded


def _read_varint(data: bytes, pos: int) -> Tuple[int, int]:
    n = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated key encoding")
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return n, pos


def decode_key(data: bytes) -> Key:
    """Invert :func:`encode_key`; ``ValueError`` on bytes it never produced."""
    if not data:
        raise ValueError("empty key encoding")
    tag, body = data[0], data[1:]
    if tag == _BYTES:
        return bytes(body)
    if tag == _STR:
        return body.decode("utf-8", "surrogatepass")
    if tag == _INT:
        if not body:
            raise ValueError("empty int key encoding")
        return int.from_bytes(body, "big", signed=True)
    if tag == _TUPLE:
        items = []
        pos = 0
        while pos < len(body):
            length, pos = _read_varint(body, pos)
            if pos + length > len(body):
                raise ValueError("truncated tuple key encoding")
            items.append(decode_key(body[pos:pos + length]))
            pos += length
        return tuple(items)
    raise ValueError(f"unknown key tag {tag}")


def _short(key: object) -> str:
    text = repr(key)
    return text if len(text) <= 60 else text[:57] + "..."
