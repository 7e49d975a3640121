"""The shared-memory table: the primitives of :class:`shmdict.table.BaseTable`
(create, remove, list, count) on one segment, through the C core.

Each layout's module subclasses :class:`Table` with its own value verbs:
``counter.CounterTable``, ``rowlock.LockTable``, ``records.StructTable``.
"""
from __future__ import annotations

import threading
from typing import Any, Dict, Iterator, List, Optional, Tuple

import xxhash

from ...errors import CorruptSegment, KeyTooLong, LockHeld, TableFull
from ...keys import Key, decode_key, encode_key
from ...layouts import Layout, Outcome
from ...report import Report
from ...table import BaseTable
from . import _core
from .check import check_table
from .segment import Geometry, Segment, destroy, open_tier
from .stripes import Stripes

#: Entries of the per-process key -> slot cache before it is cleared: at
#: most this many, and at most a few times what the table can hold (a
#: process that sees many distinct keys come and go on a small table must
#: not grow without bound).
CACHE_LIMIT = 1 << 20


def cache_limit(capacity: int) -> int:
    """The key cache bound of a table of ``capacity`` keys."""
    return min(CACHE_LIMIT, 2 * capacity + 1024)

# Modes of _core.Core.delete
DELETE_TAKE_VALUE, DELETE_IF_FREE, DELETE_IF_MINE = 0, 1, 2


#: How many decoded keys :meth:`Table._entries` keeps per table and process.
_DECODED_LIMIT = 100_000


def _expiry_guard(layout: Layout) -> int:
    """What keeps an expired key alive (the core's ``expiry_guard``): a held
    lock never vanishes under its holder.  0: nothing (Counter); 1: a holder
    in the lock word (Lock, Struct); 2: that or a reader (``Lock(rw=True)``)."""
    if layout.kind == "Counter":
        return 0
    return 2 if getattr(layout, "rw", False) else 1


