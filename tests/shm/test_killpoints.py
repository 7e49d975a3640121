"""SIGKILLs aimed inside the C core's critical windows (see killpoints.py).

Each kill stops a victim process with ptrace a random number of instructions
into one of the core's critical functions (insert, delete, the admission
lock, stripe takeover and repair, tier growth) and SIGKILLs it there; the
next process must get through (no wedge), every call the victim returned
from must be in the table exactly once, and ``check()`` must pass.

``SHMDICT_KILLPOINTS`` sets the number of aimed kills (default three per
window, 39, the first of each calibrating it; the nightly size is 2000, run
by ``scripts/killpoints``); ``SHMDICT_KILLPOINTS_SEED`` replays a run.
"""
from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import killpoints  # noqa: E402  (a helper module beside this file, not a package)

KILLS = int(os.environ.get("SHMDICT_KILLPOINTS", str(3 * len(killpoints.WINDOWS))))


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    why = killpoints.ptrace_unavailable()
    if why:
        pytest.skip(why)
    if not killpoints.core_source().exists():
        pytest.skip(f"no {killpoints.core_source()} to build the instrumented core from")
    if killpoints.compiler() is None:
        pytest.skip("no C compiler to build the instrumented core (-fno-inline -g) with")
    seed = int(os.environ.get("SHMDICT_KILLPOINTS_SEED", random.randrange(1 << 30)))
    return killpoints.Campaign(tmp_path_factory.mktemp("killpoints"), seed)


def test_instrumented_core_has_every_window(campaign):
    """Every window's function is a breakpointable symbol of its own."""
    for window in killpoints.WINDOWS:
        assert campaign.symbols.get(window.function), window


def test_aimed_kills(campaign):
    figures = campaign.figures
    try:
        campaign.run(KILLS)
    finally:
        print("\n" + "\n".join(figures.lines()))
    # run() asserted the books, no wedge and check() after every kill; here,
    # that every window was hit as planned (round robin), and that kills
    # landed inside the calls, not only after them.
    for k, window in enumerate(killpoints.WINDOWS):
        planned = len(range(k, KILLS, len(killpoints.WINDOWS)))
        assert figures.windows[window.name].kills == planned, window
    if KILLS > len(killpoints.WINDOWS):
        assert sum(w.inside for w in figures.windows.values()) > 0
    assert figures.victims >= KILLS
