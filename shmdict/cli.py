"""The ``shmdict`` command-line tool."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="shmdict", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)
    demo = verbs.add_parser("demo", help="count requests from several processes into one table")
    demo.add_argument("--processes", type=int, default=4)
    demo.add_argument("--requests", type=int, default=50_000)
    args = parser.parse_args(argv)
    if args.verb == "demo":
        from .demo import run
        return run(args.processes, args.requests)
    return 2


if __name__ == "__main__":
    sys.exit(main())
