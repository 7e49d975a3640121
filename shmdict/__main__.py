"""``python -m shmdict``: the command-line tool (see shmdict.cli)."""
import sys

from .cli import main

sys.exit(main())
