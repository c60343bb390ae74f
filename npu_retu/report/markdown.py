"""The pieces every Markdown report shares: the header, a finding with its verdict, the findings
section, the plasticity table section, and the atomic write of the file."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path
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


def findings_section(findings: list[Finding]) -> list[str]:
    lines = ["## Did the paper's findings hold in miniature?", ""]
    lines += [f.markdown() for f in findings]
    return lines + [""]


def table_section(rows: list[Any]) -> list[str]:
    from npu_retu.report.plasticity_table import format_markdown

    return [format_markdown(rows), ""]


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through ``path.tmp`` and a rename: a reader never sees half a report."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
