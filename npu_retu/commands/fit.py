"""``npu-retu fit``: fit the sigmoidal power law (paper §4.2, Eq. 11-12) robustly (Appendix D).

Each input is one of:

* a **points file**: CSV with a header holding ``compute`` (or ``flops``) and ``score`` columns, or
  JSON: a list of ``{"compute" | "flops": ..., "score": ...}`` objects, or ``{"points": [...]}``.
  Fitted with Eq. 11 (P_start fitted), or Eq. 12 when ``--p-start`` fixes the start.
* an **RL run folder** (holds ``evals.json``; an ``evals.json`` file stands for its folder): one
  branch, fitted with Eq. 12, P_start fixed to its score at RL step 0 (P_sft).
* a **folder of RL runs** (every ``evals.json`` below it, e.g. a pipeline run's ``RUN/rl`` or an
  experiment folder with one RL branch per SFT checkpoint): every branch, as the plasticity table
  (Appendix D, Table 4), plus the minimum-validation-loss predictor (§6.2.2, Figure 5a) when the
  branches come from >= 2 SFT datasets.

Points files and RL runs are not mixed in one call: they answer different questions.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

from npu_retu.errors import UserError

HELP = ("Fit the sigmoidal power law (Eq. 11/12, robust per Appendix D) to (compute, score) points or RL runs: "
        "ceiling A, plasticity, and the Table 4 plasticity table.")

COMPUTE_COLUMNS = ("compute", "flops")  # the first one present is used
SCORE_COLUMN = "score"


def add_arguments(parser) -> None:
    parser.add_argument(
        "inputs", nargs="+", metavar="POINTS_or_RUN_DIR",
        help="a points file (.csv with 'compute' or 'flops' and 'score' columns, or .json), an RL run folder "
             "(has evals.json) or a folder with RL runs below it; several of one kind may be given",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument(
        "--plot", metavar="PATH", default=None,
        help="write a PNG: the fit and its points for one points file or one RL branch; for several branches the "
             "SFT-then-RL plot (Figure 3 / 5) - one per SFT dataset as PATH-<dataset>.png when there are several, "
             "plus PATH-min-loss.png (Figure 5a) when >= 2 datasets have a fitted ceiling; several points files "
             "give PATH-<file>.png each",
    )
    parser.add_argument("--csv", metavar="PATH", default=None, help="write the table as CSV (FLOPs unscaled)")
    parser.add_argument("--markdown", metavar="PATH", default=None, help="write the table as Markdown")
    parser.add_argument(
        "--p-start", type=float, default=None, metavar="X",
        help="points files only: fix P_start to X (Eq. 12) instead of fitting it (Eq. 11); RL branches always fix "
             "it to their score at RL step 0",
    )
    parser.add_argument("--fit-fraction", type=float, default=0.85, metavar="F",
                        help="share of the points (by compute) in the fit split, the rest validate (default 0.85)")
    parser.add_argument("--tau", type=float, default=3.5, metavar="T",
                        help="Stage-1 cutoff on the modified z-score |M_i| (Eq. 29; default 3.5)")
    lts = parser.add_mutually_exclusive_group()
    lts.add_argument("--alpha", type=float, default=0.85, metavar="A",
                     help="Stage-2 least trimmed squares keeps h = floor(A * N_fit) points (Eq. 30; default 0.85)")
    lts.add_argument("--no-lts", action="store_true", help="skip Stage 2 (least trimmed squares): Stage 1 only")
    parser.add_argument("--no-robust", action="store_true",
                        help="plain least squares on the whole fit split (no Stage 1, no Stage 2)")
    parser.add_argument("--bootstrap", type=int, default=200, metavar="N",
                        help="bootstrap resamples for the confidence interval of A (0: none; default 200)")
    parser.add_argument("--max-score", type=float, default=None, metavar="S",
                        help="upper bound for the ceiling A (e.g. 100 for percent scores)")
    parser.add_argument("--benchmark", default=None, metavar="NAME",
                        help="RL runs evaluated on several benchmarks: fit this benchmark's avg@n, or 'macro' for the macro "
                             "average (default: avg@n over all problems)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="seed of the random LTS starts and the bootstrap (default 0)")


# --------------------------------------------------------------------------------------------
# inputs


def classify_inputs(paths: list[str]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(points files, RL run folders with a display name) for the command's inputs.

    A folder is one RL run when it holds ``evals.json``, else every folder below it that holds one is
    an RL run (named by its path under the given folder). Raises :class:`UserError` for a missing
    path, a folder without any evaluation, or points files mixed with RL runs.
    """
    points_files: list[Path] = []
    runs: dict[Path, tuple[Path, str]] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_file() and path.name == "evals.json":
            path = path.parent
        if path.is_file():
            if path.suffix.lower() not in (".csv", ".json"):
                raise UserError(f"{path}: a points file must be .csv or .json")
            points_files.append(path)
        elif path.is_dir():
            found = [path] if (path / "evals.json").is_file() else sorted(p.parent for p in path.rglob("evals.json"))
            if not found:
                raise UserError(f"{path}: no evals.json in it or below it: not an RL run folder or a folder of RL runs")
            for folder in found:
                name = _run_name(folder) if folder == path else folder.relative_to(path).as_posix()
                runs.setdefault(folder.resolve(), (folder, name))
        else:
            raise UserError(f"{path}: no such points file or run folder")
    if points_files and runs:
        raise UserError("give either points files or RL run folders, not both "
                        f"(points: {', '.join(map(str, points_files))})")
    return points_files, list(runs.values())


