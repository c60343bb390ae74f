"""``npu-retu phases``: label a run's SFT validation-loss curve (Eq. 13-17) and pick the RL start.

Input is a run folder (``RUN_DIR/metrics.jsonl`` plus complete checkpoints ``RUN_DIR/checkpoints/
step-<N>``) or a metrics JSONL file. Only rows with ``val/loss`` count; when a step appears twice
(a resumed run re-logs it) the last row wins.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from npu_retu.errors import UserError, integer_field, number_field

HELP = "Label an SFT validation-loss curve with its sub-phases (Adaptive/Stable/Mild/Severe) and pick the checkpoint for RL."

VAL_LOSS_KEY = "val/loss"
# A checkpoint folder is complete once one of these is in it; half-written ones are named .tmp-*.
CHECKPOINT_MARKERS = ("trainer_state.pt", "model.safetensors")
_CHECKPOINT_NAME = re.compile(r"step-(\d+)")


def add_arguments(parser) -> None:
    parser.add_argument("source", metavar="RUN_DIR_or_METRICS",
                        help="a run folder (reads metrics.jsonl and checkpoints/step-N) or a metrics JSONL file")
    parser.add_argument("--delta", type=float, default=0.02, help="Stable tolerance: L <= (1+delta) L_min (default 0.02)")
    parser.add_argument("--delta2", type=float, default=0.1, help="Severe tolerance: L >= (1+delta2) L_min (default 0.1)")
    parser.add_argument("--pick", choices=("stable", "mild"), default="stable",
                        help="stable: lowest-loss Stable checkpoint; mild: first Mild checkpoint, else the stable pick")
    parser.add_argument("--x", choices=("step", "flops"), default="step", help="x axis of the plot (default step)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    parser.add_argument("--plot", metavar="PATH", default=None,
                        help="write the phase plot here (default: RUN_DIR/phases.png for a run folder, none for a file)")
    parser.add_argument("--no-plot", action="store_true", help="do not write a plot")
    parser.add_argument("--require-checkpoints", action="store_true",
                        help="for a metrics file: count only points with a complete checkpoint in the file's "
                             "folder/checkpoints (a run folder always does)")


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
# output


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
    if report.pick is None:
        where = "Stable" if report.pick_mode == "stable" else "Mild or Stable"
        return f"picked checkpoint: none (no {where} point has a checkpoint)"
    return f"picked checkpoint: step {report.pick} ({report.pick_phase.value})"


# --------------------------------------------------------------------------------------------


def run(args) -> int:
    from npu_retu.monitor.phases import build_report

    source = Path(args.source)
    if source.is_dir():
        run_dir, metrics_path = source, source / "metrics.jsonl"
        if not metrics_path.is_file():
            raise UserError(f"{source}: a run folder needs metrics.jsonl, and there is none")
    elif source.is_file():
        run_dir, metrics_path = None, source
    else:
        raise UserError(f"{source}: no such run folder or metrics file")

    points = read_validation_curve(metrics_path)
    if run_dir is not None or args.require_checkpoints:
        checkpoint_dir = (run_dir if run_dir is not None else metrics_path.parent) / "checkpoints"
        saved_steps = find_complete_checkpoints(checkpoint_dir)
        has_checkpoint = [p["step"] in saved_steps for p in points]
    else:
        checkpoint_dir, saved_steps = None, None
        has_checkpoint = [True] * len(points)

    report = build_report(
        [p["step"] for p in points], [p["flops"] for p in points], [p["loss"] for p in points], has_checkpoint,
        delta=args.delta, delta2=args.delta2, pick=args.pick,
    )

    plot_path = None if args.no_plot else (args.plot or (run_dir / "phases.png" if run_dir is not None else None))
    if plot_path is not None:
        from npu_retu.report.plots import plot_phases

        plot_path = plot_phases(report, plot_path, x=args.x, title=f"SFT sub-phases: {source.resolve().name}")

    if args.json:
        print(json.dumps({
            "metrics_file": str(metrics_path),
            "checkpoint_dir": None if checkpoint_dir is None else str(checkpoint_dir),
            "checkpoint_steps": None if saved_steps is None else sorted(saved_steps),
            "plot": None if plot_path is None else str(plot_path),
            **report.to_dict(),
        }, indent=2))
        return 0

    print(f"metrics: {metrics_path} ({len(points)} validation points)")
    if checkpoint_dir is not None:
        print(f"checkpoints: {len(saved_steps)} complete in {checkpoint_dir}")
    print(format_phase_table(report))
    if plot_path is not None:
        print(f"plot: {plot_path}")
    print(pick_line(report))
    return 0
