"""Typed stub of the C core, shmdict/backends/shm/_core.c (see its header comment).

The segment format is format.h's; the constants below are exported from it.
Every name here exists in the module and vice versa (tests/shm/test_core_stub.py).
"""
from typing import Any, Callable, Dict, List, Optional, Tuple

from ...errors import CorruptSegment

# Result codes of the lock and value primitives: the values of
# shmdict.layouts.Outcome (non-negative; the C side keeps -1 for errors).
OK: int
RECOVERED: int
TIMEOUT: int
STALE: int
NOT_OWNER: int
BUSY: int

# The segment format (format.h).
FORMAT_VERSION: int
MAGIC: int
HEADER_SIZE: int
SPEC_MAX: int
#: {field: (offset, struct code)} of the header, a stripe record and a slot.
HEADER_FIELDS: Dict[str, Tuple[int, str]]
STRIPE_FIELDS: Dict[str, Tuple[int, str]]
SLOT_FIELDS: Dict[str, Tuple[int, str]]
STRIPE_SIZE: int
SLOT_HEADER: int
MAX_STRIPES: int
MAX_KEY_SIZE: int
READER_CELLS: int
# The state word: kind in the low bits, then generation, key length, tag.
KIND_EMPTY: int
KIND_CLAIMED: int
KIND_PUBLISHED: int
KIND_TOMBSTONE: int
KIND_NAMES: Dict[int, str]
GEN_SHIFT: int
GEN_MASK: int
KLEN_SHIFT: int
KLEN_MASK: int
TAG_SHIFT: int
# Owner ids and lock words.
PID_MASK: int
WAITERS_BIT: int


class CorruptGeometry(CorruptSegment, ValueError):
    """Core() was given a geometry that cannot be right for its mapping."""


class TornRecord(Exception):
    """Private: a record's sequence stayed odd (its writer died mid-copy)."""


def geometry(capacity: int, key_size: int, extra_size: int, nstripes: int) -> Dict[str, int]:
    """The table's shape: nslots, slot_size, stripes_offset, data_offset, size."""
def id_pid(id: int) -> int: ...
def id_alive(id: int) -> bool: ...
def encode_key(key: Any, cap: int) -> Optional[bytes]: ...
def load_u64(buffer: Any, offset: int) -> int: ...
def store_u64(buffer: Any, offset: int, value: int) -> None: ...


class Core:
    def __init__(
        self,
        buffer: Any,
        *,
        name: str,
        nslots: int,
        slot_size: int,
        key_size: int,
        extra_size: int,
        nstripes: int,
        capacity: int,
        stripes_offset: int,
        data_offset: int,
        default_word0: int,
        default_extra: bytes,
        #: the key hash, xxhash.xxh3_64_intdigest(encoded, seed)
        hash_function: Callable[[bytes, int], int],
        seed: int,
        #: the slow path: encode, hash, probe, insert if create
        resolve: Callable[[Any, bool], Optional[Tuple[int, int, bool]]],
        #: insert an encoded key found absent, under its stripe (TableFull)
        insert: Callable[[bytes, int], Tuple[int, int, bool]],
        #: create key holding word0 if absent; True if this call created it
        insert_with: Callable[[Any, int], bool],
        cache_limit: int,
    ) -> None: ...
    # Counter verbs, keyed by Python key objects (cached key -> slot).
    def add(self, key: Any, n: int = 1) -> int: ...
    def set(self, key: Any, value: int) -> None: ...
    def exchange(self, key: Any, value: int) -> int: ...
    def value(self, key: Any) -> int: ...
    def read(self, key: Any) -> Tuple[int, bool]: ...
    def cas(self, key: Any, old: int, new: int, set_on_not_exists: bool = False) -> bool: ...
    def gcra(self, key: Any, emission_ns: int, tolerance_ns: int, cost: int
             ) -> Tuple[bool, int, int, int]: ...
    def gcra_hit(self, emission_ns: int, tolerance_ns: int, burst: int, result_type: type,
                 fallback: Tuple[type, Callable[[Any, int], Any]], key: Any,
                 cost: int = 1) -> Any: ...
    def locate(self, key: Any, create: bool) -> Optional[Tuple[int, int]]: ...
    # Slot-level primitives.
    def find(self, key: bytes, hash: int) -> Optional[Tuple[int, int]]: ...
    def insert(self, key: bytes, hash: int, word0: int, extra: bytes
               ) -> Tuple[int, int, bool]: ...
    def delete(self, slot: int, state: int, stripe: int, mode: int) -> Tuple[int, int]: ...
    def slot_info(self, slot: int) -> Tuple[int, int, Optional[bytes]]: ...
    def published(self) -> List[Tuple[int, int, bytes]]: ...
    def word0(self, slot: int, state: int) -> Optional[int]: ...
    def counts(self) -> Tuple[int, int]: ...
    def correct_tombstones(self, count: int) -> int: ...
    def stripe_live(self, stripe: int) -> int: ...
    # Stripes.
    def stripe_holder(self, stripe: int) -> int: ...
    def stripe_cas(self, stripe: int, expected: int, desired: int) -> bool: ...
    def stripe_release(self, stripe: int) -> bool: ...
    def repair_stripe(self, stripe: int) -> Tuple[int, int]: ...
    # Owner locks and rw locks.
    def lock_acquire(self, slot: int, state: int, blocking: bool, timeout: float) -> int: ...
    def lock_release(self, slot: int, state: int) -> int: ...
    def lock_owner(self, slot: int, state: int) -> int: ...
    def key_acquire(self, key: Any, blocking: bool, timeout: float,
                    shared: bool) -> Tuple[int, int]: ...
    def key_release(self, key: Any, shared: bool) -> int: ...
    def rw_readers(self, slot: int, state: int) -> List[int]: ...
    # Struct records.
    def record_read(self, slot: int, state: int, force: bool = False) -> Optional[bytes]: ...
    def record_get(self, key: Any) -> Optional[bytes]: ...
    def record_begin(self, key: Any) -> Tuple[int, int, bool, bytes]: ...
    def record_commit(self, slot: int, state: int, data: Optional[bytes]) -> int: ...
    def clear_cache(self) -> None: ...
    def close(self) -> None: ...