def _run_name(folder: Path) -> str:
    """An RL folder's name; a pipeline's generic ``rl`` gets its run's name in front (``demo/rl``)."""
    resolved = folder.resolve()
    return f"{resolved.parent.name}/{resolved.name}" if resolved.name == "rl" and resolved.parent.name else resolved.name


def read_points(path: Path) -> tuple[list[float], list[float]]:
    """(compute, score) of a points file; :class:`UserError` naming the file, row and field when bad."""
    if path.suffix.lower() == ".csv":
        return _read_points_csv(path)
    return _read_points_json(path)


def _read_points_csv(path: Path) -> tuple[list[float], list[float]]:
    with path.open(encoding="utf-8-sig", newline="") as f:  # -sig: spreadsheets often start with a BOM
        lines = [(number, row) for number, row in enumerate(csv.reader(f), start=1) if any(c.strip() for c in row)]
    if not lines:
        raise UserError(f"{path}: empty; expected a header with 'compute' (or 'flops') and 'score', then one row per point")
    header = [name.strip().lower() for name in lines[0][1]]
    compute_column = next((c for c in COMPUTE_COLUMNS if c in header), None)
    if compute_column is None or SCORE_COLUMN not in header:
        raise UserError(f"{path}: the header needs a 'compute' (or 'flops') column and a 'score' column; "
                        f"found {', '.join(repr(h) for h in header)}")
    compute_at, score_at = header.index(compute_column), header.index(SCORE_COLUMN)
    compute, scores = [], []
    for row_number, (line_number, cells) in enumerate(lines[1:], start=1):
        where = f"{path} row {row_number} (line {line_number})"
        compute.append(_csv_number(cells, compute_at, compute_column, where))
        scores.append(_csv_number(cells, score_at, SCORE_COLUMN, where))
    if not compute:
        raise UserError(f"{path}: a header but no points")
    return compute, scores


def _csv_number(cells: list[str], index: int, column: str, where: str) -> float:
    if index >= len(cells) or not cells[index].strip():
        raise UserError(f"{where}: field '{column}' is empty")
    text = cells[index].strip()
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{where}: field '{column}': {text!r} is not a number") from None
    if not math.isfinite(value):
        raise UserError(f"{where}: field '{column}': {text!r} is not a finite number")
    return value


def _read_points_json(path: Path) -> tuple[list[float], list[float]]:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    points = payload.get("points") if isinstance(payload, dict) else payload
    if not isinstance(points, list) or not points:
        raise UserError(f"{path}: expected a non-empty list of {{\"compute\", \"score\"}} objects, or {{\"points\": [...]}}")
    compute, scores = [], []
    for number, point in enumerate(points, start=1):
        where = f"{path} entry {number}"
        if not isinstance(point, dict):
            raise UserError(f"{where}: expected an object with 'compute' (or 'flops') and 'score', got {point!r}")
        compute_key = next((c for c in COMPUTE_COLUMNS if c in point), None)
        if compute_key is None:
            raise UserError(f"{where}: field 'compute' (or 'flops') is missing")
        compute.append(_json_number(point, compute_key, where))
        scores.append(_json_number(point, SCORE_COLUMN, where))
    return compute, scores


def _json_number(point: dict, key: str, where: str) -> float:
    if key not in point:
        raise UserError(f"{where}: field '{key}' is missing")
    value = point[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where}: field '{key}': {value!r} is not a finite number")
    return float(value)


# --------------------------------------------------------------------------------------------
# fit settings


def fit_options(args) -> dict:
    """``fit_ceiling`` keyword arguments from the command line (checked here so that a bad setting is
    one error, not one failed fit per branch)."""
    if not 0 < args.fit_fraction <= 1:
        raise UserError(f"--fit-fraction must be in (0, 1], got {args.fit_fraction}")
    if not args.tau > 0:
        raise UserError(f"--tau must be > 0, got {args.tau}")
    if not args.no_lts and not 0 < args.alpha <= 1:
        raise UserError(f"--alpha must be in (0, 1], got {args.alpha}")
    if args.bootstrap < 0:
        raise UserError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    for flag, value in (("--max-score", args.max_score), ("--p-start", args.p_start)):
        if value is not None and not math.isfinite(value):
            raise UserError(f"{flag} must be a finite number, got {value}")
    return {
        "robust": not args.no_robust,
        "fit_fraction": args.fit_fraction,
        "tau": args.tau,
        "alpha": None if args.no_lts else args.alpha,
        "bootstrap": args.bootstrap,
        "max_score": args.max_score,
        "seed": args.seed,
    }


