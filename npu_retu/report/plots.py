"""PNG figures for run reports: the SFT sub-phase plot (paper Figure 3's shading), the RL curve, and the
ceiling-fit figures (Eq. 11-12 fits, Figure 3 / 5 plasticity plots, the Figure 5a min-loss correlation).

matplotlib is imported inside the plotting functions (Agg backend, no display needed), so importing
this module costs nothing.
"""

from __future__ import annotations

import os
import re
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


# --------------------------------------------------------------------------------------------
# ceiling fits (paper §4.2, Appendix D, Figures 3 and 5)


def _compute_axis(values: Sequence[float], label: str) -> tuple[float, str]:
    """The divisor for a compute axis and its label with the unit; plain numbers below a gigaFLOP
    (a points file may give compute in any unit) keep the label as it is."""
    scale, unit = flops_scale(values)
    return (scale, f"{label} ({unit})") if scale > 1.0 else (1.0, label)


def _curve_xs(x_max: float, count: int = 300):
    """x values for drawing Eq. 11 from 0 to a little past the last point."""
    import numpy as np

    return np.linspace(0.0, 1.05 * x_max if x_max > 0 else 1.0, count)


def _point_groups(fit) -> dict[str, list[int]]:
    """Indices of the fit's (sorted) points: fit-split inliers, validation points, Stage-1 outliers
    and LTS-trimmed points (Appendix D.1-D.2)."""
    outliers, trimmed = set(fit.stage1_outliers), set(fit.lts_trimmed)
    fitted = [i for i, in_fit in enumerate(fit.fit_mask) if in_fit and i not in outliers and i not in trimmed]
    validation = [i for i, in_fit in enumerate(fit.fit_mask) if not in_fit]
    return {"fit": fitted, "validation": validation, "stage1": sorted(outliers), "lts": sorted(trimmed)}


