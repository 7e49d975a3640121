"""Rate limits shared by every process of a host: GCRA, fixed and sliding windows.

::

    import shmdict

    limiter = shmdict.RateLimiter("myapp.limits", rate=100, period=1.0, burst=20)
    result = limiter.hit(api_key)          # from any worker of the host
    if not result.allowed:
        return 429, {"Retry-After": str(math.ceil(result.retry_after))}

:class:`RateLimiter` is the Generic Cell Rate Algorithm (GCRA, as redis-cell
and the ATM networks it comes from): one int64 per key, the key's
*theoretical arrival time* (TAT), in nanoseconds of ``CLOCK_MONOTONIC``.  On
Linux that clock is one system-wide clock, the same in every process of the
host, and it never jumps with wall-clock changes, so a TAT written by one
worker means the same instant to all the others.  The TATs live in a Counter
table called ``name`` (``shmdict.unlink(name)`` removes the limiter's state)
and a hit advances its key's TAT with the table's compare-and-swap: no lock,
no server, a retry only when another process changed the same key in between.

The rule, with ``T = period / rate`` (the *emission interval*, in whole
nanoseconds, rounded up so the limit is never exceeded by rounding) and the
*tolerance* ``tau = burst * T``::

    base    = max(tat, now)            # an idle key has "saved up" nothing beyond tau
    new_tat = base + cost * T
    allowed = new_tat - now <= tau     # then tat := new_tat
    remaining   = (tau - (tat_after - now)) // T
    retry_after = new_tat - now - tau  (when refused)
    reset_after = tat_after - now      (until the key is back to a full burst)

so ``burst`` hits pass at once, then one per ``T``; over any interval of
length ``t`` at most ``burst + t / T <= burst + rate * t / period`` hits are
allowed, and a steady stream of one hit per ``T`` is never refused.

**Backends.**  ``backend=`` is handed to :func:`shmdict.open` as is
(``shmdict.open(name, Counter(), capacity, key_size, backend=backend)``).  If
the table object it returns has a method::

    _gcra(key, emission_interval_ns: int, tolerance_ns: int, cost: int)
        -> (allowed: bool, remaining: int, retry_after_ns: int, reset_after_ns: int)

the limiter calls it instead of its local read/compare-and-swap loop.  A
table that can run the same step on ``CLOCK_MONOTONIC`` (the default clock;
shared memory does, in C) offers it as ``_gcra_monotonic`` with the same
signature, and ``_gcra_hit(emission_interval_ns, tolerance_ns, burst,
result_type, fallback)``, which returns ``hit`` itself as one callable.  It
must apply the rule above (as :func:`gcra_step` does) atomically on the
server, with the server's clock, to the key's TAT stored as the int64 value of
``key``, and a ``cost`` of 0 must change nothing (``peek`` uses it).  That is
how a Redis table runs the same limiter for several hosts: one clock, one
atomic step.

**Windows.**  :class:`FixedWindowLimiter` (``limit`` hits per window, the
window starting at a key's first hit) and :class:`SlidingWindowLimiter` (the
"sliding window counter": the previous window's count, weighted by how much
of it still overlaps the last ``period``, plus the current one) pack their
whole state into the key's one int64 too, so they are also one CAS per hit.
(The ``limits`` storage, ``shmdict.limits_storage``, keeps records of three int64s instead, so its counts have no 24 or 20-bit ceiling.)

**Expiry.**  A table has a fixed capacity and keys often come from the
network (client addresses, API keys), so a key whose state is back to "no
history" is garbage.  When inserting a new key finds the table full, the
limiter sweeps such keys (:meth:`RateLimiter.sweep`, callable at any time)
and tries once more; only a table full of keys with live state raises
``shmdict.TableFull``.  A sweep never makes a limit laxer: see
:func:`sweep_table`.

**Clocks.**  Every limiter takes ``clock=``: a callable returning integer
nanoseconds.  The default is ``time.monotonic_ns``; :class:`SimulatedClock` is
a clock tests move by hand.  The clock must be shared by all processes that
use the table (a simulated clock is, when it never moves, or when a single
process uses it).
"""
from .limiters import (Clock, FixedWindowLimiter, RateLimiter, RateLimitResult,
                       SimulatedClock, SlidingWindowLimiter, monotonic_clock, sweep_table)
from .rules import (FW_COUNT_BITS, FW_COUNT_MAX, NS, SW_COUNT_BITS, SW_COUNT_MAX, SW_INDEX_MOD,
                    emission_interval_ns, fixed_window_merge, fixed_window_open,
                    fixed_window_pack, fixed_window_unpack, gcra_merge, gcra_step,
                    sliding_window_merge, sliding_window_pack, sliding_window_unpack,
                    sliding_window_weighted)

__all__ = ["RateLimiter", "FixedWindowLimiter", "SlidingWindowLimiter", "RateLimitResult",
           "SimulatedClock", "Clock", "monotonic_clock", "sweep_table",
           # the rules, for storages and backends that keep the same states
           "NS", "emission_interval_ns", "gcra_step", "gcra_merge",
           "FW_COUNT_BITS", "FW_COUNT_MAX", "fixed_window_open", "fixed_window_pack",
           "fixed_window_unpack", "fixed_window_merge",
           "SW_COUNT_BITS", "SW_COUNT_MAX", "SW_INDEX_MOD", "sliding_window_pack",
           "sliding_window_unpack", "sliding_window_weighted", "sliding_window_merge"]
