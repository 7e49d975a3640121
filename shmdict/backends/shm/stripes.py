"""Stripe locks: per-stripe posix_ipc semaphores that survive a dead holder.

Inserts and deletes of keys whose hash falls in stripe ``i`` take semaphore
``i``, so a key can never be inserted twice.  A POSIX semaphore has no owner:
a process SIGKILLed between ``acquire`` and ``release`` would leave it taken
forever.  So each stripe also has a *holder word* in the segment (the
holder's owner id: pid and start time, see format.h), set by compare-and-swap
right after the semaphore is taken:

* a waiter whose timed wait expires (every ``poll`` seconds) looks at the
  holder; if it names a dead process, exactly one waiter wins the CAS from
  that holder to itself, inherits the acquisition without posting (so the
  semaphore's count stays right), repairs the stripe (drops slots the dead
  process claimed but never published, recounts the stripe's keys) and goes
  on.  A dead holder therefore stalls others for about ``poll`` seconds.
* if the semaphore is taken but no holder is recorded for ``stall_timeout``
  seconds (the holder died in the instant between the wait and the CAS),
  a waiter takes over the same way.  A live process that was merely paused
  that long and then finds its CAS lost must not post: it waits again.

Liveness is judged by pid and start time, which assumes all processes using
a table share one PID namespace (one host, no containers with their own).

The bound, and how to change it: a holder that died after recording itself
stalls the others for at most ``poll`` seconds (plus scheduling); one that
died in the instant between its wait and its CAS (or between its release's
CAS and post) stalls them for at most ``stall_timeout + poll`` seconds.  The
defaults are ``POLL`` (0.1 s) and ``STALL_TIMEOUT`` (2 s); set them per
process with the environment variables ``SHMDICT_STRIPE_POLL`` and
``SHMDICT_STALL_TIMEOUT`` (read at import), per module by assigning
``shmdict.stripes.POLL`` / ``STALL_TIMEOUT`` (this module: ``shmdict.stripes`` is its documented name) before opening a table, or per
table with ``shmdict.open(..., stripe_poll=..., stall_timeout=...)``.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional

import posix_ipc

from ...validate import env_seconds, seconds
from . import _core

#: Seconds between checks of a stripe's holder while waiting for it.
POLL = env_seconds("SHMDICT_STRIPE_POLL", 0.1)
#: Seconds a taken stripe may show no holder before a waiter takes it over.
STALL_TIMEOUT = env_seconds("SHMDICT_STALL_TIMEOUT", 2.0)


class Stripes:
    """The stripe locks of one attached table.

    The protocol runs in the C core (``Core.stripe_acquire`` /
    ``stripe_release``), so that no Python code, and so no signal handler,
    runs between taking a stripe's semaphore and recording the holder.
    Callers take a stripe inside the ``try`` whose ``finally`` releases it:
    ``stripe_release`` releases only a stripe that this thread holds, so a
    release after a failed (or interrupted) acquire is harmless.
    """

    def __init__(self, core: "_core.Core", semaphores: List[posix_ipc.Semaphore]) -> None:
        self.core = core
        self.semaphores = semaphores
        self.count = len(semaphores)
        self.poll = POLL
        self.stall_timeout = STALL_TIMEOUT
        #: What the last repairs did: (stripe, claims dropped, count delta).
        self.repairs: List[tuple] = []
        self._takeovers = 0
        core.attach_semaphores([sem.name for sem in semaphores], poll=self.poll,
                               stall_timeout=self.stall_timeout)
        #: release(i) -> bool, the core's own method (no Python frame, so a
        #: signal handler cannot run between a finally and the release).
        self.release = core.stripe_release

    def configure(self, poll: Optional[float] = None,
                  stall_timeout: Optional[float] = None) -> None:
        """Change the recovery bound of this table in this process (None: keep)."""
        if poll is not None:
            self.poll = seconds(poll, "stripe_poll")
        if stall_timeout is not None:
            self.stall_timeout = seconds(stall_timeout, "stall_timeout")
        self.core.attach_semaphores([], poll=self.poll, stall_timeout=self.stall_timeout)

    @property
    def takeovers(self) -> int:
        """How many times this process took a stripe over from a dead holder
        (here, and in the core's own inserts, which take stripes in C)."""
        return self._takeovers + self.core.takeovers()

    @property
    def bound(self) -> float:
        """Worst-case seconds a dead holder stalls a waiter (before scheduling)."""
        return self.stall_timeout + self.poll

    def acquire(self, i: int) -> None:
        """Take stripe ``i`` (waiting, interruptible; see the module)."""
        repaired = self.core.stripe_acquire(i)
        if repaired is not None:
            self._repaired(i, repaired)

    def _repaired(self, i: int, what: tuple) -> None:
        self._takeovers += 1
        self.repairs.append((i,) + tuple(what))
        del self.repairs[:-16]

    def hold(self, i: int, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` with stripe ``i`` held: taken and released by the
        core around the call, so that no signal handler's exception between
        the acquire and a ``finally`` can leave the stripe taken."""
        return self.core.holding_stripe(i, fn, *args)

    def repair_dead(self) -> int:
        """Take over and repair every stripe whose recorded holder is dead
        (or let whoever got there first do it); returns how many there were."""
        dead = self.core.dead_stripes()
        for i in dead:
            self.take_and_release(i)
        return len(dead)

    def take_and_release(self, i: int) -> None:
        """Take stripe ``i`` and give it back: what repairs a stripe whose
        holder died, or whose word or count is garbage (the taking does it)."""
        self.hold(i, _nothing)


def _nothing() -> None:
    """What a stripe is held for when taking it is the point (a repair)."""
