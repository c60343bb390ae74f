"""The plasticity table (paper Appendix D, Table 4) for people and spreadsheets: aligned text for a
terminal, Markdown for reports and CSV with unscaled FLOPs. The rows are
:class:`~npu_retu.ceiling.tables.PlasticityRow` (fitted in :mod:`npu_retu.ceiling.tables`)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from npu_retu.ceiling.tables import PlasticityRow

TABLE_COLUMNS = ("SFT data", "SFT step", "x_sft", "sub-phase", "P_sft", "PL_rl", "A_post", "C_mid", "B",
                 "LTS", "max P_post", "RMSE val", "R² fit")


def table_cells(rows: Sequence[PlasticityRow]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of Table 4. x_sft and C_mid share one FLOPs unit (named in the header), the
    largest that makes the biggest of them read >= 1; scores are in points (percent)."""
    from npu_retu.report.plots import flops_scale

    scale, unit = flops_scale([r.x_sft for r in rows] + [r.C_mid for r in rows if _finite(r.C_mid)])
    ci_level = next((r.ci_level for r in rows if r.a_ci is not None), None)
    header = list(TABLE_COLUMNS)
    header[2] = f"x_sft ({unit})"
    header[6] = f"A_post ({100 * ci_level:g}% CI)" if ci_level else "A_post"
    header[7] = f"C_mid ({unit})"
    body = []
    for r in rows:
        a_post = _number(r.A_post, 1)
        if r.a_ci is not None:
            a_post += f" [{r.a_ci[0]:.1f}, {r.a_ci[1]:.1f}]"
        body.append([
            r.dataset, str(r.sft_step), _number(r.x_sft / scale, 4, general=True), r.sub_phase or "-",
            _number(r.P_sft, 1), _number(r.PL_rl, 1), a_post, _number(r.C_mid / scale, 3, general=True),
            _number(r.B, 2), _lts_text(r), _number(r.max_P_post, 1), _number(r.rmse_val, 2), _number(r.r2_fit, 2),
        ])
    return header, body


def format_markdown(rows: Sequence[PlasticityRow]) -> str:
    """Table 4 as a Markdown table, with one footnote per branch whose fit failed."""
    header, body = table_cells(rows)
    alignment = ["---", "---:", "---:", ":---:"] + ["---:"] * 5 + [":---:"] + ["---:"] * 3  # text left, numbers right
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(alignment) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    lines += _failure_notes(rows)
    return "\n".join(lines)


def format_text(rows: Sequence[PlasticityRow]) -> str:
    """Table 4 as aligned plain text for a terminal."""
    header, body = table_cells(rows)
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    text_columns = (0, 3, 9)  # SFT data, sub-phase, LTS: left-aligned; numbers right-aligned

    def aligned(line: list[str]) -> str:
        cells = [cell.ljust(w) if i in text_columns else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths))]
        return "  ".join(cells).rstrip()

    return "\n".join([aligned(line) for line in [header] + body] + _failure_notes(rows))


def _failure_notes(rows: Sequence[PlasticityRow]) -> list[str]:
    notes = [f"* {r.name} ({r.dataset}, SFT step {r.sft_step}): fit failed: {r.error}" for r in rows if r.failed]
    return [""] + notes if notes else []


CSV_FIELDS = ("name", "dataset", "sft_step", "x_sft_flops", "sub_phase", "min_val_loss", "P_sft", "PL_rl", "A_post",
              "A_ci_low", "A_ci_high", "ci_level", "C_mid_flops", "B", "use_lts", "alpha", "method", "n_points",
              "n_outliers", "max_P_post", "rmse_val", "r2_fit", "error")


def write_csv(rows: Sequence[PlasticityRow], path: str | Path) -> Path:
    """Table 4 as CSV, FLOPs raw (``x_sft_flops``, ``C_mid_flops``), empty cells for missing values."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".tmp-{path.name}")
    with partial.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in rows:
            values = {
                "name": r.name, "dataset": r.dataset, "sft_step": r.sft_step, "x_sft_flops": r.x_sft,
                "sub_phase": r.sub_phase, "min_val_loss": r.min_val_loss, "P_sft": r.P_sft, "PL_rl": r.PL_rl,
                "A_post": r.A_post, "A_ci_low": None if r.a_ci is None else r.a_ci[0],
                "A_ci_high": None if r.a_ci is None else r.a_ci[1], "ci_level": r.ci_level, "C_mid_flops": r.C_mid,
                "B": r.B, "use_lts": r.use_lts, "alpha": r.alpha, "method": r.method, "n_points": r.n_points,
                "n_outliers": r.n_outliers, "max_P_post": r.max_P_post, "rmse_val": r.rmse_val, "r2_fit": r.r2_fit,
                "error": r.error,
            }
            writer.writerow({k: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v for k, v in values.items()})
    partial.replace(path)
    return path


def _lts_text(row: PlasticityRow) -> str:
    if row.use_lts is None:
        return "-"
    return f"yes (α={row.alpha:g})" if row.use_lts and row.alpha is not None else ("yes" if row.use_lts else "no")


def _number(value: float | None, digits: int, *, general: bool = False) -> str:
    if value is None or not _finite(value):
        return "-"
    return f"{value:.{digits}g}" if general else f"{value:.{digits}f}"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
