"""The experiment runners (``npu-retu experiment``): branch choice, compute budgets, the verdicts of
the findings, and short end-to-end runs of each experiment at toy sizes (quick base model).

The toy runs check the wiring, the resumability and the report, not the findings: the committed
reports under docs/experiments/ are the full-size runs.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from npu_retu.experiments.transition import choose_branch_steps
from npu_retu.experiments import common


def sft_done(steps, phases, losses=None, has_checkpoint=None, picked=None, min_step=None):
    losses = losses or [1.0] * len(steps)
    return {
        "run_dir": "/nowhere",
        "picked_step": picked,
        "min_val_step": min_step,
        "curve": {
            "steps": steps,
            "flops": [10.0 * s for s in steps],
            "losses": losses,
            "phases": phases,
            "has_checkpoint": has_checkpoint or [True] * len(steps),
        },
    }


def test_branch_steps_take_one_checkpoint_per_sub_phase():
    steps = [40, 80, 120, 160, 200, 240, 280, 320, 360]
    phases = ["adaptive", "adaptive", "adaptive", "stable", "stable", "mild", "mild", "severe", "severe"]
    done = sft_done(steps, phases, picked=200, min_step=200)
    assert choose_branch_steps(done) == {"adaptive": 80, "stable": 200, "mild": 240, "severe": 360}


def test_branch_steps_skip_missing_checkpoints_and_absent_phases():
    steps = [40, 80, 120, 160]
    phases = ["adaptive", "adaptive", "stable", "stable"]
    done = sft_done(steps, phases, has_checkpoint=[True, False, True, True], picked=160, min_step=160)
    # 80 has no checkpoint: the adaptive pick is the middle of the remaining [40]
    assert choose_branch_steps(done) == {"adaptive": 40, "stable": 160, "mild": None, "severe": None}


def test_phase_spans_cover_halfway_to_the_neighbouring_points(tmp_path):
    from npu_retu.ceiling.tables import sft_phase_spans

    phases = {"steps": [1, 2, 3, 4], "flops": [10.0, 20.0, 30.0, 40.0], "phases": ["adaptive", "adaptive", "stable", "severe"],
              "L_min": 0.5}
    (tmp_path / "phases.json").write_text(json.dumps(phases))
    assert sft_phase_spans(tmp_path) == [(0.0, 15.0, "adaptive"), (15.0, 25.0, "adaptive"), (25.0, 35.0, "stable"),
                                         (35.0, 45.0, "severe")]


def row(dataset, a, ci, p_sft=50.0, sub_phase=None):
    return SimpleNamespace(dataset=dataset, A_post=a, a_ci=ci, P_sft=p_sft, PL_rl=a - p_sft, sub_phase=sub_phase)


def test_transition_findings_verdicts():
    from npu_retu.experiments.transition import transition_findings

    rows = [row("d", 60, (58, 62), 40, "adaptive"), row("d", 75, (73, 77), 55, "stable"),
            row("d", 70, (68, 72), 54, "mild"), row("d", 64, (62, 66), 50, "severe")]
    held = {f.claim: f.held for f in transition_findings(rows)}
    assert held == {
        "switching to RL in the Stable or Mild sub-phase gives the highest post-training ceiling A_post": True,
        "more SFT (Stable/Mild rather than Adaptive) gives a higher starting score P_sft": True,
        "training on into Severe overfitting lowers the ceiling compared with switching at Stable/Mild": True,
    }
    # Severe above Stable/Mild but inside its interval: inconclusive, not "did not hold"
    rows[3] = row("d", 76, (74, 78), 50, "severe")
    assert transition_findings(rows)[2].held is None
    rows[3] = row("d", 80, (79, 81), 50, "severe")
    assert transition_findings(rows)[2].held is False
    rows[3] = row("d", 64, (62, 66), 50, "severe")
    # the adaptive branch on top and clearly separated: the finding did not hold
    rows[0] = row("d", 90, (88, 92), 40, "adaptive")
    first = transition_findings(rows)[0]
    assert first.held is False
    # on top but inside the interval of the best Stable/Mild branch: inconclusive
    rows[0] = row("d", 76, (72, 80), 40, "adaptive")
    assert transition_findings(rows)[0].held is None


def test_data_findings_verdicts():
    from npu_retu.experiments.data import DataSettings, data_findings

    settings = DataSettings(scale=("u-1", "u-2", "u-3"), difficulty=("e", "u-2", "h"))
    rows = [row("u-1", 50, (48, 52)), row("u-2", 55, (53, 57)), row("u-3", 60, (58, 62)),
            row("e", 52, (51, 53)), row("h", 54, (50, 58))]
    findings = data_findings(rows, settings, {"r": -0.95, "p_value": 0.01, "n": 5})
    assert [f.held for f in findings] == [True, None, True]  # easy->hard rises but e and h intervals overlap
    findings = data_findings(rows, settings, {"r": 0.2, "p_value": 0.7, "n": 5})
    assert findings[2].held is False
    # strongly negative but not significant (3 data sets): inconclusive
    assert data_findings(rows, settings, {"r": -0.73, "p_value": 0.48, "n": 3})[2].held is None
    # the largest set had not reached its minimum: the paper's comparison was not made
    unfinished = data_findings(rows, settings, {"r": None, "reason": "-"}, frozenset({"u-3"}))
    assert unfinished[0].held is None and "had not reached its minimum" in unfinished[0].evidence
    rows[2] = row("u-3", 40, (38, 42))  # the largest set clearly worst
    assert data_findings(rows, settings, {"r": None, "reason": "too few"})[0].held is False


def test_paradigm_findings_verdicts():
    from npu_retu.experiments.paradigms import paradigm_findings

    summary = {
        "SFT-then-RL": {"start": 45.0, "final": 64.0, "final_stderr": 3.0, "best": 65.0, "A": 66.0, "A_ci": (64.0, 68.0)},
        "Pure-RL": {"start": 5.0, "final": 9.0, "final_stderr": 1.0, "best": 9.0, "A": 12.0, "A_ci": (8.0, 20.0)},
        "Pure-SFT": {"start": 5.0, "final": 48.0, "final_stderr": None, "best": 50.0, "A": 49.0, "A_ci": (47.0, 51.0)},
    }
    assert [f.held for f in paradigm_findings(summary)] == [True, True, True]
    summary["Pure-SFT"]["A_ci"] = (45.0, 70.0)  # overlapping intervals: cannot tell
    assert paradigm_findings(summary)[0].held is None


def test_eval_every_spreads_evaluations_over_the_budget():
    from transformers import AutoConfig

    from npu_retu.config import load_config
    from npu_retu.experiments.paradigms import _eval_every
    from npu_retu.flops import ModelShape
    from npu_retu.models.modeling import resolve_path
    from npu_retu.trainer.rl import rl_step_flops

    cfg = load_config("configs/demo_cpu.yaml")
    shape = ModelShape.from_hf_config(AutoConfig.from_pretrained(str(resolve_path(cfg.model.path))))
    length = 128 // 2 + 200 // 2
    per_step = rl_step_flops(shape, [length] * (16 * 8 * 2), [length] * (8 * 8))  # 2 draws of 16 prompts, 8 kept, n = 8
    assert _eval_every(cfg, 80 * per_step, 8) == 10
    assert _eval_every(cfg, 3 * per_step, 8) == 1


def toy_overrides():
    return [
        "run.progress=false", "model.path=embedded:base",
        "sft.global_batch_size=8", "sft.micro_batch_size=8", "sft.optim.warmup_steps=1",
        "rl.train_files=[embedded:rl-easy-200]", "rl.train_batch_prompts=2", "rl.gen_batch_prompts=2", "rl.mini_batch_prompts=2",
        "rl.algo.n=2", "rl.algo.max_draws=1", "rl.max_response_length=16", "rl.micro_batch_size=4", "rl.reward.num_workers=1",
        "eval.max_problems=6", "eval.n=2", "eval.ks=[1,2]", "eval.max_new_tokens=16",
    ]


def test_transition_runs_end_to_end_and_resumes(tmp_path, capsys):
    from npu_retu.cli import main

    out = tmp_path / "transition"
    argv = ["experiment", "transition", "--out", str(out), "--sft-steps", "12", "--save-every", "2",
            "--rl-steps", "4", "--rl-eval-every", "1", *toy_overrides()]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    chosen = {p: s for p, s in results["branch_steps"].items() if s is not None}
    assert "stable" in chosen and chosen["stable"] == results["sft"]["picked_step"]
    rows = results["rows"]
    assert [r["sft_step"] for r in rows] == list(chosen.values())
    for r in rows:  # each branch: 5 evaluation points, P_sft is its step-0 score
        run = out / "runs" / f"rl-{r['sub_phase']}-step{r['sft_step']}"
        evals = json.loads((run / "evals.json").read_text())
        assert [e["step"] for e in evals] == [0, 1, 2, 3, 4]
        assert r["P_sft"] == pytest.approx(100 * evals[0]["avg_at_n"])
        assert r["n_points"] == 5
    # the SFT checkpoints' scores equal the branches' step-0 scores (same model, problems and seed)
    curve = {p["step"]: p["avg_at_n"] for p in results["sft_curve"]}
    for r in rows:
        assert 100 * curve[r["sft_step"]] == pytest.approx(r["P_sft"])
    report = (out / "report.md").read_text()
    assert "## Did the paper's findings hold in miniature?" in report
    assert (out / "plasticity.png").stat().st_size > 0 and (out / "plasticity.csv").is_file()
    # a second run reuses every finished stage and rewrites the same numbers
    before = (out / "plasticity.csv").read_text()
    capsys.readouterr()
    assert main(argv) == 0
    assert "SFT finished earlier" in capsys.readouterr().out
    assert (out / "plasticity.csv").read_text() == before


def test_paradigms_match_the_compute_budget(tmp_path):
    from npu_retu.cli import main

    out = tmp_path / "paradigms"
    argv = ["experiment", "paradigms", "--out", str(out), "--sft-steps", "12", "--save-every", "2",
            "--rl-eval-points", "4", "--switch-step", "6", *toy_overrides()]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    budget, x_sft = results["budget_flops"], results["x_sft"]
    assert budget == pytest.approx(results["sft"]["flops"])
    assert results["switch_step"] == 6
    assert x_sft == pytest.approx(results["sft"]["curve"]["flops"][2])
    for name, spent in (("sft-then-rl", budget - x_sft), ("pure-rl", budget)):
        metrics = [json.loads(line) for line in (out / "runs" / name / "metrics.jsonl").read_text().splitlines()]
        flops = [m["flops"] for m in metrics if "train/step_flops" in m]
        # the run stops at the first step that reaches its share of the budget, not before
        assert flops[-1] >= spent and (len(flops) == 1 or flops[-2] < spent)
    s = results["summary"]
    assert s["Pure-SFT"]["compute_used"] == pytest.approx(budget)
    assert s["SFT-then-RL"]["compute_used"] >= budget and s["Pure-RL"]["compute_used"] >= budget
    assert "Pure-RL" in (out / "report.md").read_text()


def test_data_experiment_correlates_min_loss_with_the_ceiling(tmp_path):
    from npu_retu.cli import main

    out = tmp_path / "data"
    argv = ["experiment", "data", "--out", str(out), "--scale", "uniform-200", "uniform-500", "--difficulty", "easy-200",
            "uniform-200", "--sft-steps", "8", "--save-every", "2", "--rl-steps", "4", "--rl-eval-every", "1", *toy_overrides()]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["dataset"] for r in results["rows"]] == ["uniform-200", "uniform-500", "easy-200"]
    for r in results["rows"]:  # RL started from each run's minimum-validation-loss checkpoint
        sft = results["sft"][r["dataset"]]
        assert r["sft_step"] == sft["picked_step"]
        curve = sft["curve"]
        assert min(curve["losses"]) == pytest.approx(sft["min_val_loss"])
        assert r["min_val_loss"] == pytest.approx(sft["min_val_loss"])
    corr = results["correlation"]
    fitted = [r for r in results["rows"] if r["A_post"] is not None]
    assert corr["n"] == len(fitted)
    if corr["r"] is not None:
        import numpy as np

        expected = np.corrcoef([r["min_val_loss"] for r in fitted], [r["A_post"] for r in fitted])[0, 1]
        assert corr["r"] == pytest.approx(expected)
    else:  # the toy model scores 0 everywhere: every ceiling is equal and r is undefined, which is said
        assert len({round(r["A_post"], 9) for r in fitted}) <= 1 and "undefined" in corr["reason"]
    assert (out / "min_loss_vs_ceiling.png").stat().st_size > 0


def test_rl_compute_budget_must_not_be_negative():
    from npu_retu.config import ConfigError, load_config

    assert load_config("configs/demo_cpu.yaml", ["rl.max_flops=2.5e13"]).rl.max_flops == 2.5e13
    with pytest.raises(ConfigError, match="rl.max_flops"):
        load_config("configs/demo_cpu.yaml", ["rl.max_flops=-1"])


def test_a_finished_stage_is_not_reused_for_other_settings(tmp_path):
    from npu_retu.errors import UserError

    folder = tmp_path / "runs" / "sft"
    folder.mkdir(parents=True)
    done = {"steps": 12, "min_val_loss": 1.0, "min_val_step": 12, "curve": {"steps": [4, 8, 12]}}
    (folder / "done.json").write_text(json.dumps(done))
    from npu_retu.config import load_config

    cfg = load_config("configs/demo_cpu.yaml")
    again = common.sft_stage(cfg, tmp_path / "runs", "sft", train_file="embedded:sft-uniform-500", steps=12, every=4, say=lambda *a: None)
    assert again == done
    with pytest.raises(UserError, match="SFT steps 12, but this run asks for 24"):
        common.sft_stage(cfg, tmp_path / "runs", "sft", train_file="embedded:sft-uniform-500", steps=24, every=4, say=lambda *a: None)
