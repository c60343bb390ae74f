"""A shortened smoke run of the SFT-then-RL pipeline (the demo's pipeline at toy sizes, quick base model).

The quick base model is far too weak for RL to change its held-out score, so this checks the wiring
and the run folder, not an improvement; `npu-retu demo` (README) shows the improvement.
"""

from __future__ import annotations

import json

import pytest

from npu_retu.config import load_config


def smoke_overrides(tmp_path):
    return [
        f"run.output_dir={tmp_path}", "run.name=smoke", "run.progress=false", "model.path=embedded:base",
        "data.train_files=[embedded:sft-uniform-500]", "data.val_files=[embedded:sft-val]",
        "sft.max_steps=6", "sft.eval_every=2", "sft.save_every=2", "sft.global_batch_size=8", "sft.micro_batch_size=8",
        "sft.optim.warmup_steps=1", "monitor.stop_on_decision=false",
        "rl.train_files=[embedded:rl-easy-200]", "rl.train_batch_prompts=2", "rl.gen_batch_prompts=2", "rl.mini_batch_prompts=2",
        "rl.algo.n=2", "rl.algo.max_draws=1", "rl.max_response_length=16", "rl.max_steps=2", "rl.eval_every=2", "rl.save_every=2",
        "rl.micro_batch_size=4", "rl.reward.num_workers=1",
        "eval.max_problems=6", "eval.n=2", "eval.ks=[1,2]", "eval.max_new_tokens=16",
    ]


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    from npu_retu.trainer.pipeline import run_pipeline

    tmp = tmp_path_factory.mktemp("pipeline")
    cfg = load_config("configs/demo_cpu.yaml", smoke_overrides(tmp))
    return cfg, run_pipeline(cfg, quiet=True, overwrite=True)


def test_pipeline_runs_sft_then_rl_from_the_picked_checkpoint(pipeline_run):
    cfg, result = pipeline_run
    phases = json.loads((result.sft_run / "phases.json").read_text())
    assert phases["steps"] == [2, 4, 6]
    assert result.picked_step == phases["pick"]
    assert result.picked_checkpoint == result.sft_run / "checkpoints" / f"step-{result.picked_step:06d}"
    rl_config = (result.rl_run / "config.yaml").read_text()
    assert str(result.picked_checkpoint) in rl_config  # RL started from the monitor's pick
    evals = json.loads((result.rl_run / "evals.json").read_text())
    assert [e["step"] for e in evals] == [0, 2]
    for e in evals:  # every reported number carries its sampling settings
        assert (e["n"], e["temperature"], e["top_p"], e["max_new_tokens"], e["num_problems"]) == (2, 0.7, 1.0, 16, 6)
        detail = json.loads((result.rl_run / "eval" / f"step-{e['step']:06d}.json").read_text())
        assert len(detail["scores"]) == 6 and all(len(s) == 2 for s in detail["scores"])
        assert e["avg_at_n"] == pytest.approx(sum(map(sum, detail["scores"])) / 12)
    assert evals[0]["flops"] == 0 and evals[1]["flops"] == pytest.approx(result.rl_flops)
    c = result.comparison
    assert c["start_step"] == 0 and c["end_step"] == 2
    assert c["difference"] == pytest.approx(evals[1]["avg_at_n"] - evals[0]["avg_at_n"], abs=1e-12)


def test_pipeline_writes_the_report_and_plots(pipeline_run):
    _, result = pipeline_run
    report = result.report.read_text()
    assert "## SFT with the phase monitor" in report and "sub-phase" in report
    assert f"picked checkpoint: step {result.picked_step}" in report
    assert "| RL step | RL FLOPs | score |" in report
    assert "standard error" in report and "temperature 0.7, top-p 1.0" in report
    assert (result.run_dir / "rl_curve.png").stat().st_size > 1000
    assert (result.sft_run / "phases.png").stat().st_size > 1000


def test_resuming_a_finished_pipeline_does_not_rerun_sft(pipeline_run):
    from npu_retu.trainer.pipeline import run_pipeline

    cfg, result = pipeline_run
    before = (result.sft_run / "metrics.jsonl").read_text()
    again = run_pipeline(cfg, resume=True, quiet=True)
    assert (result.sft_run / "metrics.jsonl").read_text() == before
    assert again.picked_checkpoint == result.picked_checkpoint
    assert again.comparison["difference"] == pytest.approx(result.comparison["difference"])


def test_eval_command_reports_settings_and_matches_its_saved_scores(pipeline_run, tmp_path, capsys):
    from npu_retu.cli import main

    _, result = pipeline_run
    out = tmp_path / "eval"
    rc = main([
        "eval", "--model", str(result.picked_checkpoint), "--data", "embedded:rl-test", "--max-problems", "5",
        "-n", "2", "--k", "1", "2", "--max-new-tokens", "12", "--workers", "1", "--out", str(out), "--json",
    ])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "result.json").read_text())
    assert (printed["n"], printed["temperature"], printed["top_p"], printed["max_new_tokens"], printed["num_problems"]) == (2, 0.7, 1.0, 12, 5)
    assert printed["avg_at_n"] == pytest.approx(sum(map(sum, saved["scores"])) / 10)
    assert set(printed["pass_at_k"]) == {"1", "2"}


def test_eval_command_reads_a_benchmark_in_its_own_format(pipeline_run, capsys):
    from pathlib import Path

    from npu_retu.cli import main

    _, result = pipeline_run
    gsm8k = Path(__file__).parent / "fixtures" / "data" / "benchmarks" / "gsm8k.jsonl"
    rc = main(["eval", "--model", str(result.picked_checkpoint), "--data", str(gsm8k), "--benchmark", "gsm8k",
               "-n", "1", "--max-new-tokens", "8", "--workers", "1", "--json"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["num_problems"] == 2 and printed["reward_stats"]["gold_unparsable"] == 0


def test_eval_command_rejects_k_above_the_samples(capsys):
    from npu_retu.cli import main

    assert main(["eval", "--model", "embedded:base", "--data", "embedded:rl-test", "-n", "2", "--k", "4"]) == 2
    assert "--k values must be in 1..2" in capsys.readouterr().err


def test_the_report_says_what_the_monitors_stop_left_unspent():
    from types import SimpleNamespace

    from npu_retu.report.pipeline_report import _switch_lines

    cfg = SimpleNamespace(sft=SimpleNamespace(max_steps=400), monitor=SimpleNamespace(stop_on_decision=True))
    decision = {"action": "switch", "step": 100, "phase": "stable", "checkpoint_step": 80, "reason": "Stable for 3 points"}
    text = "\n".join(_switch_lines(cfg, {"steps": 100, "flops": 2e12}, decision))
    # 300 unspent steps at 2e12 / 100 FLOPs each
    assert "decided to switch at step 100 (stable)" in text and "100 of 400 steps" in text
    assert "about 6e+12 FLOPs, 75 % of the budget's SFT compute" in text
    cfg.monitor.stop_on_decision = False  # trained the whole budget: nothing to claim
    assert "not spent" not in "\n".join(_switch_lines(cfg, {"steps": 400, "flops": 8e12}, decision))
    assert "no switch decision within the 400-step budget" in _switch_lines(cfg, {"steps": 400, "flops": 8e12}, None)[1]
