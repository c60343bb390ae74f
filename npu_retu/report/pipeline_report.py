"""``RUN/report.md`` of the SFT-then-RL pipeline: the SFT phase table, the RL evaluation curve and
the start-vs-end comparison, with the figures beside it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from npu_retu.report.markdown import write_text_atomic


def write_report(root: Path, cfg, sft_done: dict[str, Any], rl, comparison: dict[str, Any]) -> Path:
    """``report.md`` with the SFT phase table, the RL evaluation curve and the start-vs-end comparison."""
    from npu_retu.monitor.phases import build_report
    from npu_retu.report.phases import format_phase_table

    lines = [f"# Run report: {cfg.run.name}", ""]
    phases_file = root / "sft" / "phases.json"
    lines += ["## SFT with the phase monitor", ""]
    lines.append(f"SFT compute: {sft_done['flops']:.4g} FLOPs over {sft_done['steps']} steps; picked checkpoint: step {sft_done['picked_step']}.")
    if phases_file.is_file():
        saved = json.loads(phases_file.read_text(encoding="utf-8"))
        report = build_report(
            saved["steps"], saved["flops"], saved["losses"], saved["has_checkpoint"],
            delta=saved["delta"], delta2=saved["delta2"], pick=saved["pick_mode"],
        )
        lines += _switch_lines(cfg, sft_done, saved.get("first_online_decision"))
        lines += ["", "```", format_phase_table(report), "```", "", "![validation loss](sft/phases.png)"]
    lines += ["", f"## RL ({cfg.rl.algorithm}) from the picked checkpoint", ""]
    lines.append(f"RL compute: {rl.flops:.4g} FLOPs over {rl.steps} steps (Appendix C, Eq. 22).")
    if rl.evals:
        lines += ["", "| RL step | RL FLOPs | score | ± s.e. | n | T | top-p | max tokens | problems |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for e in rl.evals:
            lines.append(
                f"| {e['step']} | {e['flops']:.4g} | {100 * e['avg_at_n']:.2f}% | {100 * e['avg_at_n_stderr']:.2f} | {e['n']} | {e['temperature']} "
                f"| {e['top_p']} | {e['max_new_tokens']} | {e['num_problems']} |"
            )
    if comparison:
        c = comparison
        s, e = c["start"], c["end"]
        lines += [
            "",
            "### Held-out accuracy: the SFT checkpoint vs the end of RL",
            "",
            f"* start (RL step {c['start_step']}, the SFT checkpoint): avg@{s['n']} = {100 * s['avg_at_n']:.2f}% ± {100 * s['avg_at_n_stderr']:.2f}",
            f"* end (RL step {c['end_step']}): avg@{e['n']} = {100 * e['avg_at_n']:.2f}% ± {100 * e['avg_at_n_stderr']:.2f}",
            f"* difference (paired over {e['num_problems']} problems): {100 * c['difference']:+.2f} points, "
            f"standard error {100 * c['stderr']:.2f}, {_z_text(c['z'])} standard errors",
            f"* sampling: n = {e['n']} per problem, temperature {e['temperature']}, top-p {e['top_p']}, max {e['max_new_tokens']} new tokens",
        ]
    try:
        from npu_retu.report.plots import plot_rl_curve

        plot_rl_curve(rl.evals, root / "rl" / "metrics.jsonl", root / "rl_curve.png", title=f"RL from the SFT pick: {cfg.run.name}")
        lines += ["", "![RL curve](rl_curve.png)"]
    except Exception as exc:  # a plot must never lose a finished run
        lines += ["", f"(could not draw rl_curve.png: {exc})"]
    return write_text_atomic(root / "report.md", "\n".join(lines) + "\n")


def _switch_lines(cfg, sft_done: dict[str, Any], decision: dict[str, Any] | None) -> list[str]:
    """What the online monitor decided, and the SFT compute its stop left unspent (Section 4's point:
    switch at the Stable / Mild sub-phase instead of training the whole budget)."""
    if decision is None:
        return ["", f"The online monitor made no switch decision within the {cfg.sft.max_steps}-step budget."]
    lines = ["", f"The online monitor decided to {decision['action']} at step {decision['step']} "
                 f"({decision['phase']}): {decision['reason']}"]
    steps, budget = int(sft_done["steps"]), int(cfg.sft.max_steps)
    if cfg.monitor.stop_on_decision and 0 < steps < budget:
        unspent = (budget - steps) * float(sft_done["flops"]) / steps
        lines.append(
            f"SFT stopped there (monitor.stop_on_decision): {steps} of {budget} steps, so about {unspent:.4g} FLOPs, "
            f"{100 * (budget - steps) / budget:.0f} % of the budget's SFT compute, were not spent "
            "(at this run's mean FLOPs per step). The labels below are the offline labels of the points seen so far."
        )
    return lines


def _z_text(z: float | None) -> str:
    return "n/a" if z is None else f"{z:.1f}"
