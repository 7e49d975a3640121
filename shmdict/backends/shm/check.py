"""``check``: a consistency report of a whole table.

It reads every slot and the counters and reports what does not add up:

* slot states and key lengths that shmdict never writes;
* keys whose bytes do not decode, or that are present twice;
* published keys not reachable from their home slot (a broken probe chain);
* slots claimed but never published by a process that is gone;
* per-stripe and global live counts that differ from the slots;
* stripes held by dead processes, or left taken with no holder by a process
  killed between its wait and its CAS (which it takes over and repairs, as a
  waiter would, within the table's stated bound), and stripe semaphores whose
  count is above one;
* a tombstone counter that drifted (a process killed between a slot's CAS
  and the counter's update leaves it off by one; it is only statistics, so
  ``check`` corrects it and says so under ``repaired``).

Counts are exact only while no other process changes the table; run it when
the table is quiet, or read mismatches of one or two as "in flight".
"""
from __future__ import annotations

from typing import Any, Dict

import xxhash

from ...keys import decode_key
from ...report import Report
from . import _core

KIND_NAMES = _core.KIND_NAMES


def _key_length(state: int) -> int:
    """The key length a slot's state word records."""
    return (state >> _core.KLEN_SHIFT) & _core.KLEN_MASK


def check_table(table: Any) -> Report:
    table._check_open()
    core = table._core
    header = table._segment.header
    nslots, nstripes, key_size = header["nslots"], header["nstripes"], header["key_size"]
    report = Report(table.name, slots=nslots)

    # Dead stripe holders first: taking the stripe over repairs it.  A stripe
    # whose semaphore is taken but names no holder is waited for the same way
    # (its holder is between wait and CAS, or died there).
    stripes = table._stripes
    for i in range(nstripes):
        holder = core.stripe_holder(i)
        sem = stripes.semaphores[i]
        try:
            value = sem.value
        except Exception:    # sem_getvalue unsupported: judge by the holder alone
            value = 1
        if value > 1:
            report.problems.append(f"stripe {i}: semaphore count {value} (more than one "
                                   f"process could hold the stripe at once)")
        dead = bool(holder) and not _core.id_alive(holder)
        if dead or (holder == 0 and value == 0):
            before = stripes.takeovers
            stripes.acquire(i)
            stripes.release(i)
            if stripes.takeovers != before:
                who = f"dead pid {_core.id_pid(holder)}" if dead else "a process that died"
                report.repaired.append(f"stripe {i} was held by {who}; taken over and repaired")

    counted = {name: 0 for name in KIND_NAMES.values()}
    per_stripe = [0] * nstripes
    seen: Dict[bytes, int] = {}
    for i in range(nslots):
        kind, state, encoded = core.slot_info(i)
        counted[KIND_NAMES[kind]] += 1
        if kind == _core.KIND_CLAIMED:
            report.problems.append(f"slot {i}: claimed but never published")
            continue
        if kind != _core.KIND_PUBLISHED:
            continue
        if encoded is None:
            report.problems.append(f"slot {i}: key length {_key_length(state)} "
                                   f"exceeds key_size {key_size}")
            continue
        try:
            decode_key(encoded)
        except (ValueError, RecursionError) as exc:
            report.problems.append(f"slot {i}: undecodable key ({exc})")
        h = xxhash.xxh3_64_intdigest(encoded, table._seed)
        if (h >> _core.TAG_SHIFT) != (state >> _core.TAG_SHIFT):
            report.problems.append(f"slot {i}: stored hash tag does not match its key")
            continue
        if encoded in seen:
            report.problems.append(f"slot {i}: key also present in slot {seen[encoded]}")
        seen[encoded] = i
        per_stripe[h % nstripes] += 1
        found = core.find(encoded, h)
        if found is None or found[0] != i:
            report.problems.append(f"slot {i}: key not reachable from its home slot "
                                   f"(broken probe chain)")
    report.counted = counted
    report.live, report.tombstones = core.counts()
    if report.live != counted["published"]:
        report.problems.append(f"live count {report.live} but {counted['published']} "
                               f"published slots")
    if not 0 <= report.live <= table.capacity:
        report.problems.append(f"live count {report.live} outside 0..{table.capacity}")
    if report.tombstones != counted["tombstone"]:
        core.correct_tombstones(counted["tombstone"])
        report.repaired.append(f"tombstone count {report.tombstones} corrected to "
                               f"{counted['tombstone']}")
        report.tombstones = counted["tombstone"]
    for i in range(nstripes):
        have = core.stripe_live(i)
        if have != per_stripe[i]:
            report.problems.append(f"stripe {i} counts {have} keys, slots hold {per_stripe[i]}")
    return report
