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
* stripe holder words that contradict the semaphore (a word naming some
  process while the semaphore is free is garbage: the semaphore owns the
  stripe), which it clears by taking the stripe;
* per-stripe counts that differ from the slots (recounted under the
  stripe's lock) and a global live count that differs from the sum of the
  stripes' (rebuilt under the admission lock): both listed under
  ``repaired``;
* (expired keys not reclaimed yet are published slots like any other:
  they count, and are checked, as keys; an insert reclaims them later);
* a tombstone counter that drifted (a process killed between a slot's CAS
  and the counter's update leaves it off by one; it is only statistics, so
  ``check`` corrects it and says so under ``repaired``).

A grown table is checked tier by tier (every published tier is attached
first): each tier's slots against its own counts, keys present in two tiers,
and the whole against ``max_capacity``.  Slots are named ``slot I`` in tier
0 and ``tier K slot I`` beyond.

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
    report = Report(table.name, slots=nslots)     # all tiers' slots, below

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
        # The semaphore owns the stripe: a holder word naming a process while
        # the semaphore is free (or a count above one) contradicts it.  Taking
        # the stripe repairs both (the core drops the extra count, takes the
        # word over and repairs the stripe).
        garbage = bool(holder) and not dead and value >= 1
        if dead or garbage or value > 1 or (holder == 0 and value == 0):
            before = stripes.takeovers
            stripes.take_and_release(i)
            after = core.stripe_holder(i)
            if garbage and after != holder:
                report.repaired.append(f"stripe {i}: holder word named pid "
                                       f"{_core.id_pid(holder)} while the semaphore was free "
                                       f"(garbage); cleared and the stripe repaired")
            elif stripes.takeovers != before:
                who = f"dead pid {_core.id_pid(holder)}" if dead else "a process that died"
                report.repaired.append(f"stripe {i} was held by {who}; taken over and repaired")
            if value > 1:
                try:
                    now = sem.value
                except Exception:
                    now = value
                if now <= 1:
                    report.repaired.append(f"stripe {i}: semaphore count {value} brought "
                                           f"back to {now}")

    counted = {name: 0 for name in KIND_NAMES.values()}
    per_stripe = [0] * nstripes
    seen: Dict[bytes, str] = {}
    table._attach_tiers()
    tiers = core.tiers()
    report.slots = sum(t[0] for t in tiers)
    tombstones_by_tier = [0] * len(tiers)
    for k, (tier_slots, _, _, _) in enumerate(tiers):
        for local in range(tier_slots):
            i = (k << _core.TIER_SHIFT) | local
            where = f"slot {local}" if k == 0 else f"tier {k} slot {local}"
            kind, state, encoded = core.slot_info(i)
            counted[KIND_NAMES[kind]] += 1
            if kind == _core.KIND_TOMBSTONE:
                tombstones_by_tier[k] += 1
            if kind == _core.KIND_CLAIMED:
                report.problems.append(f"{where}: claimed but never published")
                continue
            if kind != _core.KIND_PUBLISHED:
                continue
            if encoded is None:
                report.problems.append(f"{where}: key length {_key_length(state)} "
                                       f"exceeds key_size {key_size}")
                continue
            try:
                decode_key(encoded)
            except (ValueError, RecursionError) as exc:
                report.problems.append(f"{where}: undecodable key ({exc})")
            h = xxhash.xxh3_64_intdigest(encoded, table._seed)
            if (h >> _core.TAG_SHIFT) != (state >> _core.TAG_SHIFT):
                report.problems.append(f"{where}: stored hash tag does not match its key")
                continue
            if encoded in seen:
                report.problems.append(f"{where}: key also present in {seen[encoded]}")
            seen[encoded] = where
            per_stripe[h % nstripes] += 1
            found = core.find(encoded, h, True)   # expired keys are still in the chain
            if found is None or found[0] != i:
                report.problems.append(f"{where}: key not reachable from its home slot "
                                       f"(broken probe chain)")
    report.counted = counted
    report.live, report.tombstones = core.counts()
    if report.live != counted["published"]:
        report.problems.append(f"live count {report.live} but {counted['published']} "
                               f"published slots")
    if not 0 <= report.live <= table.max_capacity:
        report.problems.append(f"live count {report.live} outside 0..{table.max_capacity}")
    for k, (_, tier_capacity, tier_live, _) in enumerate(tiers):
        if not 0 <= tier_live <= tier_capacity:
            report.problems.append(f"tier {k}: live count {tier_live} outside "
                                   f"0..{tier_capacity}")
    if report.tombstones != counted["tombstone"]:
        for k, (_, _, _, tier_tombstones) in enumerate(tiers):
            if tier_tombstones != tombstones_by_tier[k]:
                core.correct_tombstones(tombstones_by_tier[k], k)
        report.repaired.append(f"tombstone count {report.tombstones} corrected to "
                               f"{counted['tombstone']}")
        report.tombstones = counted["tombstone"]
    for i in range(nstripes):
        have = core.stripe_live(i)
        if have != per_stripe[i]:
            # Recount the stripe under its lock (exact: nobody else changes
            # its keys meanwhile).
            _, delta = stripes.hold(i, core.recount_stripe, i)
            if delta and core.stripe_live(i) == per_stripe[i]:
                report.repaired.append(f"stripe {i} counted {have} keys, slots hold "
                                       f"{per_stripe[i]}: recounted")
            else:
                report.problems.append(f"stripe {i} counts {have} keys, slots hold "
                                       f"{per_stripe[i]}")
    if sum(core.stripe_live(i) for i in range(nstripes)) != core.counts()[0]:
        # The global count is the sum of the stripes' (both change under the
        # admission lock): rebuild it from them.
        old, new = core.recount_live()
        if new == counted["published"]:
            # Still reported as found (this check was inconsistent); the
            # next check finds it right.
            report.repaired.append(f"live count {old} rebuilt from the stripes: {new}")
    return report
