"""The consistency report that ``d.check()`` and ``shmdict check`` return.

Every backend fills the same :class:`Report`: what it counted, what does not
add up (``problems``: the table is inconsistent) and what it corrected on the
way (``repaired``: statistics only, the table stays consistent).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List


@dataclass
class Report:
    """What ``check`` found; truthy when the table is consistent."""

    name: str
    slots: int = 0
    live: int = 0
    tombstones: int = 0
    counted: Dict[str, int] = field(default_factory=dict)
    problems: List[str] = field(default_factory=list)
    repaired: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __bool__(self) -> bool:
        return self.ok

    def as_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "slots": self.slots, "live": self.live,
                "tombstones": self.tombstones, "counted": self.counted,
                "problems": self.problems, "repaired": self.repaired}

    def __str__(self) -> str:
        lines = [f"table {self.name!r}: {'OK' if self.ok else 'INCONSISTENT'}",
                 f"  slots {self.slots}, live {self.live}, tombstones {self.tombstones}",
                 "  counted: " + ", ".join(f"{k} {v}" for k, v in sorted(self.counted.items()))]
        lines += [f"  repaired: {r}" for r in self.repaired]
        lines += [f"  problem: {p}" for p in self.problems[:50]]
        if len(self.problems) > 50:
            lines.append(f"  ... and {len(self.problems) - 50} more problems")
        return "\n".join(lines)
