"""The pure rules of the rate limiters: int64 states and their arithmetic.

No table, no clock, no I/O: each function maps integers (nanoseconds,
counts, packed int64 words) to integers, so the limiters
(:mod:`shmdict.ratelimit.limiters`), the ``limits`` storage
(:mod:`shmdict.limits_storage`) and the backends that run a step on a server
share one definition.  The rules themselves are stated in the docstring of
:mod:`shmdict.ratelimit`.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Tuple

NS = 1_000_000_000


# ---------------------------------------------------------------- GCRA
def emission_interval_ns(rate: float, period: float) -> int:
    """``period / rate`` in whole nanoseconds, rounded up: never a laxer limit.

    Computed exactly from the two numbers as given (``Fraction`` of each
    float), so ``allowed <= burst + rate * t / period`` holds exactly, not
    just up to float rounding.
    """
    return max(1, math.ceil(Fraction(period) * NS / Fraction(rate)))


def gcra_step(tat: int, now: int, emission_ns: int, tolerance_ns: int,
              cost: int) -> Tuple[int, bool, int, int, int]:
    """One GCRA decision: ``(tat_after, allowed, remaining, retry_after_ns, reset_after_ns)``.

    Pure arithmetic on integers (nanoseconds), the same for the local CAS
    loop and for a backend that runs it on a server.  ``tat`` is the stored
    theoretical arrival time (0 for a new key); ``tat_after`` is what to
    store, equal to ``tat`` when the hit is refused or ``cost`` is 0.
    """
    base = tat if tat > now else now
    new_tat = base + cost * emission_ns
    ahead = new_tat - now
    if ahead > tolerance_ns:
        return tat, False, (tolerance_ns - (base - now)) // emission_ns, \
            ahead - tolerance_ns, base - now
    if cost == 0:
        return tat, True, (tolerance_ns - ahead) // emission_ns, 0, ahead
    return new_tat, True, (tolerance_ns - ahead) // emission_ns, 0, ahead


def gcra_merge(current: int, taken: int, now: int) -> int:
    """Two TATs for one key -> one that has consumed what both did."""
    return max(current, now) + max(0, taken - now)


# -------------------------------------------------------------- windows
#: Fixed window word: ``expiry_ms << 24 | count``, expiry in ms of the clock.
FW_COUNT_BITS = 24
FW_COUNT_MAX = (1 << FW_COUNT_BITS) - 1
_MS = 1_000_000


def fixed_window_unpack(word: int, now: int) -> Tuple[int, int]:
    """``(count, window_end_ns)`` of a fixed-window word; (0, 0) once expired."""
    end = (word >> FW_COUNT_BITS) * _MS
    if end <= now:
        return 0, 0
    return word & FW_COUNT_MAX, end


def fixed_window_pack(count: int, end_ns: int) -> int:
    """A fixed-window word: the count saturates at ``FW_COUNT_MAX``."""
    return ((end_ns // _MS) << FW_COUNT_BITS) | min(count, FW_COUNT_MAX)


def fixed_window_open(now: int, period_ns: int) -> int:
    """The end of a window opened at ``now`` (rounded up to the millisecond)."""
    return -(-(now + period_ns) // _MS) * _MS


def fixed_window_merge(current: int, taken: int, now: int) -> int:
    c_count, c_end = fixed_window_unpack(current, now)
    t_count, t_end = fixed_window_unpack(taken, now)
    if not t_end:
        return current
    return fixed_window_pack(c_count + t_count, max(c_end, t_end))


#: Sliding window word: ``(window index mod 2**23) << 40 | previous << 20 | current``.
SW_COUNT_BITS = 20
SW_COUNT_MAX = (1 << SW_COUNT_BITS) - 1
SW_INDEX_MOD = 1 << 23


def sliding_window_unpack(word: int, now: int, period_ns: int) -> Tuple[int, int, int]:
    """``(previous, current, elapsed_ns)``: counts as seen in the window holding ``now``."""
    index = now // period_ns
    elapsed = now - index * period_ns
    behind = (index - (word >> 2 * SW_COUNT_BITS)) % SW_INDEX_MOD
    if behind == 0:
        return (word >> SW_COUNT_BITS) & SW_COUNT_MAX, word & SW_COUNT_MAX, elapsed
    if behind == 1:
        return word & SW_COUNT_MAX, 0, elapsed
    return 0, 0, elapsed


def sliding_window_pack(previous: int, current: int, now: int, period_ns: int) -> int:
    index = (now // period_ns) % SW_INDEX_MOD
    return (index << 2 * SW_COUNT_BITS) | (min(previous, SW_COUNT_MAX) << SW_COUNT_BITS) \
        | min(current, SW_COUNT_MAX)


def sliding_window_weighted(previous: int, current: int, elapsed: int, period_ns: int) -> int:
    """floor(previous * (1 - elapsed / period)) + current, in integers."""
    return previous * (period_ns - elapsed) // period_ns + current


def sliding_window_merge(current: int, taken: int, now: int, period_ns: int) -> int:
    """Two sliding-window words for one key -> one that has counted both."""
    cp, cc, _ = sliding_window_unpack(current, now, period_ns)
    tp, tc, _ = sliding_window_unpack(taken, now, period_ns)
    return sliding_window_pack(cp + tp, cc + tc, now, period_ns)
