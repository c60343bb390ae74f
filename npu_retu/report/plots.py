"""PNG figures for run reports. For now: the SFT sub-phase plot (paper Figure 3's shading).

matplotlib is imported inside the plotting functions (Agg backend, no display needed), so importing
this module costs nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from npu_retu.errors import UserError
from npu_retu.monitor.phases import PhaseReport, SubPhase

# One colour per sub-phase, the same in every figure.
PHASE_COLOURS = {
    SubPhase.ADAPTIVE: "#9ecae1",  # blue: still learning
    SubPhase.STABLE: "#a1d99b",  # green: the paper's default switch point
    SubPhase.MILD: "#fdd0a2",  # orange: the "risky sweet spot"
    SubPhase.SEVERE: "#fc9272",  # red: plasticity collapse
    SubPhase.UNASSIGNED: "#d9d9d9",  # grey: in no set of Eq. 13-17
}
PHASE_TITLES = {
    SubPhase.ADAPTIVE: "Adaptive",
    SubPhase.STABLE: "Stable",
    SubPhase.MILD: "Mild overfitting",
    SubPhase.SEVERE: "Severe overfitting",
    SubPhase.UNASSIGNED: "Unassigned",
}

_FLOPS_UNITS = ((1e18, "exaFLOPs"), (1e15, "petaFLOPs"), (1e12, "teraFLOPs"), (1e9, "gigaFLOPs"))


def flops_scale(values: Sequence[float]) -> tuple[float, str]:
    """The divisor and unit name that make the largest of ``values`` read as a number >= 1."""
    largest = max((abs(v) for v in values), default=0.0)
    for scale, name in _FLOPS_UNITS:
        if largest >= scale:
            return scale, name
    return 1.0, "FLOPs"


def _span_edges(xs: list[float]) -> list[tuple[float, float]]:
    """Each point's shading span: halfway to its neighbours (the ends extend by half a gap)."""
    if len(xs) == 1:
        return [(xs[0] - 0.5, xs[0] + 0.5)]
    mids = [(a + b) / 2 for a, b in zip(xs, xs[1:])]
    left = [xs[0] - (mids[0] - xs[0])] + mids
    right = mids + [xs[-1] + (xs[-1] - mids[-1])]
    return list(zip(left, right))


def save_png(fig, path: str | Path) -> Path:
    """Save beside the target and rename, so a crash never leaves half a PNG under its name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".tmp-{path.name}")
    fig.savefig(partial, format="png")
    os.replace(partial, path)
    return path


def plot_phases(report: PhaseReport, path: str | Path, *, x: str = "step", title: str | None = None) -> Path:
    """Draw the validation-loss curve over its sub-phases and save it as a PNG; return the path.

    Background shading per sub-phase (Eq. 14-17), dotted lines at L_min, (1+δ)L_min and (1+δ2)L_min
    (Eq. 13's bands) and a star on the picked checkpoint. ``x`` is ``"step"`` or ``"flops"``.
    """
    if x not in ("step", "flops"):
        raise UserError(f"plot x axis must be 'step' or 'flops', got {x!r}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if x == "step":
        xs, x_label = [float(s) for s in report.steps], "SFT step"
    else:
        scale, unit = flops_scale(report.flops)
        xs, x_label = [f / scale for f in report.flops], f"SFT compute ({unit})"

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    try:
        for (left, right), phase in zip(_span_edges(xs), report.phases):
            ax.axvspan(left, right, color=PHASE_COLOURS[phase], alpha=0.6, linewidth=0)

        ax.plot(xs, report.losses, color="#08306b", marker="o", markersize=4, linewidth=1.5, label="validation loss")
        bands = (
            (report.L_min, "L_min", "#252525"),
            (report.thresholds["stable"], f"(1+δ)·L_min, δ={report.delta:g}", "#238b45"),
            (report.thresholds["severe"], f"(1+δ2)·L_min, δ2={report.delta2:g}", "#cb181d"),
        )
        for value, label, colour in bands:
            ax.axhline(value, linestyle=":", linewidth=1.2, color=colour, label=label)

        if report.pick is not None:
            index = report.steps.index(report.pick)
            ax.plot([xs[index]], [report.losses[index]], marker="*", markersize=16, color="#ffd700",
                    markeredgecolor="black", linestyle="none", zorder=5, label="picked checkpoint")
            ax.annotate(f"pick: step {report.pick} ({report.pick_phase.value})", (xs[index], report.losses[index]),
                        xytext=(10, 18), textcoords="offset points", fontsize=9,
                        arrowprops={"arrowstyle": "->", "linewidth": 0.8})

        # The four paper sub-phases are always in the legend so figures read alike; grey only when used.
        shown = [SubPhase.ADAPTIVE, SubPhase.STABLE, SubPhase.MILD, SubPhase.SEVERE]
        if SubPhase.UNASSIGNED in report.phases:
            shown.append(SubPhase.UNASSIGNED)
        handles, _ = ax.get_legend_handles_labels()
        handles += [Patch(color=PHASE_COLOURS[p], alpha=0.6, label=PHASE_TITLES[p]) for p in shown]
        ax.legend(handles=handles, fontsize=8, loc="upper right", framealpha=0.9)

        x_low, x_high = _span_edges(xs)[0][0], _span_edges(xs)[-1][1]
        if x_high > x_low:  # all-equal x (say, flops never logged as > 0) keeps matplotlib's limits
            ax.set_xlim(x_low, x_high)
        ax.set_xlabel(x_label)
        ax.set_ylabel("SFT validation loss")
        ax.set_title(title or f"SFT sub-phases (pick: {report.pick_mode})")
        ax.grid(alpha=0.25)
        fig.tight_layout()
        path = save_png(fig, path)
    finally:
        plt.close(fig)
    return path


def plot_rl_curve(evals: Sequence[dict], metrics_path: str | Path, path: str | Path, *, title: str | None = None) -> Path:
    """Reward and accuracy against RL compute: the training reward of every step (from
    ``metrics.jsonl``) and the held-out score of every evaluation point with its standard error."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    metrics_path = Path(metrics_path)
    if metrics_path.is_file():
        with metrics_path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if "rollout/accuracy" in row:
                    rows.append(row)
    all_flops = [r["flops"] for r in rows] + [e["flops"] for e in evals]
    scale, unit = flops_scale(all_flops)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    try:
        if rows:
            ax.plot([r["flops"] / scale for r in rows], [100 * r["rollout/accuracy"] for r in rows], color="#9ecae1",
                    linewidth=1.2, label="training rollouts: accuracy")
        if evals:
            e0 = evals[0]
            ax.errorbar([e["flops"] / scale for e in evals], [100 * e["avg_at_n"] for e in evals],
                        yerr=[100 * e["avg_at_n_stderr"] for e in evals], color="#08306b", marker="o", markersize=4, capsize=3,
                        label=f"held-out avg@{e0['n']} (T={e0['temperature']}, top-p={e0['top_p']}, {e0['num_problems']} problems) ± s.e.")
        ax.set_xlabel(f"RL compute ({unit})")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(title or "RL: accuracy vs compute")
        ax.grid(alpha=0.25)
        ax.legend(fontsize=8, loc="lower right", framealpha=0.9)
        fig.tight_layout()
        path = save_png(fig, path)
    finally:
        plt.close(fig)
    return path
