"""The text of ``npu-retu fit``: a fit's parameters and points as lines, the minimum-loss predictor
as lines, and the points files' fits as a Markdown table and a CSV. (The plasticity table of RL
branches is :mod:`npu_retu.report.plasticity_table`.)"""

from __future__ import annotations

import csv
from pathlib import Path


def describe_fit(fit, *, x_unit_values=None) -> list[str]:
    """Human lines for one fit: parameters, plasticity, interval, goodness and the points' fate."""
    from npu_retu.report.plots import flops_scale

    scale, unit = flops_scale(fit.x if x_unit_values is None else x_unit_values)
    c_mid = f"{fit.C_mid:.4g}" + (f" ({fit.C_mid / scale:.4g} {unit})" if scale > 1 else "")
    ci = f"  [{100 * fit.ci_level:g}% CI {fit.a_ci[0]:.2f}, {fit.a_ci[1]:.2f}]" if fit.a_ci is not None else ""
    n_val = len(fit.x) - fit.n_fit
    if fit.method == "robust":
        method = f"robust: Stage 1 modified z-score (tau={fit.tau:g})"
        method += f", Stage 2 LTS (alpha={fit.alpha:g}, h={fit.lts_h})" if fit.use_lts else ", no LTS"
    else:
        method = "least squares (not robust)"
    lines = [
        f"  A (ceiling)        {fit.A:.2f}{ci}",
        f"  P_start            {fit.P_start:.2f} ({'fixed' if fit.p_start_fixed else 'fitted'})",
        f"  PL = A - P_start   {fit.plasticity:.2f}",
        f"  B                  {fit.B:.3g}",
        f"  C_mid              {c_mid}",
        f"  method             {method}",
        f"  points             {len(fit.x)}: {fit.n_fit} fit ({sum(fit.inlier_mask)} inliers; dropped: "
        f"{len(fit.stage1_outliers)} by Stage 1, {len(fit.lts_trimmed)} by LTS), {n_val} validation",
        f"  RMSE val           {'-' if fit.rmse_val is None else f'{fit.rmse_val:.3f}'}",
        f"  R² fit             {fit.r2_fit:.3f}",
    ]
    lines += [f"  note: {note}" for note in fit.notes]
    return lines


def describe_correlation(correlation: dict) -> list[str]:
    """Human lines for :func:`~npu_retu.ceiling.tables.min_loss_correlation`."""
    lines = ["minimum SFT validation loss vs best A_post per SFT dataset (§6.2.2, Figure 5a):",
             f"  {'SFT data':<24} {'L_min':>8} {'best A_post':>11}  (SFT step)"]
    for d in correlation["datasets"]:
        lines.append(f"  {d['dataset']:<24} {d['min_val_loss']:>8.4f} {d['best_A_post']:>11.2f}  ({d['best_sft_step']})")
    if correlation["r"] is not None:
        lines.append(f"  Pearson r = {correlation['r']:.3f} (p = {correlation['p_value']:.3g}, {correlation['n']} datasets)")
    else:
        lines.append(f"  Pearson r: n/a ({correlation['reason']})")
    return lines


POINTS_CSV_FIELDS = ("input", "equation", "n_points", "P_start", "A", "A_ci_low", "A_ci_high", "ci_level", "PL", "C_mid",
                     "B", "method", "use_lts", "alpha", "n_stage1_outliers", "n_lts_trimmed", "rmse_val", "r2_fit")


def points_record(path: Path, fit) -> dict:
    """One points file's fit as a flat record: a row of the CSV and of the Markdown table."""
    return {
        "input": str(path), "equation": "Eq. 12" if fit.p_start_fixed else "Eq. 11", "n_points": len(fit.x),
        "P_start": fit.P_start, "A": fit.A, "A_ci_low": None if fit.a_ci is None else fit.a_ci[0],
        "A_ci_high": None if fit.a_ci is None else fit.a_ci[1], "ci_level": fit.ci_level, "PL": fit.plasticity,
        "C_mid": fit.C_mid, "B": fit.B, "method": fit.method, "use_lts": fit.use_lts, "alpha": fit.alpha,
        "n_stage1_outliers": len(fit.stage1_outliers), "n_lts_trimmed": len(fit.lts_trimmed),
        "rmse_val": fit.rmse_val, "r2_fit": fit.r2_fit,
    }


def points_markdown(records: list[dict]) -> str:
    """The fits of points files as a Markdown table, one row per file."""

    def number(value, spec):
        return "-" if value is None else format(value, spec)

    lines = ["| input | eq. | points | P_start | PL | A (CI) | C_mid | B | method | LTS | outliers | RMSE val | R² fit |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|"]
    for r in records:
        ci = "" if r["A_ci_low"] is None else f" [{r['A_ci_low']:.2f}, {r['A_ci_high']:.2f}]"
        lts = f"yes (α={r['alpha']:g})" if r["use_lts"] else "no"
        lines.append(
            f"| {r['input']} | {r['equation']} | {r['n_points']} | {r['P_start']:.2f} | {r['PL']:.2f} | {r['A']:.2f}{ci} "
            f"| {r['C_mid']:.4g} | {r['B']:.3g} | {r['method']} | {lts} | {r['n_stage1_outliers'] + r['n_lts_trimmed']} "
            f"| {number(r['rmse_val'], '.3f')} | {r['r2_fit']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def write_points_csv(path: Path, records: list[dict]) -> None:
    """The records of :func:`points_record` as CSV (empty cells for missing values)."""
    fields = POINTS_CSV_FIELDS
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for record in records:
            writer.writerow({k: "" if record[k] is None else record[k] for k in fields})


def write_text(path: Path, text: str) -> None:
    """``text`` to the file the user named (any path, even /dev/stdout: no temporary file beside it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
