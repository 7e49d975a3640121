"""Helpers shared by the tests (imported as ``helpers``: pytest puts tests/ on sys.path)."""
from __future__ import annotations

from typing import Sequence


def run_to_completion(processes: Sequence) -> None:
    """Start real processes together, wait for them all, and require that
    each exited cleanly (an assertion in a child shows as a non-zero exit)."""
    for p in processes:
        p.start()
    for p in processes:
        p.join()
        assert p.exitcode == 0, f"{p.name} exited with {p.exitcode}"