class Table(BaseTable):
    """A shared table of one layout.  Use :func:`shmdict.open` to get one."""

    layout: Layout
    #: The write verbs take ttl= (the rate limiters and limits storage ask).
    _supports_ttl = True

    def __init__(self, segment: Segment) -> None:
        header = segment.header
        self.name: str = segment.name
        self.layout = segment.layout
        self.capacity: int = header["capacity"]
        #: The table grows online up to this many keys (tier 0's header says:
        #: an attacher's own max_capacity is not compared, see shmdict.open).
        self.max_capacity: int = header["max_capacity"]
        self.key_size: int = header["key_size"]
        self._segment = segment
        self._seed: int = header["seed"]
        # The C core keeps a per-process cache of key -> (slot, state) and
        # encodes, hashes, probes and inserts common keys itself (taking the
        # stripe in C); on everything else it calls back here (the slow
        # path): _locate for keys it cannot encode, _insert_with for
        # cas(..., set_on_not_exists=True), _grow when every tier is full and
        # _attach_tiers when other processes grew the table.
        self._core = _core.Core(
            segment.mm, name=self.name, nslots=header["nslots"],
            slot_size=header["slot_size"], key_size=header["key_size"],
            extra_size=header["extra_size"], nstripes=header["nstripes"],
            capacity=header["capacity"], stripes_offset=header["stripes_offset"],
            data_offset=header["data_offset"], default_word0=self.layout.default_word0(),
            default_extra=self.layout.slot_extra(),
            hash_function=xxhash.xxh3_64_intdigest, seed=self._seed, resolve=self._locate,
            insert=self._insert, insert_with=self._insert_with,
            cache_limit=cache_limit(header["max_capacity"]),
            max_capacity=header["max_capacity"], grow=self._grow,
            attach_tiers=self._attach_tiers, expiry_guard=_expiry_guard(self.layout))
        #: Mappings of tiers 1.. (the core holds their buffers until close).
        self._tier_maps: List[Any] = []
        #: Serialises this process's threads' growth and tier attaching (two
        #: threads must not add the same tier twice).  Reentrant: the core's
        #: counts call back into _attach_tiers.
        self._growing = threading.RLock()
        self._geometry = Geometry(self.layout, self.capacity, self.key_size,
                                  header["nstripes"], self.max_capacity)
        self._stripes = Stripes(self._core, segment.semaphores)
        self._nstripes: int = header["nstripes"]
        self._default_word0 = self.layout.default_word0()
        self._default_extra = self.layout.slot_extra()
        self._closed = False
        if self.max_capacity > self.capacity:
            try:
                self._attach_tiers()
            except BaseException:
                self.close()       # the core first: it holds the mappings' buffers
                raise

    # ------------------------------------------------------------------ keys
    def _stripe_of_key(self, key: Any) -> int:
        """The stripe that serialises inserts and deletes of ``key``."""
        return self._encode(key)[1] % self._nstripes

    def _encode(self, key: Any) -> Tuple[bytes, int]:
        encoded = encode_key(key, self.key_size)
        return encoded, xxhash.xxh3_64_intdigest(encoded, self._seed)

    def _locate(self, key: Any, create: bool, word0: Optional[int] = None,
                extra: Optional[bytes] = None) -> Optional[Tuple[int, int, bool]]:
        """(slot, state, created) of ``key``; None if absent and not ``create``.

        A key created here starts with ``word0`` and ``extra`` (default: the
        layout's defaults) in one insert, so no other process sees it otherwise.
        """
        if self._closed:
            self._check_open()
        encoded = encode_key(key, self.key_size)
        h = xxhash.xxh3_64_intdigest(encoded, self._seed)
        found = self._core.find(encoded, h)
        if found is not None:
            return found[0], found[1], False
        if not create:
            return None
        return self._insert(encoded, h, word0, extra)

    def _insert_with(self, key: Any, word0: int) -> bool:
        """Insert ``key`` holding ``word0`` if absent; True if this call created it."""
        return self._locate(key, True, word0=word0)[2]  # type: ignore[index]

    def _insert(self, encoded: bytes, h: int, word0: Optional[int] = None,
                extra: Optional[bytes] = None) -> Tuple[int, int, bool]:
        """Insert an encoded key under its stripe lock: (slot, state, created).

        The core takes the stripe, looks once more under it (so a key
        another process inserted meanwhile is returned, created False, never
        inserted twice), inserts in the first tier with room, and releases
        it; when every tier is full it calls :meth:`_grow`.  A table full at
        its max_capacity raises :class:`~shmdict.TableFull`.
        """
        if word0 is None:
            word0 = self._default_word0
        if extra is None:
            extra = self._default_extra
        return self._core.insert_new(encoded, h, word0, extra)

    # ---------------------------------------------------------------- growth
    def _grow(self, seen: int) -> None:
        """Every one of the ``seen`` tiers was full (no stripe held): make room.

        A process killed inside an insert leaves its reservation counted
        until its stripe is repaired: repair such stripes, and let the core
        look again, rather than refuse a key early or grow for nothing.
        Else attach the tiers others added meanwhile, or add tier ``seen``
        (one creator; the others wait for it), or raise ``TableFull`` at
        max_capacity.
        """
        core = self._core
        if core.dead_stripes() and self._stripes.repair_dead():
            return
        with self._growing:
            self._attach_tiers()
            k = core.published_tiers()
            if k > seen:
                return
            if 1 + len(self._tier_maps) > k:
                # Added here, but this thread was interrupted before
                # publishing it: publish it now (nothing was inserted there).
                core.publish_tier(k)
                return
            if _core.tier_capacity(self.capacity, self.max_capacity, k) == 0:
                live = core.counts()[0]
                if not 0 <= live <= self.max_capacity:
                    # Overwritten since the core's admissions looked: never
                    # a TableFull naming a count no process can have made.
                    raise CorruptSegment(
                        f"table {self.name!r}: its live count {live} is outside "
                        f"0..{self.max_capacity}; the segment was overwritten: "
                        f"`shmdict check {self.name}` recounts it")
                raise TableFull(f"table {self.name!r} is full: {live} of {self.max_capacity} "
                                f"keys in use; delete keys or open a table with a larger "
                                f"capacity")
            mm = open_tier(self.name, k, self._geometry, self._segment.header, create=True,
                           sharing=self._segment.sharing)
            self._add_tier(mm, k)
            core.publish_tier(k)

    def _attach_tiers(self) -> None:
        """Map the tiers other processes published that this one has not."""
        with self._growing:
            published = self._core.published_tiers()
            while 1 + len(self._tier_maps) < published:
                k = 1 + len(self._tier_maps)
                mm = open_tier(self.name, k, self._geometry, self._segment.header,
                               create=False, sharing=self._segment.sharing)
                self._add_tier(mm, k)

    def _add_tier(self, mm: Any, k: int) -> None:
        try:
            self._core.add_tier(mm, self._geometry.tier(k).capacity)
        except BaseException:
            mm.close()
            raise
        self._tier_maps.append(mm)

    # ------------------------------------------- BaseTable's primitives
    def _create(self, key: Key) -> bool:
        return self._locate(key, True)[2]  # type: ignore[index]

    def _touch(self, key: Key) -> None:
        self._core.locate(key, True)       # through the key cache, in C

    def _remove(self, key: Key) -> Tuple[bool, Any]:
        self._check_open()
        encoded, h = self._encode(key)
        stripe = h % self._nstripes
        while True:
            found = self._core.find(encoded, h)
            if found is None:
                return False, self._default_snapshot()
            slot, state = found
            # Held and released in C around the call: no signal handler
            # runs between the delete's end and the release.
            outcome = self._core.holding_stripe(stripe, self._delete_slot, slot, state, stripe)
            if outcome is not _STALE:
                return True, outcome
            self._wait_before_retry(slot, state)

    def _wait_before_retry(self, slot: int, state: int) -> None:
        """Between delete attempts, outside the stripe: wait for what blocked it."""

    def _delete_slot(self, slot: int, state: int, stripe: int) -> Any:
        """Tombstone a slot (stripe held); the snapshot, or ``_STALE`` to retry."""
        code, word0 = self._core.delete(slot, state, stripe, DELETE_IF_FREE)
        if code == Outcome.STALE:
            return _STALE
        if code == Outcome.BUSY:
            raise LockHeld(f"key in table {self.name!r} is locked by pid "
                           f"{_core.id_pid(word0)}; release it before deleting it")
        return self._snapshot_of_word0(word0)

    # ----------------------------------------------------------------- Range
    def _entries(self) -> Iterator[Tuple[Key, int, int]]:
        # Keys decoded once per process (the Python decoder costs ~10 us a
        # key; a scrape of 10,000 metric series would spend most of its time
        # there): encoded bytes -> key, bounded, cleared when full.
        cache = self.__dict__.setdefault("_decoded", {})
        for slot, state, encoded in self._core.published():
            key = cache.get(encoded)
            if key is None:
                try:
                    key = decode_key(encoded)
                except ValueError:
                    # Key bytes no shmdict process writes: the segment was
                    # written by something else.
                    raise CorruptSegment(
                        f"table {self.name!r}: slot {slot} holds bytes that are no "
                        f"encoded key ({encoded[:16]!r}...); the segment was overwritten: "
                        f"run `shmdict check {self.name}`") from None
                if len(cache) >= _DECODED_LIMIT:
                    cache.clear()
                cache[encoded] = key
            yield key, slot, state

    def keys(self) -> List[Key]:
        """A snapshot list of the keys (never creates)."""
        self._check_open()
        return [key for key, _, _ in self._entries()]

    def items(self) -> List[Tuple[Key, Any]]:
        """A snapshot list of ``(key, value snapshot)`` (never creates)."""
        self._check_open()
        out = []
        for key, slot, state in self._entries():
            value = self._snapshot_at(slot, state)
            if value is not _STALE:
                out.append((key, value))
        return out

    def __len__(self) -> int:
        self._check_open()
        if self._core.dead_stripes():     # a process died inside an insert or delete
            self._stripes.repair_dead()
        live = self._core.counts()[0]
        if not 0 <= live <= self.max_capacity:
            raise CorruptSegment(
                f"table {self.name!r}: its live count {live} is outside "
                f"0..{self.max_capacity}; "
                f"the segment was overwritten: `shmdict check {self.name}` "
                f"recounts it")
        # Expired keys stay counted live until an insert reclaims their
        # slots; they are absent, so they are not counted here.
        return max(0, live - self._core.expired())

    # ----------------------------------------------------------- expiry
    def _expire(self, key: Key, seconds: Optional[float]) -> bool:
        self._check_open()
        return self._core.set_ttl(key, seconds)

    def ttl(self, key: Key) -> Optional[float]:
        """Seconds until ``key`` expires; None when it has no expiry or is
        absent (``key in d`` tells the two apart).  Never creates."""
        self._check_open()
        return self._core.ttl(key)

    def reclaim_expired(self) -> int:
        """Tombstone every expired key now (each under its stripe); how many.
        Inserts do this by themselves when the table is full."""
        self._check_open()
        return self._core.reclaim_expired()

    def compact(self) -> int:
        """Sweep every tier's tombstones now: each deleted slot that no key's
        probe path crosses becomes empty again, and reach is lowered to what
        the keys need; how many slots were freed.  Inserts already do this a
        window at a time, every ``nslots/8`` deletes, so
        this is for after a mass delete, or for ``shmdict compact``.  It
        holds every stripe one window (~4,096 slots) at a time: reads and
        adds go on, inserts and deletes wait a window."""
        self._check_open()
        self._attach_tiers()
        return self._core.compact()

    def __contains__(self, key: object) -> bool:
        self._check_open()
        try:
            return self._core.locate(key, False) is not None
        except (TypeError, KeyTooLong):
            return False            # not a key, or too long to be one here

    # ------------------------------------------------------- layout hooks
    def _default_snapshot(self) -> Any:
        return self._snapshot_of_word0(self.layout.default_word0())

    def _snapshot_of_word0(self, word0: int) -> Any:
        return word0

    def _snapshot_at(self, slot: int, state: int) -> Any:
        word0 = self._core.word0(slot, state)
        return _STALE if word0 is None else self._snapshot_of_word0(word0)

    # --------------------------------------------------------- inspection
    def check(self) -> Report:
        """A consistency report of the whole table (truthy when consistent)."""
        return check_table(self)

    def stats(self) -> Dict[str, Any]:
        """Numbers for ``shmdict stat``: counts, load, stripes and their holders,
        tiers (``tiers``, per-tier ``tier_capacity``/``tier_live``) and the
        ``inserts``/``deletes`` statistics (monotonic, for rates)."""
        self._check_open()
        header = self._segment.header
        live, tombstones = self._core.counts()
        holders = {}
        for i in range(self._nstripes):
            holder = self._core.stripe_holder(i)
            if holder:
                holders[i] = {"pid": _core.id_pid(holder), "alive": _core.id_alive(holder)}
        self._attach_tiers()
        tiers = self._core.tiers()
        inserts, deletes, _ = self._core.stats()
        nslots = sum(t[0] for t in tiers)
        size = sum(self._geometry.tier(k).size for k in range(len(tiers)))
        return {"name": self.name, "layout": repr(self.layout), "capacity": self.capacity,
                "max_capacity": self.max_capacity, "key_size": self.key_size,
                "live": live, "tombstones": tombstones,
                "slots": nslots, "slot_size": header["slot_size"],
                "bytes": size, "load_factor": (live + tombstones) / nslots,
                "stripes": self._nstripes, "stripe_holders": holders,
                "created": header["created"], "tiers": len(tiers),
                "tier_capacity": [t[1] for t in tiers], "tier_live": [t[2] for t in tiers],
                "inserts": inserts, "deletes": deletes}

    # ---------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Detach from the table (the table itself stays)."""
        if not self._closed:
            self._closed = True
            self._core.close()          # gives back the tiers' buffers too
            for mm in self._tier_maps:
                mm.close()
            self._tier_maps = []
            self._segment.close()

    def unlink(self) -> None:
        """Destroy the table: its segment and semaphores.  Also closes it."""
        destroy(self.name)
        self.close()

    def __reduce__(self) -> Tuple[Any, ...]:
        return (type(self)._reattach, (self.name, self.layout, self.capacity, self.key_size,
                                       self._segment.sharing))

    @classmethod
    def _reattach(cls, name: str, layout: Layout, capacity: int, key_size: int,
                  sharing: Any = None) -> "Table":
        """Unpickling a table: attach to it (never silently create a new one),
        trusting what the pickling process trusted (its owner=/group=/mode)."""
        return cls(Segment.open(name, Geometry(layout, capacity, key_size), create=False,
                                sharing=sharing))

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class _Stale:
    """Marker: the slot changed under a snapshot; skip or retry."""

    def __repr__(self) -> str:
        return "<stale>"


_STALE: Any = _Stale()
