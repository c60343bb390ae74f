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


def paradigm_summary():
    return {
        "SFT-then-RL": {"start": 45.0, "final": 64.0, "final_stderr": 3.0, "best": 65.0, "A": 66.0, "A_ci": (64.0, 68.0),
                        "scores": [45.0, 55.0, 60.0, 64.0]},
        "Pure-RL": {"start": 5.0, "final": 9.0, "final_stderr": 1.0, "best": 9.0, "A": 12.0, "A_ci": (8.0, 20.0),
                    "scores": [10.0, 11.0, 12.0, 12.0]},
        "Pure-SFT": {"start": 5.0, "final": 48.0, "final_stderr": None, "best": 50.0, "A": 49.0, "A_ci": (47.0, 51.0),
                     "scores": [5.0, 30.0, 48.0]},
    }


def test_paradigm_findings_verdicts():
    from npu_retu.experiments.paradigms import paradigm_findings

    summary = paradigm_summary()
    assert [f.held for f in paradigm_findings(summary)] == [True, True, True]
    summary["Pure-SFT"]["A_ci"] = (45.0, 70.0)  # overlapping intervals: cannot tell
    assert paradigm_findings(summary)[0].held is None


def with_syn(summary, diffs):
    """``summary`` plus LUFFY / SRFT / UPT rows, and SFT-then-RL's paired end-of-budget differences
    against them ({name: (difference, stderr)})."""
    for name, a, ci in (("LUFFY", 30.0, (28.0, 32.0)), ("SRFT", 25.0, (20.0, 30.0)), ("UPT", 20.0, (18.0, 22.0))):
        summary[name] = {"start": 10.0, "final": a - 2, "final_stderr": 2.0, "best": a, "A": a, "A_ci": ci,
                         "scores": [10.0, 12.0, 11.0, 15.0]}
    summary["end_vs_syn"] = {k: {"difference": d, "stderr": se} for k, (d, se) in diffs.items()}
    return summary


def test_paradigm_findings_with_the_synchronized_methods():
    from npu_retu.experiments.paradigms import paradigm_findings

    far = {"LUFFY": (30.0, 3.0), "SRFT": (35.0, 3.0), "UPT": (40.0, 3.0)}
    findings = paradigm_findings(with_syn(paradigm_summary(), far))
    claims = [f.claim for f in findings]
    assert claims[3] == "SFT-then-RL ends the budget above every Syn-SFT-RL method (LUFFY, SRFT, UPT)"
    assert claims[4].startswith("SRFT's score fluctuates more than Pure-RL's")
    assert [f.held for f in findings] == [True, True, True, True, True]
    # the ceiling finding compares with every paradigm that ran: LUFFY's interval reaching SFT-then-RL's
    s = with_syn(paradigm_summary(), far)
    s["LUFFY"]["A_ci"] = (28.0, 65.0)
    first = paradigm_findings(s)[0]
    assert first.held is None and "LUFFY" in first.evidence and "UPT 20.0" in first.evidence
    s["LUFFY"]["A"], s["LUFFY"]["A_ci"] = 80.0, (75.0, 85.0)  # a synchronized method clearly higher
    assert paradigm_findings(s)[0].held is False
    # above every method by more than 2 s.e.: held; below one by more than 2: did not hold; else inconclusive
    assert paradigm_findings(with_syn(paradigm_summary(), {**far, "SRFT": (5.0, 2.0)}))[3].held is True  # 2.5 s.e.
    assert paradigm_findings(with_syn(paradigm_summary(), {**far, "SRFT": (3.0, 2.0)}))[3].held is None  # 1.5 s.e.
    below = paradigm_findings(with_syn(paradigm_summary(), {**far, "UPT": (-5.0, 2.0)}))
    assert below[3].held is False and "minus UPT -5.0 points, standard error 2.0 (-2.5 s.e.)" in below[3].evidence
    assert below[1].held is False  # ... so SFT-then-RL does not score highest either
    assert paradigm_findings(with_syn(paradigm_summary(), {**far, "UPT": (-3.0, 2.0)}))[3].held is None
    # a method without a paired difference: cannot be called held
    assert paradigm_findings(with_syn(paradigm_summary(), {"LUFFY": (30.0, 3.0), "SRFT": (35.0, 3.0)}))[3].held is None
    # without SFT-then-RL only the stability finding remains; without SRFT or Pure-RL, not that one
    s = with_syn(paradigm_summary(), far)
    del s["SFT-then-RL"]
    assert [f.claim for f in paradigm_findings(s)] == [claims[4]]
    del s["Pure-RL"]
    assert paradigm_findings(s) == []


