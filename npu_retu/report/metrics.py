"""Run metrics: one JSON object per line in ``metrics.jsonl`` plus TensorBoard events, and their
reduction over the ranks of a data-parallel job.

Every row carries ``step`` and cumulative ``flops`` (the paper's x-axis) next to its metrics.
On resume from step ``s`` the rows after ``s`` (written by the run that crashed) are dropped, so
the file reads as if the run had never stopped. ``run.loggers`` adds TensorBoard and the trackers
of :mod:`npu_retu.report.trackers` (wandb, mlflow, swanlab); metrics.jsonl is always written.

With several ranks every rank measures its share (its micro-batches, its prompts);
:func:`sum_over_ranks` adds named values up over the ranks in one all-reduce, and
:class:`WeightedSums` accumulates weighted means (token-weighted, per optimizer step) for it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from npu_retu.distributed.process_group import all_gather_objects, all_reduce_sum, is_initialized
from npu_retu.report.trackers import Trackers, check_installed, numeric

METRICS_FILE = "metrics.jsonl"


def sum_over_ranks(values: Mapping[str, float]) -> dict[str, float]:
    """Each named value summed over all ranks, in one all-reduce (float64; SUM, as HCCL has no AVG
    everywhere). Every rank must pass the same names. Not distributed: the values, as floats."""
    names = sorted(values)
    return dict(zip(names, all_reduce_sum([values[name] for name in names])))


def max_over_ranks(values: Mapping[str, float]) -> dict[str, float]:
    """Each named value's largest over all ranks (every rank passes the same names)."""
    if not is_initialized():
        return {name: float(value) for name, value in values.items()}
    gathered = all_gather_objects(dict(values))
    return {name: max(float(g[name]) for g in gathered) for name in values}


class WeightedSums:
    """Weighted sums of named metrics on this rank; :meth:`over_ranks` adds them up over all ranks.

    ``add(metrics, weight)`` adds ``weight * value`` to each name's sum and ``weight`` to its
    weight; :meth:`mean` is then sum / weight (weights below 1 count as 1: a name that got no
    weight anywhere reads 0). Every rank must add the same names (with weight 0 if it has none).
    """

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, metrics: Mapping[str, float], weight: float = 1) -> None:
        for name, value in metrics.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value) * weight
            self.weights[name] = self.weights.get(name, 0) + weight

    def over_ranks(self) -> WeightedSums:
        """The sums and weights of every rank added up (one all-reduce)."""
        totals = sum_over_ranks({**{f"sum:{k}": v for k, v in self.sums.items()}, **{f"weight:{k}": w for k, w in self.weights.items()}})
        out = WeightedSums()
        out.sums = {k: totals[f"sum:{k}"] for k in self.sums}
        out.weights = {k: totals[f"weight:{k}"] for k in self.weights}
        return out

    def mean(self, name: str) -> float:
        return self.sums[name] / max(1, self.weights[name])


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


def _truncate_after(path: Path, step: int) -> list[dict[str, Any]]:
    """Drop the rows after ``step``; returns the rows kept."""
    if not path.exists():
        return []
    kept = [r for r in read_metrics(path) if int(r.get("step", 0)) <= step]
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in kept:
            f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return kept


class NullLogger:
    """What ranks other than 0 log to: nothing (rank 0 writes metrics.jsonl and the other run.loggers)."""

    def log(self, step, flops, row) -> None:
        pass

    def close(self) -> None:
        pass


class MetricsLogger:
    """Appends metric rows to ``run_dir/metrics.jsonl`` and to the other loggers of ``run.loggers``:
    TensorBoard (``run_dir/tensorboard``) and the trackers (:class:`npu_retu.report.trackers.Trackers`,
    which get the resolved ``config``, ``project`` and ``run_name``)."""

    def __init__(self, run_dir: Path, *, resume_step: int | None = None, loggers: Sequence[str] = ("jsonl", "tensorboard"),
                 project: str = "npu-retu", run_name: str | None = None, config: Mapping[str, Any] | None = None):
        check_installed(list(loggers))
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        kept: list[dict[str, Any]] = []
        if resume_step is not None:
            kept = _truncate_after(self.path, resume_step)
        elif self.path.exists():
            self.path.unlink()
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        self._trackers = None
        try:
            if "tensorboard" in loggers:
                from torch.utils.tensorboard import SummaryWriter

                purge = None if resume_step is None else resume_step + 1
                self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=purge)
            self._trackers = Trackers(
                self.run_dir, list(loggers), project=project, run_name=run_name or self.run_dir.name,
                config=dict(config or {}), resumed=resume_step is not None, rows=kept,
            )
        except BaseException:
            self.close()
            raise

    def log(self, step: int, flops: float, metrics: dict[str, Any]) -> dict[str, Any]:
        row = {"step": int(step), "flops": float(flops), "time": round(time.time(), 3)}
        row.update(metrics)
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in numeric(metrics).items():
                self._tb.add_scalar(key, value, global_step=step)
            self._tb.add_scalar("flops", flops, global_step=step)
        if self._trackers is not None:
            self._trackers.log(int(step), float(flops), metrics)
        return row

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
        if self._trackers is not None:
            self._trackers.close()
