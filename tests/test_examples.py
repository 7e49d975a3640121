"""Each example runs as a script and prints the seed's exact lines."""
from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"

EXPECTED = {
    "counter_by_key.py": [f"Key key-{n} was added {n} times" for n in range(1, 10)],
    "two_layer_counter.py": [f"key1-{a}/key2-{b} was added {a * b} times"
                             for a in range(1, 4) for b in range(1, 4)],
    "rowlock.py": [f"user-{u} token refreshed 1 time(s)" for u in (1, 2, 3)],
    "concurrent_dict.py": [f"job-{j} claimed 1 time(s)" for j in range(5)] + [
        "ReadKey job-0: (0, True)",
        "ReadKey job-0 after DeleteKey: (0, False)",
        "CasVal missing key without setOnNotExists: False"],
}


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_prints_the_seed_lines(script):
    result = subprocess.run([sys.executable, str(EXAMPLES / script)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == EXPECTED[script]
