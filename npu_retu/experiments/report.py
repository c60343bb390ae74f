"""What the experiment reports share: a finding with its verdict, and the report's fixed sections."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any


@dataclass
class Finding:
    """One of the paper's findings, checked in miniature.

    ``held`` is True (it held), False (it did not) or None (the data cannot tell, e.g. the
    difference is inside the bootstrap intervals); ``evidence`` gives the numbers it rests on.
    """

    claim: str
    held: bool | None
    evidence: str

    def markdown(self) -> str:
        verdict = {True: "held", False: "did not hold", None: "inconclusive"}[self.held]
        return f"* **{verdict}**: {self.claim}\n  {self.evidence}"


def format_ci(ci: tuple[float, float] | None) -> str:
    return "n/a" if ci is None else f"{ci[0]:.1f}-{ci[1]:.1f}"


def separated(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool:
    """Whether two intervals are known and do not overlap (a missing interval separates nothing)."""
    if a is None or b is None:
        return False
    return a[1] < b[0] or b[1] < a[0]


def header(title: str, command: str, environment: str, stage_seconds: dict[str, float]) -> list[str]:
    """Title, the command, the machine, and the time of each stage as the stage itself recorded it
    (so a stage finished by an earlier, interrupted invocation still counts)."""
    total = sum(stage_seconds.values())
    lines = [
        f"# {title}",
        "",
        f"Produced by `{command}` on {datetime.date.today().isoformat()} ({environment}).",
        f"Time: {total / 60:.1f} min in all ({', '.join(f'{k} {v / 60:.1f}' for k, v in stage_seconds.items())} min).",
        "",
    ]
    return lines


def stage_seconds(done: dict | list) -> float:
    """Seconds a stage recorded: a stage's ``done.json``, or the sum over evaluation points."""
    if isinstance(done, list):
        return float(sum(point.get("seconds", 0.0) for point in done))
    return float(done.get("seconds", 0.0))


def findings_section(findings: list[Finding]) -> list[str]:
    lines = ["## Did the paper's findings hold in miniature?", ""]
    lines += [f.markdown() for f in findings]
    return lines + [""]


def table_section(rows: list[Any]) -> list[str]:
    from npu_retu.ceiling.tables import format_markdown

    return [format_markdown(rows), ""]
