"""The plasticity table (Table 4), the min-loss predictor (Figure 5a) and the ceiling plots.

Fake RL run folders are written from known Eq. 12 curves, so the table must give back the numbers
they were made from.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from npu_retu.ceiling.tables import (
    Branch, PlasticityRow, branch_from_rl_run, branch_sort_key, min_loss_correlation, plasticity_rows, rows_to_json,
    sft_phase_spans,
)
from npu_retu.errors import UserError
from npu_retu.report.plasticity_table import format_markdown, format_text, write_csv

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAST = {"bootstrap": 0}  # the bootstrap is tested once; elsewhere it only costs time

# The fake SFT run: validation every 100 steps, 1e16 FLOPs per step (x_sft = step * 1e16).
SFT_STEPS = [100, 200, 300, 400, 500, 600]
SFT_PHASES = ["adaptive", "adaptive", "stable", "stable", "mild", "severe"]
SFT_LOSSES = [0.9, 0.7, 0.61, 0.6, 0.63, 0.7]
FLOPS_PER_SFT_STEP = 1e16

# RL evaluations: 21 points, 0 .. 2e18 RL FLOPs.
RL_FLOPS = [i * 1e17 for i in range(21)]


def eq12(x_rl, p_sft, a_post, b, c_mid):
    """Eq. 12 (x_rl = 0 gives P_sft)."""
    x = np.asarray(x_rl, dtype=float)
    with np.errstate(divide="ignore"):
        return np.where(x > 0, p_sft + (a_post - p_sft) / (1 + (x / c_mid) ** (-b)), p_sft)


def write_sft_run(folder: Path, *, losses=SFT_LOSSES, data_file="embedded:sft-hard") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    phases = {
        "steps": SFT_STEPS, "flops": [s * FLOPS_PER_SFT_STEP for s in SFT_STEPS], "losses": list(losses),
        "phases": SFT_PHASES, "has_checkpoint": [True] * len(SFT_STEPS), "L_min": min(losses),
        "L_min_step": SFT_STEPS[losses.index(min(losses))], "delta": 0.02, "delta2": 0.1,
    }
    (folder / "phases.json").write_text(json.dumps(phases), encoding="utf-8")
    (folder / "config.yaml").write_text(f"data:\n  train_files:\n  - {data_file}\n", encoding="utf-8")
    return folder


def write_rl_run(folder: Path, model_path: str, scores_percent, *, rl_flops=RL_FLOPS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    evals = [{"step": 10 * i, "flops": f, "avg_at_n": s / 100, "avg_at_n_stderr": 0.01}
             for i, (f, s) in enumerate(zip(rl_flops, scores_percent))]
    (folder / "evals.json").write_text(json.dumps(evals), encoding="utf-8")
    (folder / "config.yaml").write_text(f"model:\n  path: {model_path}\n  dtype: float32\n", encoding="utf-8")
    return folder


def write_experiment(root: Path, datasets: dict[str, tuple[float, list[tuple[int, float, float]]]]) -> Path:
    """``root/<dataset>/sft`` plus one RL run per (sft_step, P_sft, A_post) in ``root/<dataset>/rl-<step>``;
    every curve has B = 1.5, C_mid = 4e17. The config paths are relative to ``root``'s parent, as when
    a run is launched from there."""
    for dataset, (l_min, branches) in datasets.items():
        losses = [l_min * r / min(SFT_LOSSES) for r in SFT_LOSSES]
        write_sft_run(root / dataset / "sft", losses=losses, data_file=f"data/{dataset}.jsonl")
        for step, p_sft, a_post in branches:
            scores = eq12(RL_FLOPS, p_sft, a_post, 1.5, 4e17)
            write_rl_run(root / dataset / f"rl-{step}", f"{root.name}/{dataset}/sft/checkpoints/step-{step:06d}", scores)
    return root


# --------------------------------------------------------------------------------------------
# reading a branch


def test_branch_from_rl_run_reads_the_sft_checkpoint(tmp_path, monkeypatch):
    write_sft_run(tmp_path / "exp" / "sft")
    scores = eq12(RL_FLOPS, 70.0, 80.0, 1.5, 4e17)
    # relative to the folder the run was launched from (tmp_path), and zero-padded like the trainer writes it
    rl = write_rl_run(tmp_path / "exp" / "rl", "exp/sft/checkpoints/step-000300", scores)
    monkeypatch.chdir(tmp_path / "exp" / "rl")  # not where it was launched: the path must still resolve
    branch = branch_from_rl_run(rl)
    assert branch.name == "rl"
    assert branch.dataset == "sft-hard"  # from the SFT run's data.train_files, "embedded:" dropped
    assert branch.sft_step == 300
    assert branch.sft_flops == pytest.approx(3e18)
    assert branch.sub_phase == "stable"
    assert branch.min_val_loss == pytest.approx(0.6)
    assert branch.rl_flops == pytest.approx(RL_FLOPS)
    assert branch.scores == pytest.approx(list(scores))  # fractions -> percent
    assert branch.scores[0] == pytest.approx(70.0) and branch.p_sft == pytest.approx(70.0)
    assert branch.score_stderr == pytest.approx([1.0] * 21)
    assert Path(branch.sft_run) == tmp_path / "exp" / "sft"


def test_a_checkpoint_between_validation_points_takes_the_last_label_and_scaled_flops(tmp_path):
    write_sft_run(tmp_path / "sft")
    rl = write_rl_run(tmp_path / "rl", str(tmp_path / "sft" / "checkpoints" / "step-450"), [50.0] * 21)
    branch = branch_from_rl_run(rl, dataset="mine", name="b450")
    assert (branch.name, branch.dataset, branch.sft_step) == ("b450", "mine", 450)
    assert branch.sub_phase == "stable"  # the label of step 400
    assert branch.sft_flops == pytest.approx(4.5e18)  # from step 500's 5e18, scaled


def test_a_moved_experiment_still_finds_its_sft_run(tmp_path):
    write_sft_run(tmp_path / "moved" / "demo" / "sft")
    rl = write_rl_run(tmp_path / "moved" / "demo" / "rl", "runs/demo/sft/checkpoints/step-000200", [40.0] * 21)
    branch = branch_from_rl_run(rl)
    assert branch.sft_step == 200 and branch.sub_phase == "adaptive"
    assert Path(branch.sft_run) == (tmp_path / "moved" / "demo" / "sft").resolve()


@pytest.mark.parametrize("model_path", ["embedded:base", "Qwen/Qwen2.5-7B", "/models/base"])
def test_a_run_from_the_base_is_pure_rl(tmp_path, model_path):
    rl = write_rl_run(tmp_path / "pure", model_path, [46.0] * 21)
    branch = branch_from_rl_run(rl)
    assert branch.dataset == "-" and branch.is_pure_rl
    assert (branch.sft_step, branch.sft_flops, branch.sub_phase, branch.min_val_loss) == (0, 0.0, None, None)


def test_missing_and_malformed_files_name_the_file_and_field(tmp_path):
    folder = tmp_path / "rl"
    folder.mkdir()
    with pytest.raises(UserError, match=r"evals\.json: no such file"):
        branch_from_rl_run(folder)

    (folder / "evals.json").write_text(json.dumps([{"step": 0, "flops": 0.0, "avg_at_n": "x"}]))
    with pytest.raises(UserError, match=r"evals\.json entry 1: field 'avg_at_n' must be a finite number"):
        branch_from_rl_run(folder)

    (folder / "evals.json").write_text(json.dumps([{"step": 0, "flops": 0.0, "avg_at_n": 45.0}]))
    with pytest.raises(UserError, match=r"entry 1: field 'avg_at_n' must be a fraction in \[0, 1\]"):
        branch_from_rl_run(folder)

    (folder / "evals.json").write_text(json.dumps([{"step": 10, "flops": 1.0, "avg_at_n": 0.5}]))
    with pytest.raises(UserError, match=r"first evaluation is at RL step 10, not 0"):
        branch_from_rl_run(folder)

    (folder / "evals.json").write_text(json.dumps([{"step": 0, "flops": 0.0, "avg_at_n": 0.5}]))
    with pytest.raises(UserError, match=r"config\.yaml: no such file"):
        branch_from_rl_run(folder)

    (folder / "config.yaml").write_text("model:\n  dtype: float32\n")
    with pytest.raises(UserError, match=r"config\.yaml: field 'model\.path' must be a non-empty string"):
        branch_from_rl_run(folder)

    (folder / "config.yaml").write_text("model:\n  path: nowhere/sft/checkpoints/step-100\n")
    with pytest.raises(UserError, match=r"field 'model\.path' is the SFT checkpoint .* no phases\.json"):
        branch_from_rl_run(folder)

    write_sft_run(tmp_path / "nowhere" / "sft")
    (tmp_path / "nowhere" / "sft" / "phases.json").write_text(json.dumps({"steps": [1], "flops": [1.0], "phases": ["stable"]}))
    with pytest.raises(UserError, match=r"phases\.json: field 'L_min' must be a finite number"):
        branch_from_rl_run(folder)


# --------------------------------------------------------------------------------------------
# the table


def test_the_table_recovers_the_curves_it_was_made_from(tmp_path):
    root = write_experiment(tmp_path / "exp", {"hard": (0.5, [(200, 70.0, 78.0), (300, 72.5, 81.0)])})
    pure = write_rl_run(tmp_path / "exp" / "pure-rl", "embedded:base", eq12(RL_FLOPS, 46.0, 71.0, 1.5, 4e17))
    branches = [branch_from_rl_run(root / "hard" / "rl-300"), branch_from_rl_run(root / "hard" / "rl-200"),
                branch_from_rl_run(pure)]
    rows = plasticity_rows(sorted(branches, key=branch_sort_key), **FAST)

    assert [(r.dataset, r.sft_step) for r in rows] == [("-", 0), ("hard", 200), ("hard", 300)]  # Table 4's order
    expected = [(46.0, 71.0), (70.0, 78.0), (72.5, 81.0)]
    for row, (p_sft, a_post) in zip(rows, expected):
        assert row.error is None and row.fit is not None
        assert row.P_sft == pytest.approx(p_sft)
        assert row.A_post == pytest.approx(a_post, abs=0.05)
        assert row.PL_rl == pytest.approx(a_post - p_sft, abs=0.05)
        assert row.C_mid == pytest.approx(4e17, rel=0.02)
        assert row.B == pytest.approx(1.5, abs=0.02)
        assert row.r2_fit == pytest.approx(1.0, abs=1e-6)
        assert row.rmse_val == pytest.approx(0.0, abs=0.05)
        assert row.n_points == 21
        assert row.max_P_post == pytest.approx(max(eq12(RL_FLOPS, p_sft, a_post, 1.5, 4e17)))
        assert row.use_lts is True and row.alpha == 0.85 and row.method == "robust"
        assert row.n_outliers == len(row.fit.stage1_outliers) + len(row.fit.lts_trimmed)
    assert rows[1].x_sft == pytest.approx(2e18) and rows[1].sub_phase == "adaptive"
    assert rows[2].x_sft == pytest.approx(3e18) and rows[2].sub_phase == "stable"
    assert rows[0].x_sft == 0 and rows[0].sub_phase is None


def test_a_branch_that_cannot_be_fitted_is_a_row_with_its_error(tmp_path):
    short = Branch(name="short", dataset="d", sft_step=100, sft_flops=1e18, sub_phase="adaptive", min_val_loss=0.5,
                   rl_flops=[0.0, 1e17], scores=[50.0, 55.0])
    good = Branch(name="good", dataset="d", sft_step=200, sft_flops=2e18, sub_phase="stable", min_val_loss=0.5,
                  rl_flops=RL_FLOPS, scores=list(eq12(RL_FLOPS, 60.0, 70.0, 1.5, 4e17)))
    rows = plasticity_rows([good, short], **FAST)
    assert [r.name for r in rows] == ["good", "short"]  # rows[i] is branches[i]
    failed = rows[1]
    assert failed.failed and "at least 4 points" in failed.error
    assert math.isnan(failed.A_post) and math.isnan(failed.PL_rl) and failed.fit is None
    assert failed.P_sft == 50.0 and failed.max_P_post == 55.0
    assert rows_to_json(rows)[1]["A_post"] is None  # NaN is not JSON
    assert "fit failed" in format_markdown(rows) and "at least 4 points" in format_text(rows)


def test_markdown_csv_and_json(tmp_path):
    root = write_experiment(tmp_path / "exp", {"hard": (0.5, [(200, 70.0, 78.0), (300, 72.5, 81.0)])})
    rows = plasticity_rows([branch_from_rl_run(root / "hard" / f"rl-{s}") for s in (200, 300)], bootstrap=50)

    markdown = format_markdown(rows).splitlines()
    assert markdown[0] == ("| SFT data | SFT step | x_sft (exaFLOPs) | sub-phase | P_sft | PL_rl | A_post (95% CI) "
                           "| C_mid (exaFLOPs) | B | LTS | max P_post | RMSE val | R² fit |")
    cells = [c.strip() for c in markdown[3].strip("|").split("|")]
    assert cells[:6] == ["hard", "300", "3", "stable", "72.5", "8.5"]
    assert cells[6].startswith("81.0 [")  # with its bootstrap interval
    assert cells[7] == "0.4" and cells[8] == "1.50" and cells[9] == "yes (α=0.85)"
    assert len(markdown) == 4

    ci = rows[1].a_ci
    assert ci is not None and ci[0] <= rows[1].A_post <= ci[1] and ci[1] - ci[0] < 0.5

    path = write_csv(rows, tmp_path / "out" / "table.csv")
    records = list(csv.DictReader(path.open(encoding="utf-8")))
    assert [r["sft_step"] for r in records] == ["200", "300"]
    assert float(records[1]["x_sft_flops"]) == pytest.approx(3e18)
    assert float(records[1]["A_post"]) == pytest.approx(81.0, abs=0.05)
    assert float(records[1]["PL_rl"]) == pytest.approx(8.5, abs=0.05)
    assert float(records[1]["A_ci_low"]) == pytest.approx(ci[0])
    assert records[1]["error"] == "" and records[1]["sub_phase"] == "stable"

    payload = json.loads(json.dumps(rows_to_json(rows)))
    assert payload[0]["A_post"] == pytest.approx(78.0, abs=0.05) and payload[0]["sub_phase"] == "adaptive"
    assert payload[1]["fit"]["A"] == payload[1]["A_post"] and payload[1]["A_ci"] == list(ci)


# --------------------------------------------------------------------------------------------
# the min-loss predictor (Figure 5a)


def _row_for(dataset, loss, a_post, step=100):
    """A fitted-looking row with just what the correlation reads."""
    return PlasticityRow(
        name=f"{dataset}-{step}", dataset=dataset, sft_step=step, x_sft=step * 1e16, sub_phase="stable",
        min_val_loss=loss, P_sft=a_post - 5, A_post=a_post, PL_rl=5.0, C_mid=1e17, B=1.0, use_lts=False,
        n_points=10, n_outliers=0, rmse_val=0.1, r2_fit=0.9, a_ci=None, ci_level=None, max_P_post=a_post - 1,
    )


def test_min_loss_correlation_on_an_exact_line():
    # three datasets on A_post = 100 - 40 * loss, plus a worse branch of one of them and a Pure-RL row
    rows = [_row_for("a", 0.4, 84.0), _row_for("b", 0.5, 80.0), _row_for("c", 0.6, 76.0),
            _row_for("a", 0.4, 83.0, step=200), _row_for("-", None, 71.0)]
    result = min_loss_correlation(rows)
    assert [d["dataset"] for d in result["datasets"]] == ["a", "b", "c"]
    assert result["datasets"][0]["best_A_post"] == 84.0 and result["datasets"][0]["best_sft_step"] == 100
    assert result["datasets"][0]["n_branches"] == 2
    assert result["r"] == pytest.approx(-1.0) and result["p_value"] == pytest.approx(0.0, abs=1e-6)
    assert result["slope"] == pytest.approx(-40.0) and result["intercept"] == pytest.approx(100.0)
    assert result["n"] == 3 and result["reason"] is None


def test_min_loss_correlation_matches_numpy():
    losses, ceilings = [0.40, 0.50, 0.54, 0.59, 0.70], [85.7, 85.2, 78.3, 78.1, 77.5]
    rows = [_row_for(f"d{i}", loss, a) for i, (loss, a) in enumerate(zip(losses, ceilings))]
    result = min_loss_correlation(rows)
    assert result["r"] == pytest.approx(np.corrcoef(losses, ceilings)[0, 1])
    assert result["r"] < -0.8


def test_min_loss_correlation_needs_three_datasets():
    result = min_loss_correlation([_row_for("a", 0.4, 84.0), _row_for("b", 0.5, 80.0)])
    assert result["r"] is None and result["p_value"] is None and ">= 3" in result["reason"]
    assert result["slope"] == pytest.approx(-40.0)  # a line through two points still exists
    equal = min_loss_correlation([_row_for(d, 0.5, 80.0 + i) for i, d in enumerate("abc")])
    assert equal["r"] is None and "all equal" in equal["reason"]


# --------------------------------------------------------------------------------------------
# plots


def assert_png(path) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000


def test_plots_write_png_files(tmp_path):
    from npu_retu.ceiling.fit import fit_ceiling
    from npu_retu.report.plots import plot_ceiling_fit, plot_min_loss_correlation, plot_plasticity

    scores = list(eq12(RL_FLOPS, 60.0, 75.0, 1.5, 4e17))
    scores[6] -= 8.0  # an outlier for the red cross
    fit = fit_ceiling(RL_FLOPS, scores, p_start=60.0, bootstrap=30)
    assert 6 in fit.stage1_outliers + fit.lts_trimmed
    assert_png(plot_ceiling_fit(fit, tmp_path / "fit.png", title="one fit"))

    root = write_experiment(tmp_path / "exp", {"hard": (0.5, [(200, 70.0, 78.0), (400, 72.5, 81.0), (600, 73.0, 77.0)])})
    branches = [branch_from_rl_run(root / "hard" / f"rl-{s}") for s in (200, 400, 600)]
    rows = plasticity_rows(branches, **FAST)
    spans = sft_phase_spans(branches[0].sft_run)
    assert spans[0] == (0.0, 1.5e18, "adaptive") and spans[-1] == (5.5e18, 6.5e18, "severe")
    path = plot_plasticity(tmp_path / "plasticity.png", sft_curve=[(b.sft_flops, b.p_sft) for b in branches],
                           branches=branches, fits=[r.fit for r in rows], phase_spans=spans, title="hard")
    assert_png(path)

    correlation = min_loss_correlation([_row_for("a", 0.4, 84.0), _row_for("b", 0.5, 80.0), _row_for("c", 0.6, 77.0)])
    assert_png(plot_min_loss_correlation(correlation, tmp_path / "corr.png"))
    assert_png(plot_min_loss_correlation(min_loss_correlation([]), tmp_path / "empty.png"))  # a note, not a crash
