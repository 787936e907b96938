"""A doctor check's result: a verdict (ok, warn, fail, or skip when the check does not apply),
the evidence behind it, a suggested fix, the figures, and any plot it drew."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Status = Literal["ok", "warn", "fail", "skip"]


@dataclass
class Verdict:
    """>>> Verdict("initial loss", "fail", "0.69 expected, got 48.1", "initialise the last layer small")"""

    check: str
    status: Status
    evidence: str
    fix: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    plot: Path | None = None

    @property
    def flagged(self) -> bool:
        return self.status in ("warn", "fail")

    def to_dict(self) -> dict[str, Any]:
        out = {"check": self.check, "status": self.status, "evidence": self.evidence}
        if self.fix:
            out["fix"] = self.fix
        if self.figures:
            out["figures"] = self.figures
        if self.plot is not None:
            out["plot"] = str(self.plot)
        return out


def format_verdicts(verdicts: list[Verdict]) -> str:
    """One block per check: ``[fail] name: evidence`` and an indented ``fix:`` line."""
    lines = []
    for v in verdicts:
        lines.append(f"[{v.status}] {v.check}: {v.evidence}")
        if v.fix and v.status != "ok":
            lines.append(f"       fix: {v.fix}")
        if v.plot is not None:
            lines.append(f"       plot: {v.plot}")
    counts = {s: sum(v.status == s for v in verdicts) for s in ("ok", "warn", "fail", "skip")}
    lines.append("")
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return "\n".join(lines)
