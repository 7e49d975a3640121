"""Plain-text and JSON formatting shared by the command-line tools
(``shmdict.cli``, ``shmdict.top``): aligned columns, sizes, JSON-safe values."""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence, Tuple


def human_bytes(n: int) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def render_table(headers: Sequence[str], rows: Iterable[Sequence[Any]],
                 right: Iterable[int] = ()) -> str:
    """Rows as aligned text columns; columns listed in ``right`` are right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[k]) for row in cells) for k in range(len(headers))]
    right = set(right)
    lines = []
    for row in cells:
        parts = [cell.rjust(widths[k]) if k in right else cell.ljust(widths[k])
                 for k, cell in enumerate(row)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def render_fields(pairs: Sequence[Tuple[str, Any]]) -> str:
    """``label  value`` lines with the values aligned."""
    width = max(len(label) for label, _ in pairs)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in pairs)


def jsonable(value: Any) -> Any:
    """A value as JSON: tuples become lists, bytes ``{"hex": ...}``, records objects."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (bytes, bytearray)):
        return {"hex": bytes(value).hex()}
    if hasattr(value, "_asdict"):
        return {k: jsonable(v) for k, v in value._asdict().items()}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [jsonable(v) for v in value]
    return repr(value)
