"""Process identities, judged alive as the core judges lock and stripe holders.

An identity is this process's pid with its start time (from ``/proc``), so a
pid that the kernel reuses for another process is not taken for the one that
died.  It assumes one PID namespace, as the row locks do.
"""
from __future__ import annotations

from . import _core


def this_process() -> int:
    """This process's identity (pid | start time << 32); a forked child gets its own."""
    return _core.my_id()


def process_alive(ident: int) -> bool:
    """Whether the process ``ident`` names is still running (the same start time)."""
    return bool(_core.id_alive(ident))


def process_pid(ident: int) -> int:
    """The pid an identity names."""
    return _core.id_pid(ident)
