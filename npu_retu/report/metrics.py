"""Run metrics: one JSON object per line in ``metrics.jsonl`` plus TensorBoard events.

Every row carries ``step`` and cumulative ``flops`` (the paper's x-axis) next to its metrics.
On resume from step ``s`` the rows after ``s`` (written by the run that crashed) are dropped, so
the file reads as if the run had never stopped.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    """Write ``payload`` as indented JSON beside ``path`` and rename it into place (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All rows of a metrics file (a truncated last line from a crash is ignored)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut off by SIGKILL
    return rows


def _truncate_after(path: Path, step: int) -> None:
    if not path.exists():
        return
    kept = [r for r in read_metrics(path) if int(r.get("step", 0)) <= step]
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in kept:
            f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class NullLogger:
    """What ranks other than 0 log to: nothing (rank 0 writes metrics.jsonl and TensorBoard)."""

    def log(self, step, flops, row) -> None:
        pass

    def close(self) -> None:
        pass


class MetricsLogger:
    """Appends metric rows to ``run_dir/metrics.jsonl`` and TensorBoard (``run_dir/tensorboard``)."""

    def __init__(self, run_dir: Path, *, resume_step: int | None = None, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        if resume_step is not None:
            _truncate_after(self.path, resume_step)
        elif self.path.exists():
            self.path.unlink()
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=purge)

    def log(self, step: int, flops: float, metrics: dict[str, Any]) -> dict[str, Any]:
        row = {"step": int(step), "flops": float(flops), "time": round(time.time(), 3)}
        row.update(metrics)
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self._tb.add_scalar(key, value, global_step=step)
            self._tb.add_scalar("flops", flops, global_step=step)
        return row

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
