"""A run's SFT sub-phases for people: its validation curve and complete checkpoints read back from
the run folder, and the phase table (Eq. 13-17) that ``npu-retu phases``, ``npu-retu sft``, the
pipeline's report.md and the transition experiment print.

A run folder holds ``metrics.jsonl`` plus complete checkpoints ``checkpoints/step-<N>``. Only rows
with ``val/loss`` count; when a step appears twice (a resumed run re-logs it) the last row wins.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from npu_retu.errors import UserError, integer_field, number_field

VAL_LOSS_KEY = "val/loss"
# A checkpoint folder is complete once one of these is in it; half-written ones are named .tmp-*.
CHECKPOINT_MARKERS = ("trainer_state.pt", "model.safetensors")
_CHECKPOINT_NAME = re.compile(r"step-(\d+)")


# --------------------------------------------------------------------------------------------
# reading a run


def read_validation_curve(metrics_path: Path) -> list[dict]:
    """The validation points of a metrics JSONL file, sorted by step: ``{step, flops, loss, line}``.

    Rows without ``val/loss`` are skipped; for a repeated step the last row wins. Raises
    :class:`UserError` naming the file and line for a malformed row.
    """
    if not metrics_path.is_file():
        raise UserError(f"{metrics_path}: no such file")
    by_step: dict[int, dict] = {}
    with metrics_path.open(encoding="utf-8") as f:
        for line_number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            where = f"{metrics_path} line {line_number}"
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
            if VAL_LOSS_KEY not in row:
                continue
            step = integer_field(row, "step", where)
            by_step[step] = {  # a resumed run re-logs a step: the last row wins
                "step": step,
                "flops": number_field(row, "flops", where),
                "loss": _loss_field(row, where),
                "line": line_number,
            }
    if not by_step:
        raise UserError(f"{metrics_path}: no rows with '{VAL_LOSS_KEY}' (validation runs every sft.eval_every steps)")
    return [by_step[step] for step in sorted(by_step)]


def _loss_field(row: dict, where: str) -> float:
    value = number_field(row, VAL_LOSS_KEY, where)
    if value <= 0:
        raise UserError(f"{where}: field '{VAL_LOSS_KEY}' must be > 0, got {value!r}")
    return value


def find_complete_checkpoints(checkpoint_dir: Path) -> set[int]:
    """Steps N with a complete ``checkpoint_dir/step-N`` folder (holds trainer_state.pt or
    model.safetensors); ``.tmp-*`` folders are unfinished writes and never count."""
    if not checkpoint_dir.is_dir():
        return set()
    steps = set()
    for entry in checkpoint_dir.iterdir():
        match = _CHECKPOINT_NAME.fullmatch(entry.name)
        if match and entry.is_dir() and any((entry / marker).is_file() for marker in CHECKPOINT_MARKERS):
            steps.add(int(match.group(1)))
    return steps


# --------------------------------------------------------------------------------------------
# the table


def format_phase_table(report) -> str:
    """The human table of a :class:`~npu_retu.monitor.phases.PhaseReport` (one row per point)."""
    use_exa = max(report.flops, default=0.0) >= 1e15
    compute_title = "exaFLOPs" if use_exa else "FLOPs"
    lines = [
        f"L_min = {report.L_min:.4f} at step {report.L_min_step}; "
        f"stable: L <= {report.thresholds['stable']:.4f} (delta={report.delta:g}); "
        f"severe: L >= {report.thresholds['severe']:.4f} (delta2={report.delta2:g})",
        "",
        f"{'step':>8}  {compute_title:>10}  {'val loss':>9}  {'/ L_min':>7}  {'sub-phase':<10}  {'ckpt':<4}",
    ]
    for step, flops, loss, ratio, phase, saved in zip(
        report.steps, report.flops, report.losses, report.ratios(), report.phases, report.has_checkpoint
    ):
        compute = f"{flops / 1e18:.4g}" if use_exa else f"{flops:.3e}"
        marker = "  <- pick" if step == report.pick else ""
        lines.append(
            f"{step:>8}  {compute:>10}  {loss:>9.4f}  {ratio:>7.4f}  {phase.value:<10}  {'yes' if saved else 'no':<4}{marker}".rstrip()
        )
    return "\n".join(lines)


def pick_line(report) -> str:
    """The line that names the picked checkpoint, or says why there is none."""
    if report.pick is None:
        where = "Stable" if report.pick_mode == "stable" else "Mild or Stable"
        return f"picked checkpoint: none (no {where} point has a checkpoint)"
    return f"picked checkpoint: step {report.pick} ({report.pick_phase.value})"
