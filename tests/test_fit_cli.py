"""``npu-retu fit`` on points files, RL run folders and folders of RL runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from npu_retu.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# A known Eq. 11 curve on an arbitrary compute axis: P_start = 20, A = 60, B = 1.2, C_mid = 50.
COMPUTE = [0, 5, 10, 15, 20, 25, 30, 40, 50, 60, 70, 80, 90, 100, 120, 140, 160, 180, 200, 250]


def eq11(x, p_start=20.0, a=60.0, b=1.2, c_mid=50.0):
    x = np.asarray(x, dtype=float)
    with np.errstate(divide="ignore"):
        return np.where(x > 0, p_start + (a - p_start) / (1 + (x / c_mid) ** (-b)), p_start)


def write_points_csv(path: Path, compute=COMPUTE, scores=None, column="compute") -> Path:
    scores = eq11(compute) if scores is None else scores
    lines = [f"{column},score,note"] + [f"{x},{float(y)!r},-" for x, y in zip(compute, scores)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_cli(args, capsys) -> tuple[int, str, str]:
    code = main(["fit", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(args, capsys) -> dict:
    code, out, err = run_cli([*args, "--json"], capsys)
    assert code == 0, err
    return json.loads(out)


def assert_png(path) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000


# --------------------------------------------------------------------------------------------
# points files


def test_points_csv_recovers_eq11(tmp_path, capsys):
    points = write_points_csv(tmp_path / "points.csv")
    result = run_json([points, "--bootstrap", "0"], capsys)
    fit = result["fits"][0]
    assert fit["input"] == str(points) and fit["equation"] == "Eq. 11"
    assert fit["A"] == pytest.approx(60.0, abs=0.01)
    assert fit["P_start"] == pytest.approx(20.0, abs=0.01) and fit["p_start_fixed"] is False
    assert fit["B"] == pytest.approx(1.2, abs=0.01)
    assert fit["C_mid"] == pytest.approx(50.0, rel=0.01)
    assert fit["plasticity"] == pytest.approx(40.0, abs=0.02)
    assert fit["method"] == "robust" and fit["use_lts"] is True
    assert sum(fit["fit_mask"]) == 17  # round(0.85 * 20)


def test_points_csv_human_output_and_files(tmp_path, capsys):
    points = write_points_csv(tmp_path / "points.csv", column="flops")  # 'flops' works as the compute column
    code, out, err = run_cli([points, "--p-start", "20", "--bootstrap", "20", "--plot", tmp_path / "fit.png",
                              "--csv", tmp_path / "fit.csv", "--markdown", tmp_path / "fit.md"], capsys)
    assert code == 0, err
    assert "20 points (Eq. 12, P_start fixed at 20)" in out
    assert "A (ceiling)        60.00  [95% CI" in out
    assert "PL = A - P_start   40.00" in out
    assert f"plot: {tmp_path / 'fit.png'}" in out
    assert_png(tmp_path / "fit.png")
    record = next(csv.DictReader((tmp_path / "fit.csv").open(encoding="utf-8")))
    assert record["equation"] == "Eq. 12" and float(record["A"]) == pytest.approx(60.0, abs=0.01)
    assert float(record["P_start"]) == 20.0
    assert f"| {points} | Eq. 12 | 20 | 20.00 | 40.00 | 60.00 [" in (tmp_path / "fit.md").read_text()


@pytest.mark.parametrize("wrap", [False, True])
def test_points_json(tmp_path, capsys, wrap):
    points = [{"flops": x, "score": float(y)} for x, y in zip(COMPUTE, eq11(COMPUTE))]
    path = tmp_path / "points.json"
    path.write_text(json.dumps({"points": points} if wrap else points))
    fit = run_json([path, "--bootstrap", "0", "--no-robust"], capsys)["fits"][0]
    assert fit["method"] == "least_squares" and fit["use_lts"] is False
    assert fit["A"] == pytest.approx(60.0, abs=0.01)


def test_the_lts_and_robust_switches_reach_the_fit(tmp_path, capsys):
    scores = list(eq11(COMPUTE))
    scores[6] += 15.0  # a gross outlier in the fit split
    points = write_points_csv(tmp_path / "points.csv", scores=scores)
    robust = run_json([points, "--bootstrap", "0", "--no-lts"], capsys)["fits"][0]
    assert robust["use_lts"] is False and robust["alpha"] is None
    assert 6 in robust["stage1_outliers"]
    assert robust["A"] == pytest.approx(60.0, abs=0.05)
    plain = run_json([points, "--bootstrap", "0", "--no-robust"], capsys)["fits"][0]
    assert plain["stage1_outliers"] == [] and abs(plain["A"] - 60.0) > abs(robust["A"] - 60.0)
    alpha = run_json([points, "--bootstrap", "0", "--alpha", "0.7", "--tau", "3", "--fit-fraction", "0.8"], capsys)
    fit = alpha["fits"][0]
    assert (fit["alpha"], fit["tau"], fit["fit_fraction"], sum(fit["fit_mask"])) == (0.7, 3.0, 0.8, 16)


def test_bad_points_files_name_file_row_and_field(tmp_path, capsys):
    path = tmp_path / "points.csv"
    path.write_text("compute,score\n0,20\n10,30\n\n20,35\n30,abc\n")
    code, out, err = run_cli([path], capsys)
    assert code == 2 and out == ""
    assert err.strip() == f"npu-retu fit: error: {path} row 4 (line 6): field 'score': 'abc' is not a number"

    path.write_text("compute,score\n0,20\n10,\n")
    assert run_cli([path], capsys)[2].strip().endswith("row 2 (line 3): field 'score' is empty")

    path.write_text("x,score\n0,20\n")
    assert "the header needs a 'compute' (or 'flops') column and a 'score' column" in run_cli([path], capsys)[2]

    path.write_text("compute,score\n0,20\n10,30\n")
    assert "cannot fit: fit_ceiling needs at least 5 points" in run_cli([path], capsys)[2]

    bad_json = tmp_path / "points.json"
    bad_json.write_text(json.dumps([{"compute": 0, "score": 20}, {"compute": 1}]))
    assert f"{bad_json} entry 2: field 'score' is missing" in run_cli([bad_json], capsys)[2]

    other = tmp_path / "points.txt"
    other.write_text("1 2\n")
    assert "a points file must be .csv or .json" in run_cli([other], capsys)[2]
    assert "no such points file or run folder" in run_cli([tmp_path / "missing.csv"], capsys)[2]
    assert "--fit-fraction must be in (0, 1]" in run_cli([path, "--fit-fraction", "0"], capsys)[2]


# --------------------------------------------------------------------------------------------
# RL runs

RL_FLOPS = [i * 1e17 for i in range(21)]


def write_sft_run(folder: Path, l_min: float, dataset: str) -> None:
    folder.mkdir(parents=True)
    steps = [100, 200, 300, 400]
    (folder / "phases.json").write_text(json.dumps({
        "steps": steps, "flops": [s * 1e16 for s in steps], "losses": [2 * l_min, 1.2 * l_min, l_min, 1.01 * l_min],
        "phases": ["adaptive", "severe", "stable", "stable"], "L_min": l_min,
    }))
    (folder / "config.yaml").write_text(f"data:\n  train_files:\n  - data/{dataset}.jsonl\n")


def write_rl_run(folder: Path, model_path: str, p_sft: float, a_post: float) -> Path:
    folder.mkdir(parents=True)
    scores = eq11(RL_FLOPS, p_start=p_sft, a=a_post, b=1.5, c_mid=4e17)
    evals = [{"step": 10 * i, "flops": x, "avg_at_n": float(s) / 100, "avg_at_n_stderr": 0.02}
             for i, (x, s) in enumerate(zip(RL_FLOPS, scores))]
    (folder / "evals.json").write_text(json.dumps(evals))
    (folder / "config.yaml").write_text(f"model:\n  path: {model_path}\n")
    return folder


def write_experiment(root: Path) -> Path:
    """Three SFT datasets whose best ceilings fall on A_post = 110 - 60 * L_min, and a Pure-RL run."""
    for dataset, l_min, branches in [("hard", 0.5, [(300, 72.0, 80.0), (400, 73.0, 79.0)]),
                                      ("uniform", 0.55, [(300, 70.0, 77.0)]),
                                      ("easy", 0.6, [(200, 66.0, 70.0), (300, 69.0, 74.0)])]:
        write_sft_run(root / dataset / "sft", l_min, dataset)
        for step, p_sft, a_post in branches:
            write_rl_run(root / dataset / f"rl-{step}", str(root / dataset / "sft" / "checkpoints" / f"step-{step}"),
                         p_sft, a_post)
    write_rl_run(root / "pure-rl", "embedded:base", 46.0, 71.0)
    return root


def test_one_rl_run_folder(tmp_path, capsys):
    write_sft_run(tmp_path / "demo" / "sft", 0.5, "hard")
    rl = write_rl_run(tmp_path / "demo" / "rl", "runs/demo/sft/checkpoints/step-000300", 72.0, 80.0)
    result = run_json([rl, "--bootstrap", "0"], capsys)
    [row] = result["rows"]
    assert row["name"] == "demo/rl" and row["dataset"] == "hard" and row["sft_step"] == 300
    assert row["x_sft"] == pytest.approx(3e18) and row["sub_phase"] == "stable" and row["min_val_loss"] == 0.5
    assert row["P_sft"] == pytest.approx(72.0)
    assert row["A_post"] == pytest.approx(80.0, abs=0.05) and row["PL_rl"] == pytest.approx(8.0, abs=0.05)
    assert result["correlation"] is None

    # evals.json itself stands for its folder; the human output has the table and the fit's details
    code, out, err = run_cli([rl / "evals.json", "--bootstrap", "0", "--plot", tmp_path / "one.png"], capsys)
    assert code == 0, err
    assert "1 RL branch; each fitted with Eq. 12" in out and "x_sft (exaFLOPs)" in out
    assert "P_start            72.00 (fixed)" in out
    assert_png(tmp_path / "one.png")


def test_a_folder_of_rl_runs_gives_the_table_and_the_correlation(tmp_path, capsys):
    root = write_experiment(tmp_path / "exp")
    args = [root, "--bootstrap", "0", "--plot", tmp_path / "plots" / "exp.png", "--csv", tmp_path / "table.csv",
            "--markdown", tmp_path / "table.md"]
    result = run_json(args, capsys)
    rows = result["rows"]
    assert [(r["name"], r["dataset"], r["sft_step"]) for r in rows] == [
        ("pure-rl", "-", 0), ("easy/rl-200", "easy", 200), ("easy/rl-300", "easy", 300),
        ("hard/rl-300", "hard", 300), ("hard/rl-400", "hard", 400), ("uniform/rl-300", "uniform", 300)]
    expected_a = [71.0, 70.0, 74.0, 80.0, 79.0, 77.0]
    assert [r["A_post"] for r in rows] == pytest.approx(expected_a, abs=0.05)
    assert [r["PL_rl"] for r in rows] == pytest.approx([25.0, 4.0, 5.0, 8.0, 6.0, 7.0], abs=0.05)

    correlation = result["correlation"]
    best = [(d["dataset"], d["best_sft_step"]) for d in correlation["datasets"]]
    assert best == [("hard", 300), ("uniform", 300), ("easy", 300)]
    ceilings = [d["best_A_post"] for d in correlation["datasets"]]
    assert correlation["r"] == pytest.approx(np.corrcoef([0.5, 0.55, 0.6], ceilings)[0, 1])
    assert correlation["r"] == pytest.approx(-1.0, abs=1e-4)
    assert correlation["slope"] == pytest.approx(-60.0, abs=0.5)

    plots = [Path(p).name for p in result["plots"]]
    assert plots == ["exp-easy.png", "exp-hard.png", "exp-uniform.png", "exp-min-loss.png"]
    for plot in result["plots"]:
        assert_png(plot)
    records = list(csv.DictReader((tmp_path / "table.csv").open(encoding="utf-8")))
    assert [r["name"] for r in records] == [r["name"] for r in rows]
    markdown = (tmp_path / "table.md").read_text()
    assert "| hard | 300 | 3 | stable | 72.0 | 8.0 | 80.0 |" in markdown
    assert "Pearson r = -1.000" in markdown

    code, out, err = run_cli([root, "--bootstrap", "0"], capsys)
    assert code == 0, err
    assert out.startswith("6 RL branches; each fitted with Eq. 12")
    assert "Pearson r = -1.000" in out


def test_rl_run_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli([empty], capsys)
    assert code == 2 and "no evals.json in it or below it" in err

    rl = write_rl_run(tmp_path / "rl", "embedded:base", 40.0, 60.0)
    (rl / "evals.json").write_text(json.dumps([{"step": 0, "flops": -1.0, "avg_at_n": 0.4}]))
    assert f"{rl / 'evals.json'} entry 1: field 'flops' must be >= 0" in run_cli([rl], capsys)[2]

    (rl / "config.yaml").unlink()
    (rl / "evals.json").write_text(json.dumps([{"step": 0, "flops": 0.0, "avg_at_n": 0.4}]))
    assert f"{rl / 'config.yaml'}: no such file" in run_cli([rl], capsys)[2]

    points = write_points_csv(tmp_path / "points.csv")
    assert "either points files or RL run folders, not both" in run_cli([points, rl], capsys)[2]
    write_rl_run(tmp_path / "ok", "embedded:base", 40.0, 60.0)
    assert "--p-start is for points files" in run_cli([tmp_path / "ok", "--p-start", "3"], capsys)[2]


def test_a_failed_branch_fit_is_reported_not_fatal(tmp_path, capsys):
    rl = write_rl_run(tmp_path / "short", "embedded:base", 40.0, 60.0)
    evals = json.loads((rl / "evals.json").read_text())[:3]
    (rl / "evals.json").write_text(json.dumps(evals))
    code, out, err = run_cli([rl], capsys)
    assert code == 0 and "fit failed: fit_ceiling needs at least 4 points" in out
    code, out, err = run_cli([rl, "--plot", tmp_path / "x.png"], capsys)
    assert code == 1 and "no plot: the fit of short failed" in err and not (tmp_path / "x.png").exists()