def plot_ceiling_fit(fit, path: str | Path, *, title: str | None = None, x_label: str = "RL compute") -> Path:
    """One sigmoidal power-law fit (Eq. 11, or Eq. 12 with P_start fixed) and its points; return the path.

    Filled circles: fit-split inliers; hollow squares: the held-out validation split (Appendix D.1);
    red x: Stage-1 modified z-score outliers; grey x: points trimmed by LTS (Appendix D.2). The dashed
    line is the ceiling A, shaded over its bootstrap confidence interval when there is one.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs_data = list(fit.x)
    scale, axis_label = _compute_axis(xs_data, x_label)
    groups = _point_groups(fit)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    try:
        curve_x = _curve_xs(max(xs_data))
        start = "P_start fixed" if fit.p_start_fixed else "P_start fitted"
        unit = "" if scale == 1.0 else " " + flops_scale(xs_data)[1]
        ax.plot(curve_x / scale, fit.predict(curve_x), color="#08306b", linewidth=1.8,
                label=f"Eq. 11 fit ({start}): B={fit.B:.2f}, C_mid={fit.C_mid / scale:.3g}{unit}")
        styles = (
            ("fit", {"marker": "o", "color": "#2171b5", "linestyle": "none", "markersize": 6}, "fit split"),
            ("validation", {"marker": "s", "markerfacecolor": "none", "markeredgecolor": "#2171b5", "linestyle": "none",
                            "markersize": 7}, "validation split"),
            ("stage1", {"marker": "x", "color": "#cb181d", "linestyle": "none", "markersize": 8, "mew": 2},
             "Stage-1 outlier (modified z-score)"),
            ("lts", {"marker": "x", "color": "#969696", "linestyle": "none", "markersize": 8, "mew": 2}, "trimmed by LTS"),
        )
        for group, style, label in styles:
            indices = groups[group]
            if indices:
                ax.plot([fit.x[i] / scale for i in indices], [fit.y[i] for i in indices], label=label, **style)
        ceiling_label = f"A = {fit.A:.2f}"
        if fit.a_ci is not None:
            low, high = fit.a_ci
            ceiling_label += f" [{100 * fit.ci_level:g}% CI {low:.2f}, {high:.2f}]"
            ax.axhspan(low, high, color="#fd8d3c", alpha=0.15, linewidth=0)
        ax.axhline(fit.A, linestyle="--", color="#d94801", linewidth=1.3, label=ceiling_label)
        ax.set_xlabel(axis_label)
        ax.set_ylabel("score")
        ax.set_title(title or f"Ceiling fit: A = {fit.A:.2f}, PL = A - P_start = {fit.plasticity:.2f} ({fit.method})")
        ax.grid(alpha=0.25)
        ax.legend(fontsize=8, loc="lower right", framealpha=0.9)
        fig.tight_layout()
        path = save_png(fig, path)
    finally:
        plt.close(fig)
    return path


def plot_plasticity(
    path: str | Path,
    *,
    sft_curve: Sequence[tuple[float, float]] | None = None,
    branches: Sequence,
    fits: Sequence,
    phase_spans: Sequence[tuple[float, float, str]] | None = None,
    title: str | None = None,
) -> Path:
    """SFT-then-RL scaling like the paper's Figure 3 / Figure 5b-f; return the path.

    x is total compute x_sft + x_rl. ``sft_curve`` ((x_sft, score) points, e.g. each branch's P_sft)
    is the dashed black SFT trajectory; each branch (a :class:`~npu_retu.ceiling.tables.Branch`) is
    one colour of a viridis gradient by SFT step (lighter = later), the points its fit used filled,
    the others (validation split, Stage-1 outliers, LTS-trimmed) hollow, and its fitted Eq. 12 curve
    (``fits[i]``; None when the fit failed: points only, dotted) drawn from its start; each branch's
    SFT step is written at its start. ``phase_spans``
    ((x_start, x_end, sub-phase) over SFT compute) shade the SFT sub-phases (Eq. 14-17).
    """
    if len(branches) != len(fits):
        raise UserError(f"plot_plasticity: {len(branches)} branches but {len(fits)} fits")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    totals = [b.sft_flops + x for b in branches for x in b.rl_flops]
    totals += [x for x, _ in sft_curve or ()] + [end for _, end, _ in phase_spans or ()]
    scale, axis_label = _compute_axis(totals, "total compute x_sft + x_rl")
    steps = [b.sft_step for b in branches]
    low, high = min(steps, default=0), max(steps, default=0)
    colour_map = matplotlib.colormaps["viridis"]

    def colour(step: int):
        return colour_map(0.85 * (step - low) / (high - low) if high > low else 0.4)

    fig, ax = plt.subplots(figsize=(9, 5), dpi=120)
    try:
        shown_phases = []
        for start, end, phase in phase_spans or ():
            sub_phase = SubPhase(phase)
            ax.axvspan(start / scale, end / scale, color=PHASE_COLOURS[sub_phase], alpha=0.35, linewidth=0)
            if sub_phase not in shown_phases:
                shown_phases.append(sub_phase)
        if sft_curve:
            points = sorted(sft_curve)
            ax.plot([x / scale for x, _ in points], [y for _, y in points], linestyle="--", color="black",
                    marker=".", linewidth=1.3, label="SFT (P_sft)")
        for branch, fit in zip(branches, fits):
            c = colour(branch.sft_step)
            if fit is None:
                ax.plot([(branch.sft_flops + x) / scale for x in branch.rl_flops], branch.scores, marker="o",
                        markerfacecolor="none", color=c, linestyle=":", markersize=5)
            else:
                groups = _point_groups(fit)
                filled, hollow = groups["fit"], groups["validation"] + groups["stage1"] + groups["lts"]
                ax.plot([(branch.sft_flops + fit.x[i]) / scale for i in filled], [fit.y[i] for i in filled],
                        marker="o", color=c, linestyle="none", markersize=5)
                ax.plot([(branch.sft_flops + fit.x[i]) / scale for i in hollow], [fit.y[i] for i in hollow],
                        marker="o", markerfacecolor="none", markeredgecolor=c, linestyle="none", markersize=6)
                curve_x = _curve_xs(max(fit.x))
                ax.plot((branch.sft_flops + curve_x) / scale, fit.predict(curve_x), color=c, linewidth=1.5)
            ax.annotate("base" if branch.sft_step == 0 and branch.sft_flops == 0 else str(branch.sft_step),
                        (branch.sft_flops / scale, branch.scores[0]), xytext=(-4, 6), textcoords="offset points",
                        fontsize=8, fontweight="bold", ha="right")

        handles, _ = ax.get_legend_handles_labels()
        handles += [
            Line2D([], [], marker="o", color="#444444", linestyle="none", label="RL points (fit split)"),
            Line2D([], [], marker="o", markerfacecolor="none", markeredgecolor="#444444", linestyle="none",
                   label="RL points (validation / outliers)"),
            Line2D([], [], color="#444444", label="Eq. 12 fit per branch (colour: SFT step)"),
        ]
        handles += [Patch(color=PHASE_COLOURS[p], alpha=0.35, label=PHASE_TITLES[p]) for p in shown_phases]
        ax.legend(handles=handles, fontsize=8, loc="lower right", framealpha=0.9)
        ax.set_xlim(left=0)
        ax.set_xlabel(axis_label)
        ax.set_ylabel("score")
        ax.set_title(title or "SFT-then-RL: post-training ceiling vs compute")
        ax.grid(alpha=0.25)
        fig.tight_layout()
        path = save_png(fig, path)
    finally:
        plt.close(fig)
    return path


def plot_min_loss_correlation(correlation: dict, path: str | Path, *, title: str | None = None) -> Path:
    """Minimum SFT validation loss (x) against the best A_post (y), one labelled point per SFT dataset,
    with the least-squares line and Pearson r in the title (paper Figure 5a). ``correlation`` is
    :func:`~npu_retu.ceiling.tables.min_loss_correlation`'s result."""
    datasets = correlation.get("datasets") or []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    losses = [d["min_val_loss"] for d in datasets]
    ceilings = [d["best_A_post"] for d in datasets]
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    try:
        if not datasets:  # nothing to correlate, but a report that links the figure still gets one
            ax.text(0.5, 0.5, "no SFT dataset with a validation loss and a fitted A_post", ha="center",
                    va="center", transform=ax.transAxes)
        ax.plot(losses, ceilings, marker="o", color="#08306b", linestyle="none", markersize=7)
        for d in datasets:
            ax.annotate(d["dataset"], (d["min_val_loss"], d["best_A_post"]), xytext=(5, 5), textcoords="offset points",
                        fontsize=9)
        if correlation.get("slope") is not None:
            line_x = np.linspace(min(losses), max(losses), 50)
            ax.plot(line_x, correlation["slope"] * line_x + correlation["intercept"], color="#cb181d", linewidth=1.2,
                    label=f"least squares: A_post = {correlation['slope']:.3g} · L_min + {correlation['intercept']:.3g}")
            ax.legend(fontsize=8, framealpha=0.9)
        r = correlation.get("r")
        r_text = f"Pearson r = {r:.2f} (p = {correlation['p_value']:.2g})" if r is not None else "Pearson r: n/a"
        ax.set_title(title or f"Min SFT validation loss vs post-training ceiling: {r_text}", fontsize=10)
        if datasets:
            ax.margins(x=0.15, y=0.15)  # room for the dataset labels
        ax.set_xlabel("minimum SFT validation loss")
        ax.set_ylabel("best A_post")
        ax.grid(alpha=0.25)
        fig.tight_layout()
        path = save_png(fig, path)
    finally:
        plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# the figures of ``npu-retu fit --plot``


def tagged_path(path: Path, tag: str) -> Path:
    """``PATH-<tag>.png`` beside ``PATH`` (tag reduced to safe file-name characters)."""
    safe = re.sub(r"[^A-Za-z0-9._+-]+", "_", tag).strip("_") or "plot"
    return path.with_name(f"{path.stem}-{safe}{path.suffix or '.png'}")


def draw_branch_plots(path: Path, branches, rows, correlation) -> tuple[list[str], str | None]:
    """The figures for RL branches: the fit of a lone branch; else one SFT-then-RL plot per SFT
    dataset (Pure-RL branches appear in each, starting from the base) and the Figure 5a correlation.

    Returns (written paths, a note when a requested figure could not be drawn).
    """
    from npu_retu.ceiling.tables import sft_phase_spans

    if len(branches) == 1:
        if rows[0].fit is None:
            return [], f"no plot: the fit of {rows[0].name} failed ({rows[0].error})"
        title = f"Eq. 12 fit: {rows[0].name} ({rows[0].dataset}, SFT step {rows[0].sft_step})"
        return [str(plot_ceiling_fit(rows[0].fit, path, title=title))], None

    fit_of = {id(branch): row.fit for branch, row in zip(branches, rows)}  # rows[i] is branches[i]
    pure_rl = [b for b in branches if b.is_pure_rl]
    datasets = sorted({b.dataset for b in branches if not b.is_pure_rl})
    groups = [(d, [b for b in branches if b.dataset == d] + pure_rl) for d in datasets] or [("Pure-RL", pure_rl)]
    written = []
    for dataset, group in groups:
        target = path if len(groups) == 1 else tagged_path(path, dataset)
        sft_runs = [b.sft_run for b in group if b.sft_run]
        spans = None
        if sft_runs:
            try:
                spans = sft_phase_spans(max(set(sft_runs), key=sft_runs.count))
            except UserError:
                spans = None  # the table already read phases.json; a plot goes on without shading
        sft_curve = sorted((b.sft_flops, b.p_sft) for b in group)
        written.append(str(plot_plasticity(
            target, sft_curve=sft_curve, branches=group, fits=[fit_of[id(b)] for b in group], phase_spans=spans,
            title=f"SFT-then-RL on {dataset}: Eq. 12 fits per SFT checkpoint",
        )))
    if correlation is not None and len(correlation["datasets"]) >= 2:
        written.append(str(plot_min_loss_correlation(correlation, tagged_path(path, "min-loss"))))
    return written, None
