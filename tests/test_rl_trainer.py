"""The RL trainer: batches, prompt order, FLOPs (Eq. 22), a short real run, and exact resume after SIGKILL.

The quick test base model (conftest: 60 pretraining steps) writes near-random text, so math-verify
would score every response 0 and no update would happen. These tests therefore inject a reward that
scores a response 1.0 when it contains the digit of the ground truth: the rewards are mixed, the
advantages non-zero, and every part of the update runs. The real math-verify reward is tested in
test_reward.py and runs in the pipeline smoke test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from npu_retu.config import load_config
from npu_retu.flops import ModelShape, dapo_step_flops
from npu_retu.trainer.rl import PromptSampler, make_rl_batch, rl_step_flops, rollout_seed

REPO = Path(__file__).resolve().parents[1]


class DigitReward:
    """1.0 when the response contains the ground truth's digit anywhere (a test reward, see above)."""

    def __init__(self):
        self.calls = 0

    def score(self, items):
        self.calls += 1
        return [1.0 if any(g in text for g in gts) else 0.0 for text, gts in items]

    def stats(self):
        return {"scored": self.calls}

    def close(self):
        pass


def rl_overrides(tmp_path: Path, name: str, **extra) -> list[str]:
    values = {
        "run.name": name,
        "run.output_dir": str(tmp_path),
        "run.seed": 5,
        "run.progress": "false",
        "model.path": "embedded:base",
        "rl.train_files": "[embedded:rl-easy-200]",
        "rl.train_batch_prompts": 4,
        "rl.gen_batch_prompts": 4,
        "rl.mini_batch_prompts": 2,
        "rl.micro_batch_size": 4,
        "rl.algo.n": 4,
        "rl.algo.max_draws": 2,
        "rl.max_response_length": 24,
        "rl.max_steps": 3,
        "rl.eval_every": 0,
        "rl.eval_at_start": "false",
        "rl.save_every": 1,
        "rl.optim.lr": 1e-3,
        "eval.files": "[]",
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def metric_rows(run_dir: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    by_step = {}
    for r in rows:
        if "rollout/accuracy" in r:
            assert r["step"] not in by_step, f"step {r['step']} logged twice"
            by_step[r["step"]] = r
    return by_step


# --------------------------------------------------------------------------------------------
# pieces


def test_make_rl_batch_right_pads_and_marks_responses():
    batch = make_rl_batch([([1, 2, 3], [4, 5]), ([6], [7, 8, 9, 10])], pad_id=0, device="cpu")
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert batch["response_spans"] == [(3, 5), (1, 5)]
    batch = make_rl_batch([([1, 2], [3]), ([4], [5, 6, 7])], pad_id=9, device="cpu")
    assert batch["input_ids"].tolist() == [[1, 2, 3, 9], [4, 5, 6, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]


def test_prompt_sampler_is_a_seeded_permutation_per_epoch_and_resumes():
    sampler = PromptSampler(5, seed=1)
    first = sampler.take(5)
    assert sorted(first) == [0, 1, 2, 3, 4]
    state = sampler.state_dict()
    more = sampler.take(7)  # crosses into epoch 2
    assert sorted(more[:5]) == [0, 1, 2, 3, 4]
    again = PromptSampler(5, seed=1)
    again.load_state_dict(state)
    assert again.take(7) == more
    assert PromptSampler(5, seed=2).take(5) != first or PromptSampler(5, seed=3).take(5) != first


def test_rollout_seed_depends_on_step_and_draw_only():
    assert rollout_seed(0, 3, 1) == rollout_seed(0, 3, 1)
    assert len({rollout_seed(0, s, d) for s in range(50) for d in range(10)}) == 500


def test_rl_step_flops_is_eq22_for_equal_lengths():
    shape = ModelShape(num_layers=2, hidden_size=64, intermediate_size=256, vocab_size=512, kv_dim=32)
    G, S = 4, 30
    generated = [S] * (2 * 8 * G)  # K = 2 draws of B_gen = 8 prompts
    trained = [S] * (4 * G)  # B_train = 4 prompts kept
    expected = dapo_step_flops(shape, gen_batch=8, rounds=2, group_size=G, train_batch=4, seq_len=S)
    assert rl_step_flops(shape, generated, trained) == pytest.approx(expected, rel=1e-12)
    assert rl_step_flops(shape, generated, []) == pytest.approx(
        dapo_step_flops(shape, gen_batch=8, rounds=2, group_size=G, train_batch=0, seq_len=S), rel=1e-12
    )


def test_weighted_sums_give_token_weighted_means():
    from npu_retu.report.metrics import WeightedSums, sum_over_ranks

    # two micro-batches of 3 and 1 tokens with clipfrac 0.5 and 1.0: (3 * 0.5 + 1 * 1.0) / 4 = 0.625;
    # a name with weight 0 only (a rank that trained on nothing) reads 0
    sums = WeightedSums()
    sums.add({"clipfrac": 0.5}, weight=3)
    sums.add({"clipfrac": 1.0, "drift": 0.25}, weight=1)
    sums.add({"unseen": 7.0}, weight=0)
    reduced = sums.over_ranks()  # one process: the identity
    assert (reduced.mean("clipfrac"), reduced.mean("drift"), reduced.mean("unseen")) == (0.625, 0.25, 0.0)
    assert reduced.weights == {"clipfrac": 4.0, "drift": 1.0, "unseen": 0.0}
    assert sum_over_ranks({"b": 2, "a": 1.5}) == {"a": 1.5, "b": 2.0}


def test_presets_fill_the_algo_section_and_overrides_win():
    cfg = load_config(None, ["rl.algorithm=dapo_d"])
    assert (cfg.rl.algo.clip_high, cfg.rl.algo.dynamic_sampling) == (0.2, True)
    cfg = load_config(None, ["rl.algorithm=grpo", "rl.algo.clip_high=0.3"])
    assert (cfg.rl.algo.clip_high, cfg.rl.algo.dynamic_sampling) == (0.3, False)
    cfg = load_config(None, [])
    assert (cfg.rl.algorithm, cfg.rl.algo.clip_high, cfg.rl.algo.dual_clip) == ("dapo_dc", 0.28, 10.0)


# --------------------------------------------------------------------------------------------
# a short real run


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    from npu_retu.trainer.rl import train_rl

    tmp = tmp_path_factory.mktemp("rl")
    cfg = load_config(None, rl_overrides(tmp, "short"))
    result = train_rl(cfg, quiet=True, reward=DigitReward())
    return cfg, result


def test_short_run_logs_every_metric_and_counts_compute(short_run):
    cfg, result = short_run
    rows = metric_rows(result.run_dir)
    assert sorted(rows) == [1, 2, 3]
    required = [
        "rollout/reward_mean", "rollout/accuracy", "rollout/response_length_mean", "actor/clipfrac",
        "actor/clipfrac_upper", "actor/clipfrac_lower", "actor/approx_kl", "actor/entropy", "actor/logprob_drift",
        "ds/draws", "ds/kept_fraction", "train/step_flops", "time/rollout_s", "time/reward_s", "time/logprobs_s",
        "time/update_s", "actor/grad_norm",
    ]
    for step, row in rows.items():
        missing = [k for k in required if k not in row]
        assert not missing, f"step {step} lacks {missing}"
        assert 1 <= row["ds/draws"] <= 2
        assert 0.0 < row["rollout/accuracy"] < 1.0  # the digit reward is mixed: updates really happen
        # the trainer's log-probs of the sampled tokens agree with the rollout's own (same weights, fp32)
        assert row["actor/logprob_drift"] < 1e-4
    # cumulative compute is the sum of the steps' compute
    total = 0.0
    for step in sorted(rows):
        total += rows[step]["train/step_flops"]
        assert rows[step]["flops"] == pytest.approx(total, rel=1e-9)
    assert result.flops == pytest.approx(total, rel=1e-9)


def test_two_mini_batches_per_step_clip_after_the_first_update(short_run):
    # train batch 4 prompts, mini-batch 2: the second optimizer step sees a policy that has moved,
    # so its ratios differ from 1 (the first mini-batch's are exactly 1: old = current)
    cfg, result = short_run
    rows = metric_rows(result.run_dir)
    assert any(abs(r["actor/ratio_mean"] - 1.0) > 1e-6 for r in rows.values())


def test_checkpoints_load_with_from_pretrained(short_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, result = short_run
    ckpt = result.final_checkpoint
    assert ckpt is not None and ckpt.name == "step-000003"
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    AutoTokenizer.from_pretrained(ckpt)
    assert (ckpt / "trainer_state.pt").is_file()
    state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    assert state["step"] == 3
    # 3 steps drew 1 or 2 generation batches of 4 prompts each from 200 prompts, all in epoch 0
    assert state["sampler"]["epoch"] == 0 and state["sampler"]["position"] in range(12, 25, 4)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_zero_kept_groups_skip_the_update_without_crashing(tmp_path):
    from npu_retu.trainer.rl import train_rl

    class Never(DigitReward):
        def score(self, items):
            return [0.0 for _ in items]

    cfg = load_config(None, rl_overrides(tmp_path, "never", **{"rl.max_steps": 2, "rl.save_every": 2}))
    result = train_rl(cfg, quiet=True, reward=Never())
    rows = metric_rows(result.run_dir)
    for row in rows.values():
        assert row["ds/draws"] == 2 and row["ds/groups_kept"] == 0 and row["ds/budget_exhausted"] == 1.0
        assert row["train/skipped_update"] == 1.0
        assert "actor/pg_loss" not in row
    # compute still counts the generation of both draws: 2 x 4 prompts x 4 samples, forward only
    assert all(r["train/step_flops"] > 0 for r in rows.values())


# --------------------------------------------------------------------------------------------
# exact resume after SIGKILL

RUNNER = """
import sys
from npu_retu.config import load_config
from npu_retu.trainer.rl import train_rl
sys.path.insert(0, {tests!r})
from test_rl_trainer import DigitReward
if __name__ == "__main__":
    cfg = load_config(None, sys.argv[2:])
    train_rl(cfg, resume=sys.argv[1] == "resume", overwrite=sys.argv[1] != "resume", quiet=True, reward=DigitReward())
"""


def run_rl_process(tmp_path: Path, mode: str, overrides: list[str]) -> subprocess.Popen:
    script = tmp_path / "run_rl.py"
    script.write_text(RUNNER.format(tests=str(REPO / "tests")))
    return subprocess.Popen(
        [sys.executable, str(script), mode, *overrides], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def kill_after_first_checkpoint_then_resume(tmp_path: Path, name: str, overrides: list[str], steps: int) -> dict:
    """Start the run in a process, SIGKILL it once checkpoint 1 exists (before its last step), resume
    it in a new process to the end; returns the resumed folder's metric rows by step."""
    proc = run_rl_process(tmp_path, "fresh", overrides)
    target = tmp_path / name / "checkpoints" / "step-000001"
    deadline = time.monotonic() + 300
    while not target.is_dir():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert max(metric_rows(tmp_path / name), default=0) < steps, "the run finished before it was killed; nothing was tested"
    proc = run_rl_process(tmp_path, "resume", overrides)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return metric_rows(tmp_path / name)


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, short_run):
    _, reference = short_run
    reference_rows = metric_rows(reference.run_dir)
    overrides = rl_overrides(tmp_path, "short")  # the same run as the reference, in another folder
    resumed = kill_after_first_checkpoint_then_resume(tmp_path, "short", overrides, 3)
    assert sorted(resumed) == [1, 2, 3]
    for step in (1, 2, 3):
        for key in ("rollout/accuracy", "rollout/response_length_mean", "actor/pg_loss", "actor/grad_norm", "flops"):
            assert resumed[step][key] == pytest.approx(reference_rows[step][key], rel=1e-6, abs=1e-9), (step, key)
    from safetensors.torch import load_file

    a = load_file(reference.run_dir / "checkpoints" / "step-000003" / "model.safetensors")
    b = load_file(tmp_path / "short" / "checkpoints" / "step-000003" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


class GradRecorder:
    """An engine stub for policy_update: records the gradient at every optimizer step, changes nothing."""

    def __init__(self, model):
        self.model, self.device, self.grads = model, torch.device("cpu"), []
        self.module = model  # what the loss runs the training forward through

    def backward(self, loss, *, last=True):
        loss.backward()

    def step(self, skip_above=None):
        self.grads.append(torch.cat([p.grad.flatten().clone() for p in self.model.parameters()]))
        self.model.zero_grad(set_to_none=True)
        return {"grad_norm": float(self.grads[-1].norm()), "lr": 0.0}


@pytest.mark.parametrize("kl_coef,entropy_coef", [(0.0, 0.0), (0.05, 0.01)], ids=["dapo", "kl+entropy"])
def test_fused_update_matches_the_unfused_one(kl_coef, entropy_coef):
    """The RL update on the fused kernels (reference, and Triton under the interpreter) gives the
    losses, metrics and gradients of the plain path (full logits from the model's forward)."""
    import importlib.util

    from transformers import Qwen2Config, Qwen2ForCausalLM

    from npu_retu.algos import Group, advantages_of_group
    from npu_retu.rollout import Trajectory
    from npu_retu.trainer.rl import Stopwatch, policy_update, rl_loss

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
    ))
    reference_model = Qwen2ForCausalLM(model.config) if kl_coef > 0 else None
    g = torch.Generator().manual_seed(1)
    groups = []
    for p in range(3):
        prompt = torch.randint(1, 61, (3 + p,), generator=g).tolist()
        trajectories = []
        for s in range(4):
            response = torch.randint(1, 61, (2 + (p + s) % 5,), generator=g).tolist()
            logprobs = (-torch.rand(len(response), generator=g) * 3).tolist()
            trajectories.append(Trajectory(p, s, prompt, response, "", logprobs, "stop"))
        rewards = [1.0, 0.0, float(p % 2), 0.0]
        groups.append(Group(p, prompt, trajectories, rewards, advantages_of_group(rewards)))
    cfg = load_config(None, [
        "rl.algo.n=4", "rl.mini_batch_prompts=2", "rl.train_batch_prompts=2", "rl.micro_batch_size=3",
        "rl.rollout.temperature=0.7", f"rl.algo.kl_coef={kl_coef}", f"rl.algo.entropy_coef={entropy_coef}",
    ])
    impls = ["unfused", "reference"] + (["triton"] if importlib.util.find_spec("triton") else [])
    results = {}
    for impl in impls:
        cfg.rl.kernels = impl
        engine = GradRecorder(model)
        metrics, _ = policy_update(engine, rl_loss(cfg.rl), groups, cfg.rl, Stopwatch(), pad_id=0, seed=3, reference_model=reference_model)
        results[impl] = (metrics, engine.grads)
    want_metrics, want_grads = results["unfused"]
    assert len(want_grads) == 2 and want_metrics["actor/pg_loss"] != 0
    for impl in impls[1:]:
        metrics, grads = results[impl]
        assert set(metrics) == set(want_metrics), impl
        for key, value in want_metrics.items():
            assert metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (impl, key)
        for got, want in zip(grads, want_grads):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