# --------------------------------------------------------------------------------------------
# points files


def run_points(files: list[Path], args, options: dict) -> int:
    from npu_retu.ceiling.fit import CeilingFitError, fit_ceiling
    from npu_retu.ceiling.tables import json_safe
    from npu_retu.report.fit_text import describe_fit, points_markdown, points_record, write_points_csv, write_text

    fits = []
    for path in files:
        compute, scores = read_points(path)
        try:
            fits.append(fit_ceiling(compute, scores, p_start=args.p_start, **options))
        except CeilingFitError as e:
            raise UserError(f"{path}: cannot fit: {e}") from None

    plots = []
    if args.plot:
        from npu_retu.report.plots import plot_ceiling_fit, tagged_path

        for path, fit in zip(files, fits):
            target = Path(args.plot) if len(files) == 1 else tagged_path(Path(args.plot), path.stem)
            plots.append(str(plot_ceiling_fit(fit, target, title=f"Ceiling fit: {path.name}", x_label="compute")))
    records = [points_record(path, fit) for path, fit in zip(files, fits)]
    if args.csv:
        write_points_csv(Path(args.csv), records)
    if args.markdown:
        write_text(Path(args.markdown), points_markdown(records))

    if args.json:
        print(json.dumps(json_safe({
            "fits": [{"input": str(path), "equation": record["equation"], **fit.to_dict()}
                     for path, record, fit in zip(files, records, fits)],
            "plots": plots, "csv": args.csv, "markdown": args.markdown,
        }), indent=2))
        return 0
    for path, fit in zip(files, fits):
        equation = f"Eq. 12, P_start fixed at {fit.P_start:g}" if fit.p_start_fixed else "Eq. 11, P_start fitted"
        print(f"{path}: {len(fit.x)} points ({equation})")
        print("\n".join(describe_fit(fit)))
    _print_outputs(plots, args)
    return 0


# --------------------------------------------------------------------------------------------
# RL runs: the plasticity table


def run_branches(runs: list[tuple[Path, str]], args, options: dict) -> int:
    from npu_retu.ceiling.tables import (
        branch_from_rl_run, branch_sort_key, json_safe, min_loss_correlation, plasticity_rows, rows_to_json,
    )
    from npu_retu.report.fit_text import describe_correlation, describe_fit, write_text
    from npu_retu.report.plasticity_table import format_markdown, format_text, write_csv
    from npu_retu.report.plots import draw_branch_plots

    if args.p_start is not None:
        raise UserError("--p-start is for points files: an RL branch's P_start is fixed to its score at RL step 0 (Eq. 12)")
    branches = sorted((branch_from_rl_run(folder, name=name, benchmark=args.benchmark) for folder, name in runs),
                      key=branch_sort_key)
    rows = plasticity_rows(branches, **options)  # rows[i] is branches[i]
    sft_datasets = {b.dataset for b in branches if not b.is_pure_rl}
    correlation = min_loss_correlation(rows) if len(sft_datasets) >= 2 else None

    plots, plot_note = [], None
    if args.plot:
        plots, plot_note = draw_branch_plots(Path(args.plot), branches, rows, correlation)
    if args.csv:
        write_csv(rows, args.csv)
    if args.markdown:
        text = format_markdown(rows) + "\n"
        if correlation is not None:
            text += "\n" + "\n".join(describe_correlation(correlation)) + "\n"
        write_text(Path(args.markdown), text)

    if args.json:
        print(json.dumps({"rows": rows_to_json(rows), "correlation": json_safe(correlation), "plots": plots,
                          "plot_note": plot_note, "csv": args.csv, "markdown": args.markdown}, indent=2))
    else:
        print(f"{len(rows)} RL branch{'es' if len(rows) != 1 else ''}; each fitted with Eq. 12 "
              "(P_start fixed to P_sft, its score at RL step 0); scores in points:")
        print(format_text(rows))
        if len(rows) == 1 and rows[0].fit is not None:
            print("\n".join(describe_fit(rows[0].fit)))
        if correlation is not None:
            print()
            print("\n".join(describe_correlation(correlation)))
        _print_outputs(plots, args)
    if plot_note:
        print(f"npu-retu fit: {plot_note}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------------------------
# output helpers


def _print_outputs(plots: list[str], args) -> None:
    for plot in plots:
        print(f"plot: {plot}")
    if args.csv:
        print(f"csv: {args.csv}")
    if args.markdown:
        print(f"markdown: {args.markdown}")


def run(args) -> int:
    options = fit_options(args)
    points_files, runs = classify_inputs(args.inputs)
    if points_files:
        if args.benchmark:
            raise UserError("--benchmark picks a score of RL runs' evaluations; a points file has one score column")
        return run_points(points_files, args, options)
    return run_branches(runs, args, options)