def test_fluctuation_is_the_sample_std_of_successive_differences():
    import math

    from npu_retu.experiments.paradigms import fluctuation

    # [10, 12, 11, 15] -> differences [2, -1, 4], mean 5/3; squared deviations 1/9 + 64/9 + 49/9 = 114/9;
    # sample variance (ddof 1) 114/9 / 2 = 19/3
    assert fluctuation([10, 12, 11, 15]) == pytest.approx(math.sqrt(19 / 3)) == pytest.approx(2.516611)
    assert fluctuation([10, 11, 12, 12]) == pytest.approx(math.sqrt(1 / 3))  # [1, 1, 0]
    assert fluctuation([1.0, 2.0, 3.0, 4.0]) == 0.0  # a steady rise does not fluctuate
    assert fluctuation([10, 12]) is None and fluctuation([]) is None


def test_stability_finding_compares_srft_with_pure_rl():
    from npu_retu.experiments.paradigms import paradigm_findings

    s = paradigm_summary()
    del s["SFT-then-RL"]
    s["Pure-RL"]["algorithm"] = "dapo_d"
    s["SRFT"] = {"start": 10.0, "final": 15.0, "final_stderr": 2.0, "best": 15.0, "A": 16.0, "A_ci": None,
                 "scores": [10.0, 12.0, 11.0, 15.0]}
    (finding,) = paradigm_findings(s)
    assert finding.held is True  # 2.517 against 0.577 for Pure-RL's [10, 11, 12, 12]
    assert "SRFT 2.52 over 4 evaluations, Pure-RL 0.58 over 4; ratio 4.36x (paper 2.6x)" in finding.evidence
    assert "(dapo_d)" in finding.claim
    s["SRFT"]["scores"], s["Pure-RL"]["scores"] = s["Pure-RL"]["scores"], s["SRFT"]["scores"]
    assert paradigm_findings(s)[0].held is False
    s["SRFT"]["scores"] = [10.0, 12.0]  # fewer than 3 evaluations
    (short,) = paradigm_findings(s)
    assert short.held is None and "too few evaluations" in short.evidence
    s["SRFT"]["scores"] = list(s["Pure-RL"]["scores"])  # equal: cannot tell
    assert paradigm_findings(s)[0].held is None


