"""The plasticity table (paper Appendix D, Table 4) and the minimum-loss predictor (Figure 5a).

A *branch* is one RL run started from one SFT checkpoint (or from the base model: Pure-RL). Each
branch is fitted with Eq. 12, the sigmoidal power law of Eq. 11 with its start fixed to the score of
the SFT checkpoint:

    P_post(x_sft, x_rl) = P_sft(x_sft) + (A_post - P_sft(x_sft)) / (1 + (x_rl / C_mid)^(-B))    (Eq. 12)

which gives one row of Table 4: the SFT data, the SFT step and compute x_sft, the SFT sub-phase of
the checkpoint (§6.2.1, Eq. 13-17), P_sft, the RL plasticity PL_rl = A_post - P_sft, the
post-training ceiling A_post, C_mid, B and whether Least Trimmed Squares was used (Appendix D.2).

§6.2.2 ("Minimum Validation Loss as a Predictive Indicator", Figure 5a) correlates each SFT
dataset's minimum validation loss with the best A_post reached from it (Pearson r = -0.90 in the
paper); :func:`min_loss_correlation` computes that.

An RL run folder, as ``npu_retu/trainer/rl.py`` writes it, holds ``evals.json`` (one entry per
evaluation: ``step``, cumulative RL ``flops``, ``avg_at_n`` as a fraction, ``avg_at_n_stderr``) and
``config.yaml`` whose ``model.path`` is the checkpoint RL started from. When that path is
``<SFT_RUN>/checkpoints/step-N``, the SFT run's ``phases.json`` gives x_sft, the sub-phase and L_min.

The table as terminal text, Markdown and CSV is :mod:`npu_retu.report.plasticity_table`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from npu_retu.errors import UserError, integer_field, number_field

PURE_RL_DATASET = "-"  # the "SFT data" of a branch started from the base model (Table 4, first row)
EVALS_FILE = "evals.json"
CONFIG_FILE = "config.yaml"
PHASES_FILE = "phases.json"
_CHECKPOINT_NAME = re.compile(r"step-(\d+)")


@dataclass
class Branch:
    """One RL run started from one SFT checkpoint, or from the base model (Pure-RL).

    ``rl_flops`` and ``scores`` are the evaluation points (scores in percent); the first point is RL
    step 0, whose score is P_sft, the fixed start of Eq. 12.
    """

    name: str
    dataset: str  # SFT data label; PURE_RL_DATASET ("-") for Pure-RL from the base model
    sft_step: int
    sft_flops: float  # x_sft; 0 for Pure-RL
    sub_phase: str | None  # SFT sub-phase of the checkpoint (adaptive/stable/mild/severe); None for the base
    min_val_loss: float | None  # L_min of the SFT run
    rl_flops: list[float]
    scores: list[float]
    score_stderr: list[float] | None = None
    rl_run: str | None = None  # the RL run folder this branch was read from
    sft_run: str | None = None  # the SFT run folder of its checkpoint (holds phases.json)

    @property
    def is_pure_rl(self) -> bool:
        """Started from the base model: no SFT compute (Table 4's first row)."""
        return self.dataset == PURE_RL_DATASET or (self.sft_step == 0 and self.sft_flops == 0)

    @property
    def p_sft(self) -> float:
        """P_sft(x_sft): the score at RL step 0."""
        return self.scores[0]


# --------------------------------------------------------------------------------------------
# reading RL and SFT run folders


def branch_from_rl_run(rl_dir: str | Path, *, dataset: str | None = None, name: str | None = None,
                       benchmark: str | None = None) -> Branch:
    """Read one RL run folder into a :class:`Branch`.

    ``evals.json`` gives the evaluation points; ``config.yaml``'s ``model.path`` names the start.
    A path of the form ``<SFT_RUN>/checkpoints/step-N`` makes a branch from SFT step N, with x_sft,
    the sub-phase at N and L_min read from ``<SFT_RUN>/phases.json``; any other path (``embedded:base``,
    a Hugging Face model) makes a Pure-RL branch. ``dataset`` defaults to the SFT run's training
    files (``data.train_files`` of its config.yaml) and ``name`` to the RL folder's name;
    ``benchmark`` picks the score (see :func:`read_evals`).
    Raises :class:`UserError` naming the file and field for anything missing or malformed.
    """
    rl_dir = Path(rl_dir)
    if not rl_dir.is_dir():
        raise UserError(f"{rl_dir}: no such RL run folder")
    rl_flops, scores, stderrs = read_evals(rl_dir / EVALS_FILE, benchmark)
    model_path = _model_path(rl_dir / CONFIG_FILE)
    name = name or rl_dir.name

    sft_reference = _split_checkpoint_path(model_path)
    if sft_reference is None:
        return Branch(
            name=name, dataset=dataset or PURE_RL_DATASET, sft_step=0, sft_flops=0.0, sub_phase=None,
            min_val_loss=None, rl_flops=rl_flops, scores=scores, score_stderr=stderrs, rl_run=str(rl_dir),
        )
    sft_run_written, sft_step = sft_reference
    sft_run = locate_sft_run(sft_run_written, rl_dir)
    if sft_run is None:
        raise UserError(
            f"{rl_dir / CONFIG_FILE}: field 'model.path' is the SFT checkpoint {model_path!r}, but no "
            f"{PHASES_FILE} was found for its SFT run {sft_run_written} (tried as given, from the current "
            f"folder and from the folders above {rl_dir}); pass that SFT run's folder beside the RL run"
        )
    phases = read_phases(sft_run / PHASES_FILE)
    return Branch(
        name=name,
        dataset=dataset or sft_dataset_label(sft_run),
        sft_step=sft_step,
        sft_flops=sft_flops_at(phases, sft_step, sft_run),
        sub_phase=sub_phase_at(phases, sft_step),
        min_val_loss=phases["L_min"],
        rl_flops=rl_flops,
        scores=scores,
        score_stderr=stderrs,
        rl_run=str(rl_dir),
        sft_run=str(sft_run),
    )


def _score_entry(entry: dict, benchmark: str | None, where: str) -> tuple[dict, str]:
    """(the mapping holding the score, its field) for ``benchmark`` (see :func:`read_evals`)."""
    if benchmark is None:
        return entry, "avg_at_n"
    if benchmark == "macro":
        if "macro_avg_at_n" not in entry:
            raise UserError(f"{where}: no 'macro_avg_at_n': the run evaluated a single benchmark")
        return {"macro_avg_at_n": entry["macro_avg_at_n"]}, "macro_avg_at_n"
    table = entry.get("benchmarks")
    if not isinstance(table, dict) or benchmark not in table or not isinstance(table[benchmark], dict):
        have = ", ".join(table) if isinstance(table, dict) else "none (a single benchmark)"
        raise UserError(f"{where}: no benchmark {benchmark!r}; the run's benchmarks: {have}")
    return table[benchmark], "avg_at_n"


def read_evals(path: Path, benchmark: str | None = None) -> tuple[list[float], list[float], list[float] | None]:
    """(RL FLOPs, scores in percent, standard errors in percent or None) of an ``evals.json``.

    The score is ``avg_at_n`` (over all problems), or with ``benchmark`` one benchmark's avg@n
    (``benchmarks.<name>.avg_at_n`` of a suite's points) or ``"macro"`` for ``macro_avg_at_n``, so a
    ceiling can be fitted per benchmark or on the macro average.

    Entries are sorted by step (a step logged twice keeps the last entry); the first must be RL
    step 0, the SFT checkpoint itself (P_sft, Eq. 12's fixed start).
    """
    if not path.is_file():
        raise UserError(f"{path}: no such file (an RL run folder has evals.json once it has evaluated)")
    entries = _load_json(path)
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{path}: expected a non-empty JSON list of evaluations")
    by_step: dict[int, tuple[float, float, float | None]] = {}
    for number, entry in enumerate(entries, start=1):
        where = f"{path} entry {number}"
        if not isinstance(entry, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(entry).__name__}")
        step = integer_field(entry, "step", where)
        flops = number_field(entry, "flops", where)
        entry, field_name = _score_entry(entry, benchmark, where)
        score = number_field(entry, field_name, where)
        if flops < 0:
            raise UserError(f"{where}: field 'flops' must be >= 0, got {flops!r}")
        if not 0.0 <= score <= 1.0:
            raise UserError(f"{where}: field '{field_name}' must be a fraction in [0, 1], got {score!r}")
        stderr = number_field(entry, "avg_at_n_stderr", where) if "avg_at_n_stderr" in entry else None
        by_step[step] = (flops, 100.0 * score, None if stderr is None else 100.0 * stderr)
    steps = sorted(by_step)
    if steps[0] != 0:
        raise UserError(
            f"{path}: the first evaluation is at RL step {steps[0]}, not 0; Eq. 12 needs the score of the "
            "SFT checkpoint itself (run RL with rl.eval_at_start=true)"
        )
    rl_flops = [by_step[s][0] for s in steps]
    scores = [by_step[s][1] for s in steps]
    stderrs = [by_step[s][2] for s in steps]
    return rl_flops, scores, (None if any(e is None for e in stderrs) else stderrs)


def _model_path(config_path: Path) -> str:
    """``model.path`` of an RL run's config.yaml."""
    import yaml

    if not config_path.is_file():
        raise UserError(f"{config_path}: no such file (an RL run folder holds its resolved config.yaml)")
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UserError(f"{config_path}: not valid YAML ({e})") from None
    model = config.get("model") if isinstance(config, dict) else None
    path = model.get("path") if isinstance(model, dict) else None
    if not isinstance(path, str) or not path.strip():
        raise UserError(f"{config_path}: field 'model.path' must be a non-empty string, got {path!r}")
    return path.strip()


def _split_checkpoint_path(model_path: str) -> tuple[Path, int] | None:
    """(SFT run folder as written, N) for ``<SFT_RUN>/checkpoints/step-N``; None for anything else."""
    if ":" in model_path.split("/")[0] and not Path(model_path).is_absolute():
        return None  # embedded:base and the like
    path = Path(model_path.rstrip("/"))
    match = _CHECKPOINT_NAME.fullmatch(path.name)
    if match is None or path.parent.name != "checkpoints":
        return None
    return path.parent.parent, int(match.group(1))


def locate_sft_run(written: Path, rl_dir: Path) -> Path | None:
    """The SFT run folder (one holding phases.json) that a config wrote as ``written``.

    Config paths are often relative to wherever the run was launched (``runs/demo/sft``), and
    experiment folders get moved or copied, so the RL run's own surroundings come first: an absolute
    path as written; then, for ever shorter tails of it (``runs/demo/sft``, ``demo/sft``, ``sft``),
    each folder above the RL run, nearest first; last, the path relative to the current folder.
    """
    candidates = [written] if written.is_absolute() else []
    parts = [p for p in written.parts if p != written.anchor]
    ancestors = list(rl_dir.resolve().parents)
    for start in range(len(parts)):
        tail = Path(*parts[start:])
        candidates += [ancestor / tail for ancestor in ancestors]
    if not written.is_absolute():
        candidates.append(written)
    for candidate in candidates:
        if (candidate / PHASES_FILE).is_file():
            return candidate
    return None


def read_phases(path: Path) -> dict[str, Any]:
    """The fields of an SFT run's ``phases.json`` that a branch needs: steps, flops, phases, L_min."""
    payload = _load_json(path)
    if not isinstance(payload, dict):
        raise UserError(f"{path}: expected a JSON object")
    steps, flops, phases = payload.get("steps"), payload.get("flops"), payload.get("phases")
    for key, values in (("steps", steps), ("flops", flops), ("phases", phases)):
        if not isinstance(values, list) or not values:
            raise UserError(f"{path}: field '{key}' must be a non-empty list, got {values!r}")
    if not (len(steps) == len(flops) == len(phases)):
        raise UserError(f"{path}: fields 'steps', 'flops', 'phases' must have the same length, got "
                        f"{len(steps)}, {len(flops)}, {len(phases)}")
    for index, (step, value, phase) in enumerate(zip(steps, flops, phases)):
        if isinstance(step, bool) or not isinstance(step, int):
            raise UserError(f"{path}: field 'steps' index {index}: {step!r} is not an integer")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserError(f"{path}: field 'flops' index {index}: {value!r} is not a finite number")
        if not isinstance(phase, str):
            raise UserError(f"{path}: field 'phases' index {index}: {phase!r} is not a sub-phase name")
    l_min = number_field(payload, "L_min", str(path))
    return {"steps": steps, "flops": [float(f) for f in flops], "phases": phases, "L_min": l_min}


def sft_flops_at(phases: dict[str, Any], step: int, sft_run: Path) -> float:
    """x_sft of SFT step ``step``: from phases.json when it is a validation point, else from the SFT
    run's metrics.jsonl, else scaled from the nearest validation point (FLOPs grow ~linearly in steps)."""
    if step in phases["steps"]:
        return phases["flops"][phases["steps"].index(step)]
    metrics = sft_run / "metrics.jsonl"
    if metrics.is_file():
        from npu_retu.report.metrics import read_metrics

        for row in reversed(read_metrics(metrics)):
            if row.get("step") == step and isinstance(row.get("flops"), (int, float)):
                return float(row["flops"])
    nearest = min(range(len(phases["steps"])), key=lambda i: abs(phases["steps"][i] - step))
    if phases["steps"][nearest] <= 0:
        return 0.0
    return phases["flops"][nearest] * step / phases["steps"][nearest]


def sub_phase_at(phases: dict[str, Any], step: int) -> str:
    """The SFT sub-phase (Eq. 14-17) of step ``step``: its own label when it is a validation point,
    else the label of the last validation point before it; before the first one it is Adaptive
    (Eq. 14: before the first stable point)."""
    label = "adaptive"
    for validated_step, phase in zip(phases["steps"], phases["phases"]):
        if validated_step > step:
            break
        label = phase
    return label


def sft_dataset_label(sft_run: Path) -> str:
    """A short label for an SFT run's data: its config.yaml's ``data.train_files`` (file stems,
    ``embedded:`` dropped, joined with '+'); the run's folder name when that is not readable."""
    import yaml

    fallback = sft_run.parent.name if sft_run.name == "sft" and sft_run.parent.name else sft_run.name
    try:
        config = yaml.safe_load((sft_run / CONFIG_FILE).read_text(encoding="utf-8"))
        files = config["data"]["train_files"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return fallback
    if isinstance(files, str):
        files = [files]
    if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
        return fallback
    labels = [f.split(":", 1)[1] if f.startswith("embedded:") else Path(f).name.split(".")[0] for f in files]
    return "+".join(labels)


def sft_phase_spans(sft_run: str | Path) -> list[tuple[float, float, str]]:
    """(x_start, x_end, sub-phase) over SFT compute from a run's phases.json, for shading a plot.

    Each validation point covers halfway to its neighbours; the first span starts at 0 (the run
    begins Adaptive, Eq. 14) and the last extends by half a gap.
    """
    phases = read_phases(Path(sft_run) / PHASES_FILE)
    xs = phases["flops"]
    if len(xs) == 1:
        return [(0.0, xs[0], phases["phases"][0])]
    mids = [(a + b) / 2 for a, b in zip(xs, xs[1:])]
    starts = [0.0] + mids
    ends = mids + [xs[-1] + (xs[-1] - mids[-1])]
    return list(zip(starts, ends, phases["phases"]))


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


# --------------------------------------------------------------------------------------------
# the table


@dataclass
class PlasticityRow:
    """One row of Table 4: a branch fitted with Eq. 12. NaN fields and ``error`` when the fit failed."""

    name: str
    dataset: str
    sft_step: int
    x_sft: float  # FLOPs
    sub_phase: str | None
    min_val_loss: float | None
    P_sft: float  # noqa: N815 - the paper's names
    A_post: float  # noqa: N815
    PL_rl: float  # noqa: N815 - A_post - P_sft
    C_mid: float  # noqa: N815 - RL FLOPs to reach half of PL_rl
    B: float
    use_lts: bool | None
    n_points: int
    n_outliers: int | None  # Stage-1 outliers plus LTS-trimmed points
    rmse_val: float | None
    r2_fit: float
    a_ci: tuple[float, float] | None
    ci_level: float | None
    max_P_post: float  # noqa: N815 - the best observed score (Table 1's metric)
    alpha: float | None = None
    method: str | None = None
    error: str | None = None
    fit: Any = field(default=None, repr=False)  # the CeilingFit, None when the fit failed

    @property
    def failed(self) -> bool:
        return self.error is not None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict: NaN becomes None and the fit is its own ``to_dict()``."""
        payload = {
            "name": self.name, "dataset": self.dataset, "sft_step": self.sft_step, "x_sft": self.x_sft,
            "sub_phase": self.sub_phase, "min_val_loss": self.min_val_loss, "P_sft": self.P_sft,
            "A_post": self.A_post, "PL_rl": self.PL_rl, "C_mid": self.C_mid, "B": self.B,
            "use_lts": self.use_lts, "alpha": self.alpha, "n_points": self.n_points,
            "n_outliers": self.n_outliers, "rmse_val": self.rmse_val, "r2_fit": self.r2_fit,
            "A_ci": None if self.a_ci is None else list(self.a_ci), "ci_level": self.ci_level,
            "max_P_post": self.max_P_post, "method": self.method, "error": self.error,
            "fit": None if self.fit is None else self.fit.to_dict(),
        }
        return json_safe(payload)


def branch_sort_key(branch: Branch) -> tuple:
    """Table 4's order: Pure-RL first, then by SFT data and SFT step."""
    return (not branch.is_pure_rl, branch.dataset, branch.sft_step, branch.name)


def plasticity_rows(branches: Sequence[Branch], **fit_kwargs) -> list[PlasticityRow]:
    """Fit every branch with Eq. 12 (``p_start`` fixed to its RL-step-0 score) and return one row of
    Table 4 per branch, in the order given (so ``rows[i]`` belongs to ``branches[i]``; sort the
    branches by :func:`branch_sort_key` first for Table 4's order). ``fit_kwargs`` go to ``fit_ceiling``.

    A branch whose fit fails (too few points, no convergence) gives a row with NaN fit fields and the
    reason in ``error`` rather than stopping the table.
    """
    from npu_retu.ceiling.fit import CeilingFitError, fit_ceiling

    if "p_start" in fit_kwargs:
        raise TypeError("plasticity_rows fixes p_start to each branch's P_sft (Eq. 12); do not pass it")
    rows = []
    for branch in branches:
        try:
            fit = fit_ceiling(branch.rl_flops, branch.scores, p_start=branch.p_sft, **fit_kwargs)
        except CeilingFitError as e:
            rows.append(_failed_row(branch, str(e)))
            continue
        rows.append(_row_from_fit(branch, fit))
    return rows


def _branch_fields(branch: Branch) -> dict[str, Any]:
    return {
        "name": branch.name, "dataset": branch.dataset, "sft_step": branch.sft_step, "x_sft": branch.sft_flops,
        "sub_phase": branch.sub_phase, "min_val_loss": branch.min_val_loss, "P_sft": branch.p_sft,
        "n_points": len(branch.scores), "max_P_post": max(branch.scores),
    }


def _row_from_fit(branch: Branch, fit) -> PlasticityRow:
    return PlasticityRow(
        **_branch_fields(branch),
        A_post=fit.A, PL_rl=fit.A - branch.p_sft, C_mid=fit.C_mid, B=fit.B,
        use_lts=fit.use_lts, alpha=fit.alpha if fit.use_lts else None,
        n_outliers=len(fit.stage1_outliers) + len(fit.lts_trimmed),
        rmse_val=fit.rmse_val, r2_fit=fit.r2_fit,
        a_ci=None if fit.a_ci is None else (float(fit.a_ci[0]), float(fit.a_ci[1])),
        ci_level=fit.ci_level, method=fit.method, fit=fit,
    )


def _failed_row(branch: Branch, error: str) -> PlasticityRow:
    nan = math.nan
    return PlasticityRow(
        **_branch_fields(branch), A_post=nan, PL_rl=nan, C_mid=nan, B=nan, use_lts=None, n_outliers=None,
        rmse_val=None, r2_fit=nan, a_ci=None, ci_level=None, error=error,
    )


# --------------------------------------------------------------------------------------------
# JSON


def rows_to_json(rows: Sequence[PlasticityRow]) -> list[dict[str, Any]]:
    """The rows as JSON-able dicts (see :meth:`PlasticityRow.to_dict`)."""
    return [r.to_dict() for r in rows]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def json_safe(value: Any) -> Any:
    """NaN and infinities become None (JSON has neither); tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# the minimum-validation-loss predictor (Figure 5a)


def min_loss_correlation(rows: Sequence[PlasticityRow]) -> dict[str, Any]:
    """Per SFT dataset, its minimum SFT validation loss and the best A_post of its branches, and the
    Pearson correlation between the two across datasets (§6.2.2, Figure 5a; the paper finds -0.90).

    Pure-RL rows and rows without a validation loss or a finite A_post are left out. ``r`` and
    ``p_value`` (``scipy.stats.pearsonr``) need >= 3 datasets; otherwise they are None and
    ``reason`` says why. ``slope``/``intercept`` are the least-squares line A_post = slope * loss +
    intercept, given whenever >= 2 datasets have different losses.
    """
    groups: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row.dataset == PURE_RL_DATASET or row.min_val_loss is None or not _finite(row.A_post):
            continue
        group = groups.setdefault(row.dataset, {"dataset": row.dataset, "min_val_loss": row.min_val_loss,
                                                "best_A_post": row.A_post, "best_sft_step": row.sft_step,
                                                "best_max_P_post": row.max_P_post, "n_branches": 0})
        group["n_branches"] += 1
        group["min_val_loss"] = min(group["min_val_loss"], row.min_val_loss)
        group["best_max_P_post"] = max(group["best_max_P_post"], row.max_P_post)
        if row.A_post > group["best_A_post"]:
            group["best_A_post"], group["best_sft_step"] = row.A_post, row.sft_step
    datasets = sorted(groups.values(), key=lambda g: g["min_val_loss"])
    losses = [g["min_val_loss"] for g in datasets]
    ceilings = [g["best_A_post"] for g in datasets]
    result: dict[str, Any] = {"datasets": datasets, "n": len(datasets), "r": None, "p_value": None,
                              "slope": None, "intercept": None, "reason": None}
    if len(set(losses)) >= 2:
        import numpy as np

        slope, intercept = np.polyfit(losses, ceilings, 1)
        result["slope"], result["intercept"] = float(slope), float(intercept)
    if len(datasets) < 3:
        result["reason"] = (f"Pearson r needs >= 3 SFT datasets with a validation loss and a fitted A_post; "
                            f"have {len(datasets)}")
    elif len(set(losses)) < 2 or len(set(ceilings)) < 2:
        result["reason"] = "Pearson r is undefined: the minimum losses or the best A_post values are all equal"
    else:
        from scipy.stats import pearsonr

        r, p_value = pearsonr(losses, ceilings)
        result["r"], result["p_value"] = float(r), float(p_value)
    return result
