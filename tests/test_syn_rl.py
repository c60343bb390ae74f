"""LUFFY / SRFT / UPT end to end on the embedded default: short runs whose logged compute is Eq. 24
(LUFFY, SRFT) and Eq. 25-27 (UPT) recomputed from the logged lengths and counts, the metrics a user
of these methods looks for, bad inputs, and exact resume after SIGKILL.

The loss values themselves are checked by hand in tests/test_syn_losses.py.
"""

from __future__ import annotations

import functools

import pytest

from npu_retu.config import load_config
from npu_retu.data.errors import DataError
from npu_retu.flops import ModelShape, forward_flops_per_token
from test_rl_trainer import DigitReward, kill_after_first_checkpoint_then_resume, metric_rows, rl_overrides, run_rl_process

PROMPTS, N = 4, 4  # prompts per step, samples per prompt (LUFFY / SRFT: 3 rollouts + 1 expert)


def syn_overrides(tmp_path, name, algorithm, **extra):
    values = {
        "rl.algorithm": algorithm,
        "rl.train_files": "[embedded:mix-easy-200]",
        "rl.train_batch_prompts": PROMPTS,
        "rl.gen_batch_prompts": PROMPTS,
        "rl.mini_batch_prompts": 2,
        "rl.algo.n": N,
        "rl.max_response_length": 160,  # the expert trajectories of easy problems fit
        "rl.max_steps": 2,
        "rl.save_every": 1,
    }
    values.update(extra)
    overrides = [o for o in rl_overrides(tmp_path, name) if o.split("=")[0] not in values and not o.startswith("rl.algo.max_draws")]
    return overrides + [f"{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="module", params=["luffy", "srft", "upt"])
def syn_run(request, tmp_path_factory):
    from npu_retu.trainer.rl import train_rl

    tmp = tmp_path_factory.mktemp(request.param)
    cfg = load_config(None, syn_overrides(tmp, request.param, request.param))
    result = train_rl(cfg, quiet=True, reward=DigitReward())
    return request.param, cfg, result


def model_shape(result) -> ModelShape:
    from transformers import AutoConfig

    return ModelShape.from_hf_config(AutoConfig.from_pretrained(result.final_checkpoint))


def test_logged_compute_is_eq24_or_eq27_of_the_logged_counts(syn_run):
    algorithm, cfg, result = syn_run
    shape = model_shape(result)
    rows = metric_rows(result.run_dir)
    assert sorted(rows) == [1, 2]
    for step, row in rows.items():
        on_n, on_tok = row["flops/on_sequences"], row["flops/on_tokens"]
        off_n, off_tok = row["flops/off_sequences"], row["flops/off_tokens"]
        f = functools.partial(forward_flops_per_token, shape)
        s_off = off_tok / off_n if off_n else 0.0
        if algorithm in ("luffy", "srft"):
            # Eq. 24: F = 4 [(B G) S_on + (B N) S_off] F_fwd, G = 3 rollouts and N = 1 expert per prompt
            # (F_fwd at each kind's own mean length, as npu_retu.flops.hybrid_step_flops documents)
            assert (on_n, off_n) == (PROMPTS * (N - 1), PROMPTS * 1)
            assert row["flops/gen_sequences"] == on_n + off_n and row["flops/gen_tokens"] == on_tok + off_tok
            s_on = on_tok / on_n
            expected = 4 * (on_n * s_on * f(s_on) + off_n * s_off * f(s_off))
        else:
            # Eq. 27: F = [G S_on + 3 (N_on S_on + N_off S_off)] F_fwd with the batch's real N_on, N_off and
            # S_on the mean length of every generated rollout (Eq. 25)
            assert row["flops/gen_sequences"] == PROMPTS * N
            assert row["upt/groups_sft"] + row["upt/groups_rl"] == PROMPTS
            assert (on_n, off_n) == (N * row["upt/groups_rl"], row["upt/groups_sft"])
            g_s_on = row["flops/gen_tokens"]  # G S_on summed over the batch
            s_on = g_s_on / row["flops/gen_sequences"]
            expected = g_s_on * f(s_on) + 3 * (on_n * s_on * f(s_on) + off_n * s_off * f(s_off))
        assert row["train/step_flops"] == pytest.approx(expected, rel=1e-12), (algorithm, step)
    assert result.flops == pytest.approx(sum(r["train/step_flops"] for r in rows.values()), rel=1e-12)


def test_the_metrics_a_user_of_these_methods_looks_for(syn_run):
    algorithm, cfg, result = syn_run
    for step, row in metric_rows(result.run_dir).items():
        share = row["mix/expert_token_share"]
        assert row["mix/on_policy_token_share"] == pytest.approx(1.0 - share, abs=1e-12)
        expert_tokens, all_tokens = row["flops/off_tokens"], row["flops/on_tokens"] + row["flops/off_tokens"]
        if algorithm != "upt":
            assert 0.0 < share < 1.0  # every group holds 3 rollouts and 1 expert
        else:  # experts are trained exactly when the gate sent a group to SFT
            assert (share > 0.0) == (row["upt/groups_sft"] > 0)
        if row["flops/off_sequences"] > 0:
            assert 0.0 < row["actor/expert_prob_mean"] < 1.0
        # the expert trajectories carry the answer: the digit reward scores every one of them 1
        if row["mix/expert_sequences"] > 0:
            assert row["mix/expert_reward_mean"] == 1.0
        assert row["actor/entropy"] > 0 and row["actor/grad_norm"] > 0
        assert expert_tokens <= all_tokens
        if algorithm == "srft":
            # 0.5 exp(-H) and 0.1 exp(H) with the logged mean entropy in between
            assert 0.0 < row["actor/srft_sft_weight"] <= 0.5 and row["actor/srft_entropy_H"] > 0
        if algorithm == "upt":
            assert row["actor/skipped_steps"] in (0.0, 1.0, 2.0)  # 4 prompts in mini-batches of 2: two optimizer steps
        # rollout accuracy is over the generated samples only, not the experts
        assert row["rollout/sequences"] == PROMPTS * (N - 1 if algorithm != "upt" else N)


def test_an_rl_file_without_expert_trajectories_is_an_error_naming_file_and_row(tmp_path):
    from npu_retu.trainer.rl import train_rl

    cfg = load_config(None, syn_overrides(tmp_path, "no-experts", "luffy", **{"rl.train_files": "[embedded:rl-easy-200]"}))
    with pytest.raises(DataError) as error:
        train_rl(cfg, quiet=True, reward=DigitReward())
    message = str(error.value)
    assert "rl-easy-200.jsonl" in message and "experts" in message and "rl.expert_files" in message


def test_expert_files_join_rl_prompts_by_prompt_text(tmp_path):
    from npu_retu.trainer.rl import train_rl

    # the RL prompts of rl-easy-200 and their expert trajectories from the SFT-format mix set
    cfg = load_config(None, syn_overrides(tmp_path, "joined", "upt", **{
        "rl.train_files": "[embedded:rl-easy-200]", "rl.expert_files": "[embedded:mix-easy-200]", "rl.max_steps": 1}))
    result = train_rl(cfg, quiet=True, reward=DigitReward())
    assert sorted(metric_rows(result.run_dir)) == [1]


def test_upt_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, tmp_path_factory):
    # the uninterrupted run in a fresh process too, like the killed and resumed ones: the pytest
    # process's torch thread count may have been changed by an earlier test, and a different count
    # sums the gradients in another order (a grad-norm difference of ~1e-6 relative)
    reference_dir = tmp_path_factory.mktemp("upt-reference")
    proc = run_rl_process(reference_dir, "fresh", syn_overrides(reference_dir, "upt", "upt", **{"rl.max_steps": 3}))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    reference_rows = metric_rows(reference_dir / "upt")
    overrides = syn_overrides(tmp_path, "upt", "upt", **{"rl.max_steps": 3})
    resumed = kill_after_first_checkpoint_then_resume(tmp_path, "upt", overrides, 3)
    assert sorted(resumed) == [1, 2, 3]
    for step in (1, 2, 3):
        for key in ("rollout/accuracy", "actor/pg_loss", "actor/sft_loss", "actor/grad_norm", "upt/groups_sft", "flops"):
            assert resumed[step][key] == pytest.approx(reference_rows[step][key], rel=1e-6, abs=1e-9), (step, key)
