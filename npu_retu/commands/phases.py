"""``npu-retu phases``: label a run's SFT validation-loss curve (Eq. 13-17) and pick the RL start.

Input is a run folder (``RUN_DIR/metrics.jsonl`` plus complete checkpoints ``RUN_DIR/checkpoints/
step-<N>``) or a metrics JSONL file. Only rows with ``val/loss`` count; when a step appears twice
(a resumed run re-logs it) the last row wins.
"""

from __future__ import annotations

import json
from pathlib import Path

from npu_retu.errors import UserError
from npu_retu.report.phases import find_complete_checkpoints, format_phase_table, pick_line, read_validation_curve

HELP = "Label an SFT validation-loss curve with its sub-phases (Adaptive/Stable/Mild/Severe) and pick the checkpoint for RL."


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