def test_paradigms_option_picks_a_subset(tmp_path, capsys):
    from npu_retu.cli import main
    from npu_retu.errors import UserError
    from npu_retu.experiments.paradigms import PARADIGMS, parse_paradigms

    assert PARADIGMS == ("pure-sft", "pure-rl", "luffy", "srft", "upt", "sft-then-rl")
    assert parse_paradigms("all") == PARADIGMS
    assert parse_paradigms(",".join(reversed(PARADIGMS))) == PARADIGMS  # always in run order
    assert parse_paradigms(" SFT-then-RL, luffy ,pure-sft") == ("pure-sft", "luffy", "sft-then-rl")
    for bad, problem in (("luffy,grpo", "unknown paradigm 'grpo'"), (" , ", "no paradigm given")):
        with pytest.raises(UserError) as info:
            parse_paradigms(bad)
        assert str(info.value) == (f"--paradigms: {problem}; choose from pure-sft, pure-rl, luffy, srft, upt, sft-then-rl "
                                   "(comma-separated), or all")
    # from the command line: one line, before anything runs
    capsys.readouterr()
    assert main(["experiment", "paradigms", "--out", str(tmp_path / "p"), "--paradigms", "pure-sft,sft"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--paradigms: unknown paradigm 'sft'; choose from pure-sft, pure-rl" in err
    assert not (tmp_path / "p").exists()


def test_stage_settings_of_each_paradigm():
    from npu_retu.config import load_config
    from npu_retu.errors import UserError
    from npu_retu.experiments.paradigms import ParadigmSettings, rl_stages, syn_train_files

    cfg = load_config("configs/demo_cpu.yaml")
    assert cfg.rl.train_files == ["embedded:rl-easy-5k"] and cfg.rl.algorithm == "dapo_dc" and cfg.rl.optim.lr == 1e-4
    stages = {s.paradigm: s for s in rl_stages(cfg, ParadigmSettings(), 1000.0, 400.0)}
    assert list(stages) == ["pure-rl", "luffy", "srft", "upt", "sft-then-rl"]
    got = {p: (s.run_name, s.algorithm, s.train_files, s.lr, s.max_flops, s.from_sft) for p, s in stages.items()}
    assert got == {
        "pure-rl": ("pure-rl", "dapo_d", ("embedded:rl-easy-5k",), 1e-4, 1000.0, False),
        "luffy": ("syn-luffy", "luffy", ("embedded:mix-easy-5k",), 1e-4, 1000.0, False),
        "srft": ("syn-srft", "srft", ("embedded:mix-easy-5k",), 1e-4, 1000.0, False),
        "upt": ("syn-upt", "upt", ("embedded:mix-easy-5k",), pytest.approx(5e-4), 1000.0, False),
        "sft-then-rl": ("sft-then-rl", "dapo_dc", ("embedded:rl-easy-5k",), 1e-4, 600.0, True),
    }
    assert (stages["pure-rl"].max_steps, stages["upt"].max_steps, stages["sft-then-rl"].max_steps) == (600, 1200, 400)
    subset = rl_stages(cfg, ParadigmSettings(paradigms=("pure-sft", "upt")), 1000.0, None)
    assert [s.paradigm for s in subset] == ["upt"]
    assert rl_stages(cfg, ParadigmSettings(paradigms=("pure-sft",)), 1000.0, None) == []
    # the mix set follows rl.train_files; --syn-data replaces it; a set without a mix counterpart needs it
    hard = load_config("configs/demo_cpu.yaml", ["rl.train_files=[embedded:rl-hard-2k]"])
    assert syn_train_files(hard, ParadigmSettings()) == ["embedded:mix-hard-2k"]
    assert syn_train_files(hard, ParadigmSettings(syn_data="mine.jsonl")) == ["mine.jsonl"]
    other = load_config("configs/demo_cpu.yaml", ["rl.train_files=[embedded:rl-train]"])
    with pytest.raises(UserError, match="--syn-data: rl.train_files entry 'embedded:rl-train' has no embedded mix set"):
        rl_stages(other, ParadigmSettings(paradigms=("srft",)), 1000.0, None)
    assert [s.algorithm for s in rl_stages(other, ParadigmSettings(paradigms=("pure-rl",)), 1000.0, None)] == ["dapo_d"]


def test_report_setup_names_each_paradigms_algorithm_and_lr():
    from npu_retu.config import load_config
    from npu_retu.experiments.paradigms import PARADIGMS, ParadigmSettings, _setup_lines, rl_stages

    cfg = load_config("configs/demo_cpu.yaml")
    sft = sft_done([40, 80, 120], ["adaptive", "stable", "mild"], picked=80, min_step=80)
    sft["steps"] = 120
    settings = ParadigmSettings()
    text = "\n".join(_setup_lines(cfg, settings, sft, 80, 400.0, 1000.0, rl_stages(cfg, settings, 1000.0, 400.0)))
    assert "* Paradigms run: Pure-SFT, Pure-RL, LUFFY, SRFT, UPT, SFT-then-RL." in text
    assert "Pure-RL: `dapo_d` RL from the base model" in text and "then `dapo_dc` RL" in text
    assert "`luffy`, `srft`, `upt`, each from the base model for all of C, on `embedded:mix-easy-5k`" in text
    assert "LUFFY: 7 rollouts + 1 expert trajectory per prompt, 8 trained" in text
    assert "UPT's learning rate: 0.0005 = 5x the configured RL lr 0.0001" in text
    assert "not implemented" not in text and "not run" not in text
    subset = ParadigmSettings(paradigms=("pure-sft", "srft"))
    text = "\n".join(_setup_lines(cfg, subset, sft, None, None, 1000.0, rl_stages(cfg, subset, 1000.0, None)))
    assert "not run: Pure-RL, LUFFY, UPT, SFT-then-RL" in text and "UPT" not in text.split("not run")[1].split("\n", 1)[1]
    assert set(PARADIGMS) > set(subset.paradigms)


def test_switching_the_rl_preset_keeps_the_configured_settings():
    from npu_retu.algos.presets import RL_PRESETS
    from npu_retu.config import load_config

    cfg = load_config("configs/demo_cpu.yaml")  # dapo_dc with rl.algo.max_draws: 2 (the preset: 10)
    assert common.with_rl_algorithm(cfg, "dapo_dc") is cfg
    for name in ("dapo_d", "luffy", "srft", "upt"):
        switched = common.with_rl_algorithm(cfg, name)
        fresh = load_config("configs/demo_cpu.yaml", [f"rl.algorithm={name}"])  # what the loader makes of it
        assert switched.rl.algorithm == name
        assert switched.rl.algo == fresh.rl.algo, name
        assert switched.rl.algo.max_draws == 2
        assert {k: getattr(switched.rl.algo, k) for k in RL_PRESETS[name] if k != "max_draws"} == \
            {k: v for k, v in RL_PRESETS[name].items() if k != "max_draws"}
        assert switched.rl.optim == cfg.rl.optim and switched.rl.train_files == cfg.rl.train_files
    assert common.with_rl_algorithm(cfg, "luffy").rl.algo.rollouts_per_prompt == 7
    assert common.with_rl_algorithm(cfg, "upt").rl.algo.rollouts_per_prompt == 8


def test_rl_stage_gives_the_trainer_the_algorithm_data_and_lr(tmp_path, monkeypatch):
    import npu_retu.trainer.rl as rl_trainer
    from npu_retu.config import load_config
    from npu_retu.errors import UserError

    seen = []

    def fake_train_rl(cfg, *, resume, overwrite, quiet):
        seen.append(cfg)
        (tmp_path / "runs" / cfg.run.name).mkdir(parents=True, exist_ok=True)
        evals = [{"step": 0, "avg_at_n": 0.1}, {"step": 2, "avg_at_n": 0.2}]
        return SimpleNamespace(steps=2, flops=5.0, evals=evals)

    monkeypatch.setattr(rl_trainer, "train_rl", fake_train_rl)
    cfg = load_config("configs/demo_cpu.yaml")
    say = lambda *a: None  # noqa: E731
    done = common.rl_stage(cfg, tmp_path / "runs", "syn-upt", "embedded:base", say=say, algorithm="upt", lr=5e-4,
                           train_files=["embedded:mix-easy-5k"], max_flops=10.0, eval_every=3)
    (run_cfg,) = seen
    assert run_cfg.rl.algorithm == "upt" and run_cfg.rl.algo.loss == "upt" and not run_cfg.rl.algo.dynamic_sampling
    assert run_cfg.rl.optim.lr == 5e-4 and run_cfg.rl.optim.schedule == cfg.rl.optim.schedule
    assert run_cfg.rl.train_files == ["embedded:mix-easy-5k"] and run_cfg.rl.max_flops == 10.0 and run_cfg.rl.eval_every == 3
    assert run_cfg.model.path == "embedded:base" and run_cfg.run.name == "syn-upt"
    assert (done["algorithm"], done["train_files"], done["lr"]) == ("upt", ["embedded:mix-easy-5k"], 5e-4)
    # reused when asked the same; a finished run of other settings is refused, not mixed in
    again = common.rl_stage(cfg, tmp_path / "runs", "syn-upt", "embedded:base", say=say, algorithm="upt", lr=5e-4,
                            train_files=["embedded:mix-easy-5k"], max_flops=10.0, eval_every=3)
    assert again == done and len(seen) == 1
    with pytest.raises(UserError, match="rl algorithm upt, but this run asks for srft"):
        common.rl_stage(cfg, tmp_path / "runs", "syn-upt", "embedded:base", say=say, algorithm="srft", lr=5e-4,
                        train_files=["embedded:mix-easy-5k"])
    with pytest.raises(UserError, match="rl lr 0.0005, but this run asks for 0.0001"):
        common.rl_stage(cfg, tmp_path / "runs", "syn-upt", "embedded:base", say=say, algorithm="upt",
                        train_files=["embedded:mix-easy-5k"])
    # without the settings in done.json (an older stage), the run's config.yaml tells
    folder = tmp_path / "runs" / "pure-rl"
    folder.mkdir()
    (folder / "done.json").write_text(json.dumps({"run_dir": str(folder), "model_path": "embedded:base", "steps": 2}))
    (folder / "config.yaml").write_text("rl:\n  algorithm: dapo_dc\n  train_files: [embedded:rl-easy-5k]\n  optim: {lr: 1.0e-4}\n")
    with pytest.raises(UserError, match="rl algorithm dapo_dc, but this run asks for dapo_d"):
        common.rl_stage(cfg, tmp_path / "runs", "pure-rl", "embedded:base", say=say, algorithm="dapo_d")
    assert common.rl_stage(cfg, tmp_path / "runs", "pure-rl", "embedded:base", say=say)["steps"] == 2


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
    # DAPO_d keeps the configured draws: the same step
    assert _eval_every(common.with_rl_algorithm(cfg, "dapo_d"), 80 * per_step, 8) == 10
    # no dynamic sampling: one batch of the 8 train prompts; LUFFY / SRFT generate 7 per prompt and
    # their expert gets a forward pass too (Eq. 24), UPT generates 8; all train 8 per prompt
    syn_step = rl_step_flops(shape, [length] * (8 * 8), [length] * (8 * 8))
    for name in ("luffy", "srft", "upt"):
        syn = common.with_rl_algorithm(cfg, name)
        assert _eval_every(syn, 80 * syn_step, 8) == 10, name
        assert _eval_every(syn, 80 * per_step, 8) == round(int(80 * per_step / syn_step) / 8), name


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
            "--rl-eval-points", "4", "--switch-step", "6", "--paradigms", "pure-sft,pure-rl,sft-then-rl", *toy_overrides()]
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
    assert (s["Pure-RL"]["algorithm"], s["SFT-then-RL"]["algorithm"]) == ("dapo_d", "dapo_dc")
    assert set(results["rl_runs"]) == {"pure-rl", "sft-then-rl"} and "LUFFY" not in s
    report = (out / "report.md").read_text()
    assert "Pure-RL" in report and "not run: LUFFY, SRFT, UPT" in report and "Left out" not in report
    assert "SFT-then-RL ends the budget above every Syn-SFT-RL" not in report


@pytest.mark.slow
def test_synchronized_paradigms_run_end_to_end(tmp_path):
    """LUFFY, SRFT and UPT from the base model at the budget C, beside Pure-RL (DAPO_d), on the mix
    set of the Pure-RL prompts; then SFT-then-RL added to the same folder (the finished runs reused)."""
    from npu_retu.cli import main

    out = tmp_path / "paradigms"
    base = ["experiment", "paradigms", "--out", str(out), "--sft-steps", "12", "--save-every", "2",
            "--rl-eval-points", "3", "--switch-step", "6", *toy_overrides(),
            "rl.max_response_length=320"]  # room for the expert trajectories (eval keeps max_new_tokens=16)
    assert main([*base, "--paradigms", "pure-rl,luffy,srft,upt"]) == 0
    results = json.loads((out / "results.json").read_text())
    budget = results["budget_flops"]
    for name, algorithm in (("syn-luffy", "luffy"), ("syn-srft", "srft"), ("syn-upt", "upt"), ("pure-rl", "dapo_d")):
        import yaml

        config = yaml.safe_load((out / "runs" / name / "config.yaml").read_text())
        assert config["rl"]["algorithm"] == algorithm
        assert config["rl"]["train_files"] == (["embedded:rl-easy-200"] if algorithm == "dapo_d" else ["embedded:mix-easy-200"])
        assert config["rl"]["optim"]["lr"] == pytest.approx(1e-4 * (5 if algorithm == "upt" else 1))
        assert config["rl"]["max_flops"] == pytest.approx(budget)
    s = results["summary"]
    assert {"Pure-RL", "LUFFY", "SRFT", "UPT"} <= set(s) and "Pure-SFT" not in s and "SFT-then-RL" not in s
    report = (out / "report.md").read_text()
    assert "SRFT's score fluctuates more than Pure-RL's" in report and "5x the configured RL lr" in report
    assert main([*base, "--paradigms", "luffy,sft-then-rl"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["rl_runs"]) == {"luffy", "sft-then-rl"}
    assert set(results["summary"]["end_vs_syn"]) == {"LUFFY"}
    assert "SFT-then-RL ends the budget above every Syn-SFT-RL method (LUFFY)" in (out / "report.md").read_text()


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
