"""``npu-retu phases`` on run folders and metrics files, and the phase plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from npu_retu.cli import main
from npu_retu.monitor import build_report
from npu_retu.report.plots import flops_scale, plot_phases

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# The U-shaped curve of test_monitor: L_min = 1.0 at step 600; stable {500, 600, 700};
# adaptive 100-400; mild 800, 900; severe 1000, 1100.
STEPS = [100 * (i + 1) for i in range(11)]
LOSSES = [2.0, 1.5, 1.2, 1.05, 1.01, 1.0, 1.015, 1.03, 1.06, 1.12, 1.3]
PHASES = ["adaptive"] * 4 + ["stable"] * 3 + ["mild"] * 2 + ["severe"] * 2


def write_run(run_dir: Path) -> Path:
    """A run folder whose checkpoints make the picks hand-checkable:

    step-500 (trainer_state.pt), step-700 and step-900 (model.safetensors) are complete; step 600 exists
    only as a half-written .tmp-step-600 and step-800 is an empty folder: neither counts. So the stable
    pick is 500 (1.01 < 1.015) and the mild pick 900.
    """
    rows = []
    for step, loss in zip(STEPS, LOSSES):
        rows.append({"step": step, "flops": step * 1e16, "train/loss": loss + 0.3, "lr": 1e-5})
        if step == 600:  # logged before a crash, then again after --resume: the last row must win
            rows.append({"step": step, "flops": step * 1e16, "val/loss": 1.4})
            rows.append({"step": 550, "flops": 550 * 1e16, "train/loss": 1.2})
        rows.append({"step": step, "flops": step * 1e16, "val/loss": loss})
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = run_dir / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")

    ckpts = run_dir / "checkpoints"
    for name, marker in [("step-500", "trainer_state.pt"), ("step-700", "model.safetensors"),
                         ("step-900", "model.safetensors"), (".tmp-step-600", "model.safetensors")]:
        (ckpts / name).mkdir(parents=True)
        (ckpts / name / marker).write_bytes(b"x")
    (ckpts / "step-800").mkdir()
    (ckpts / "step-1000-notes.txt").write_text("not a checkpoint")
    return metrics


def assert_png(path: Path) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 10_000  # a real figure, not an empty canvas


def test_run_folder_json(tmp_path, capsys):
    run_dir = tmp_path / "run"
    write_run(run_dir)
    assert main(["phases", str(run_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["steps"] == STEPS
    assert out["losses"][5] == 1.0  # the re-logged row won over 1.4
    assert out["phases"] == PHASES
    assert out["checkpoint_steps"] == [500, 700, 900]
    assert out["has_checkpoint"] == [s in (500, 700, 900) for s in STEPS]
    assert out["L_min"] == 1.0 and out["L_min_step"] == 600
    assert out["thresholds"]["stable"] == pytest.approx(1.02) and out["thresholds"]["severe"] == pytest.approx(1.1)
    assert out["pick"] == 500 and out["pick_phase"] == "stable"
    assert out["plot"] == str(run_dir / "phases.png")
    assert_png(run_dir / "phases.png")
    assert not (run_dir / ".tmp-phases.png").exists()


def test_run_folder_table_and_mild_pick(tmp_path, capsys):
    run_dir = tmp_path / "run"
    write_run(run_dir)
    assert main(["phases", str(run_dir), "--no-plot"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "picked checkpoint: step 500 (stable)"
    assert any("exaFLOPs" in line for line in lines)
    pick_rows = [line for line in lines if "<- pick" in line]
    assert len(pick_rows) == 1 and pick_rows[0].split()[:2] == ["500", "5"]  # step 500 = 5 exaFLOPs
    row_600 = next(line for line in lines if line.split()[:1] == ["600"])
    assert row_600.split()[2:6] == ["1.0000", "1.0000", "stable", "no"]
    assert not (run_dir / "phases.png").exists()

    assert main(["phases", str(run_dir), "--pick", "mild", "--no-plot"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "picked checkpoint: step 900 (mild)"


def test_metrics_file_counts_every_point_unless_checkpoints_are_required(tmp_path, capsys):
    metrics = write_run(tmp_path / "run")
    assert main(["phases", str(metrics), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pick"] == 600 and out["plot"] is None and out["has_checkpoint"] == [True] * 11
    assert not (tmp_path / "run" / "phases.png").exists()

    plot = tmp_path / "figs" / "curve.png"
    assert main(["phases", str(metrics), "--json", "--require-checkpoints", "--plot", str(plot), "--x", "flops",
                 "--delta", "0.05", "--delta2", "0.2"]) == 0
    out = json.loads(capsys.readouterr().out)
    # delta 0.05: stable <= 1.05 = {400..800}; checkpoints among them: 500 (1.01), 700 (1.015) -> 500.
    assert out["phases"] == ["adaptive"] * 3 + ["stable"] * 5 + ["mild"] * 2 + ["severe"]
    assert out["pick"] == 500 and out["checkpoint_steps"] == [500, 700, 900]
    assert_png(plot)


def test_plot_phases_directly(tmp_path):
    report = build_report([1, 2, 3, 4, 5, 6], [1e12 * i for i in range(1, 7)], [2.0, 1.0, 1.01, 1.05, 1.015, 1.2])
    assert [p.value for p in report.phases] == ["adaptive", "stable", "stable", "unassigned", "stable", "severe"]
    path = plot_phases(report, tmp_path / "p.png", x="flops", title="excursion")
    assert path == tmp_path / "p.png"
    assert_png(path)
    assert flops_scale([5e17, 2e18]) == (1e18, "exaFLOPs") and flops_scale([3e12]) == (1e12, "teraFLOPs")
    assert flops_scale([12.0]) == (1.0, "FLOPs")


def error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1
    return lines[0]


def test_errors_name_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "metrics.jsonl"
    bad.write_text('{"step": 1, "flops": 1.0, "val/loss": 2.0}\n{"step": 2, "flops": 2.0}\n{"step": 3, "val/loss": \n')
    assert main(["phases", str(bad)]) == 2
    assert f"{bad} line 3: not valid JSON" in error_line(capsys)

    bad.write_text('{"step": 1, "flops": 1.0, "val/loss": 2.0}\n{"step": 2, "flops": 2.0, "val/loss": 0}\n')
    assert main(["phases", str(bad)]) == 2
    assert f"{bad} line 2: field 'val/loss' must be > 0" in error_line(capsys)

    bad.write_text('{"step": "7", "flops": 1.0, "val/loss": 2.0}\n')
    assert main(["phases", str(bad)]) == 2
    assert f"{bad} line 1: field 'step' must be an integer" in error_line(capsys)

    bad.write_text('{"step": 1, "flops": 1.0, "train/loss": 2.0}\n')
    assert main(["phases", str(bad)]) == 2
    assert "no rows with 'val/loss'" in error_line(capsys)

    assert main(["phases", str(tmp_path / "missing")]) == 2
    assert "missing: no such run folder or metrics file" in error_line(capsys)

    empty_run = tmp_path / "empty_run"
    empty_run.mkdir()
    assert main(["phases", str(empty_run)]) == 2
    assert "needs metrics.jsonl" in error_line(capsys)


def test_importing_the_command_stays_light():
    code = ("import sys, npu_retu.commands.phases, npu_retu.report.plots; "
            "print(sorted(m for m in ('torch', 'matplotlib', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
