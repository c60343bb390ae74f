"""LUFFY, SRFT and UPT (npu_retu.algos.synchronized) checked against their specification by hand.

The expected numbers are computed here from the written specification, in plain Python floats
(float64) for the values and a separate float64 torch formula for the gradients; none of them is
derived from the implementation's code. The specification, with m the response mask, e_i "row i is
an expert trajectory", c_i "row i is correct", A_i its advantage, L = max_response_length, N_seq /
T_all / T_exp the mini-batch's sequences / response tokens / expert response tokens,
p = exp(logp), f(p) = p / (p + gamma), r = exp(logp - old_logp) unclipped, beta = entropy_coef:

* PG = sum_{i,t} m_it l_it / (N_seq L); bonus = beta * sum_{i,t} m_it H_it / T_all.
* LUFFY: l = -A f(p) (expert), -A r (rollout); loss = PG - bonus.
* SRFT: H_i = mean of H over row i's response tokens (detached). Expert: l = -A f(p) and
  SFT = sum over expert tokens of -w_sft exp(-H_i) logp / T_exp; correct rollout:
  l = -w_pos exp(H_i) logp; wrong rollout: l = +logp. loss = PG + SFT - bonus.
* UPT: expert rows: SFT = sft_coef * sum over expert tokens of -logp / T_exp; rollouts: l = -A r.
  loss = PG + SFT - bonus.
* Groups: LUFFY / SRFT: rollouts + experts, A = R - mean over all of them (no std). UPT: at most
  ``gate`` rollouts with R >= 1 -> the expert alone with A = 0; otherwise the rollouts, R - mean.

The trainer-level checks (1 vs 2 gloo ranks, 1 vs 4 micro-batches) run npu_retu.trainer.rl's
policy_update on fixed groups with expert trajectories; tests/syn_update_rank.py is the rank worker.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from npu_retu.algos import build_loss
from npu_retu.algos.policy_loss import PolicyBatch
from npu_retu.config import AlgoConfig, ConfigError, OptimConfig, load_config

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "syn_update_rank.py"

# --------------------------------------------------------------------------------------------
# a hand-checkable mini-batch: 6 rows, vocabulary 6, a learnable logits table per row

V, T, L, BETA = 6, 0.7, 6, 0.05
# (token ids, prompt length); the first token is the row's id: the fake model looks its logits up by it
ROWS = [
    ([0, 3, 1, 4, 2], 2),  # response 1 4 2      -> positions t = 1..3
    ([1, 2, 5], 1),        # response 2 5        -> t = 0..1
    ([2, 4, 0, 3], 2),     # response 0 3        -> t = 1..2
    ([3, 5, 5, 1], 1),     # response 5 5 1      -> t = 0..2
    ([4, 1, 2], 2),        # response 2          -> t = 1
    ([5, 0, 4, 4, 3], 2),  # response 4 4 3      -> t = 1..3
]
S = max(len(ids) for ids, _ in ROWS)  # 5
RESPONSE_LENGTHS = [len(ids) - p for ids, p in ROWS]  # 3 2 2 3 1 3
T_ALL, N_SEQ = sum(RESPONSE_LENGTHS), len(ROWS)  # 14, 6
# old log-probs: non-zero everywhere (also on expert rows and padding, which must not use them)
OLD = [[-(0.4 + 0.3 * ((b * 7 + t * 3) % 5)) for t in range(S - 1)] for b in range(len(ROWS))]

# LUFFY / SRFT: group A = rollouts 0, 1 + expert 2 (rewards 1, 0, 1), group B = rollouts 3, 4 +
# expert 5 (rewards 0, 1, 0): A = R - mean over the group, the expert included
MIXED_REWARDS = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
MIXED_ADV = [1 / 3, -2 / 3, 1 / 3, -1 / 3, 2 / 3, -1 / 3]
MIXED_EXPERT = [False, False, True, False, False, True]
# UPT: rows 2 and 5 are the experts of two groups the gate sent to SFT (A = 0); rows 0, 1, 3, 4 the
# rollouts of one RL group with rewards 1, 0, 0, 0 (mean 0.25)
UPT_REWARDS = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
UPT_ADV = [0.75, -0.25, 0.0, -0.25, -0.25, 0.0]
UPT_EXPERT = MIXED_EXPERT

CASES = {
    # name: (algo settings, advantages, expert flags, rewards)
    "luffy": ({"shaping_gamma": 0.2}, MIXED_ADV, MIXED_EXPERT, MIXED_REWARDS),
    "srft": ({"shaping_gamma": 0.1, "srft_sft_weight": 0.5, "srft_pos_weight": 0.1}, MIXED_ADV, MIXED_EXPERT, MIXED_REWARDS),
    "upt": ({"sft_coef": 0.7}, UPT_ADV, UPT_EXPERT, UPT_REWARDS),
}


def logits_table() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randn(len(ROWS), S, V, generator=g, dtype=torch.float64) * 1.5


class TableLM(torch.nn.Module):
    """A causal LM whose logits are a learnable table: row ``input_ids[b, 0]``, the first S columns."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table.clone())

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return SimpleNamespace(logits=self.table[input_ids[:, 0], : input_ids.shape[1]])


def algo_config(name: str) -> AlgoConfig:
    settings = CASES[name][0]
    return AlgoConfig(loss=name, adv_estimator="grpo_no_std", normalize_std=False, entropy_coef=BETA,
                      dynamic_sampling=False, max_draws=1, **settings)


def make_batch(name: str, rows: list[int]) -> PolicyBatch:
    """The PolicyBatch of ``rows`` (padded to their own longest), with the whole mini-batch's counts."""
    _, adv, expert, rewards = CASES[name]
    width = max(len(ROWS[i][0]) for i in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width - 1), dtype=torch.float32)
    old = torch.tensor([OLD[i][: width - 1] for i in rows], dtype=torch.float32)
    for k, i in enumerate(rows):
        tokens, prompt = ROWS[i]
        ids[k, : len(tokens)] = torch.tensor(tokens)
        attention[k, : len(tokens)] = 1
        mask[k, prompt - 1 : len(tokens) - 1] = 1.0
    return PolicyBatch(
        input_ids=ids, attention_mask=attention, response_mask=mask, old_logprobs=old,
        advantages=torch.tensor([adv[i] for i in rows], dtype=torch.float32), ref_logprobs=None,
        global_token_count=T_ALL, global_seq_count=N_SEQ,
        expert=torch.tensor([expert[i] for i in rows]), correct=torch.tensor([rewards[i] >= 1.0 for i in rows]),
        global_expert_token_count=sum(RESPONSE_LENGTHS[i] for i in range(len(ROWS)) if expert[i]),
    )


def run_loss(name: str, rows: list[int] | None = None, table: torch.Tensor | None = None):
    loss_fn = build_loss(name, algo=algo_config(name), kernels="unfused", temperature=T, max_response_length=L)
    model = TableLM(logits_table() if table is None else table)
    loss, metrics = loss_fn(model, make_batch(name, list(range(len(ROWS))) if rows is None else rows))
    return model, loss, metrics


# --------------------------------------------------------------------------------------------
# the specification in plain Python floats


def token_stats(table: list) -> tuple[dict, dict]:
    """logp[(b, t)] and H[(b, t)] at temperature T for every response position (b, t)."""
    logp, entropy = {}, {}
    for b, (ids, prompt) in enumerate(ROWS):
        for t in range(prompt - 1, len(ids) - 1):
            z = [x / T for x in table[b][t]]
            top = max(z)
            lse = top + math.log(sum(math.exp(x - top) for x in z))
            log_probs = [x - lse for x in z]
            logp[b, t] = log_probs[ids[t + 1]]
            entropy[b, t] = -sum(math.exp(lp) * lp for lp in log_probs)
    return logp, entropy


def spec_values(name: str, table: list) -> dict[str, float]:
    settings, adv, expert, rewards = CASES[name]
    logp, H = token_stats(table)
    tokens = list(logp)
    rows = range(len(ROWS))
    row_h = {b: sum(H[k] for k in tokens if k[0] == b) / RESPONSE_LENGTHS[b] for b in rows}
    t_exp = sum(RESPONSE_LENGTHS[b] for b in rows if expert[b])
    gamma = settings.get("shaping_gamma", 0.1)

    def f(lp):
        p = math.exp(lp)
        return p / (p + gamma)

    pg_sum, sft = 0.0, 0.0
    for b, t in tokens:
        lp, a = logp[b, t], adv[b]
        r = math.exp(lp - OLD[b][t])
        if name == "luffy":
            pg_sum += -a * f(lp) if expert[b] else -a * r
        elif name == "srft":
            if expert[b]:
                pg_sum += -a * f(lp)
                sft += -settings["srft_sft_weight"] * math.exp(-row_h[b]) * lp / t_exp
            elif rewards[b] >= 1.0:
                pg_sum += -settings["srft_pos_weight"] * math.exp(row_h[b]) * lp
            else:
                pg_sum += lp
        else:  # upt
            if expert[b]:
                sft += settings["sft_coef"] * -lp / t_exp
            else:
                pg_sum += -a * r
    pg = pg_sum / (N_SEQ * L)
    bonus = BETA * sum(H.values()) / T_ALL
    out = {
        "loss": pg + sft - bonus,
        "pg_loss": pg,
        "sft_loss": sft,
        "entropy": sum(H.values()) / len(tokens),
        "expert_prob_mean": sum(math.exp(logp[k]) for k in tokens if expert[k[0]]) / t_exp,
    }
    if name == "srft":
        expert_rows = [b for b in rows if expert[b]]
        correct_rows = [b for b in rows if not expert[b] and rewards[b] >= 1.0]
        out["srft_entropy_H"] = sum(row_h.values()) / len(ROWS)
        out["srft_sft_weight"] = sum(settings["srft_sft_weight"] * math.exp(-row_h[b]) for b in expert_rows) / len(expert_rows)
        out["srft_pos_weight"] = sum(settings["srft_pos_weight"] * math.exp(row_h[b]) for b in correct_rows) / len(correct_rows)
    return out


def spec_torch_loss(name: str, table: torch.Tensor) -> torch.Tensor:
    """The same specification as a float64 torch formula (for autograd), on the whole mini-batch."""
    settings, adv, expert, rewards = CASES[name]
    ids = torch.zeros((len(ROWS), S), dtype=torch.long)
    mask = torch.zeros((len(ROWS), S - 1), dtype=torch.float64)
    for b, (tokens, prompt) in enumerate(ROWS):
        ids[b, : len(tokens)] = torch.tensor(tokens)
        mask[b, prompt - 1 : len(tokens) - 1] = 1.0
    log_probs = torch.log_softmax(table / T, dim=-1)[:, :-1]  # [B, S-1, V]
    logp = log_probs.gather(-1, ids[:, 1:, None]).squeeze(-1)
    H = -(log_probs.exp() * log_probs).sum(-1)
    old = torch.tensor(OLD, dtype=torch.float64)
    A = torch.tensor(adv, dtype=torch.float64)[:, None]
    e = torch.tensor(expert, dtype=torch.float64)[:, None] * mask
    on = mask - e
    c = torch.tensor([r >= 1.0 for r in rewards], dtype=torch.float64)[:, None]
    t_exp = float(e.sum())
    gamma = settings.get("shaping_gamma", 0.1)
    p = logp.exp()
    shaped = p / (p + gamma)
    ratio = torch.exp(logp - old)
    h_row = ((H * mask).sum(1) / mask.sum(1)).detach()[:, None]
    sft = torch.zeros((), dtype=torch.float64)
    if name == "luffy":
        per_token = e * (-A * shaped) + on * (-A * ratio)
    elif name == "srft":
        on_loss = c * (-settings["srft_pos_weight"] * torch.exp(h_row) * logp) + (1 - c) * logp
        per_token = e * (-A * shaped) + on * on_loss
        sft = (e * (-settings["srft_sft_weight"] * torch.exp(-h_row) * logp)).sum() / t_exp
    else:
        per_token = on * (-A * ratio)
        sft = settings["sft_coef"] * (e * -logp).sum() / t_exp
    return per_token.sum() / (N_SEQ * L) + sft - BETA * (mask * H).sum() / T_ALL


# --------------------------------------------------------------------------------------------
# 1. hand-computed loss and metrics


def test_the_example_mini_batch_is_what_the_spec_needs():
    # different response lengths with padding, the longest below L, experts with both signs of A
    assert RESPONSE_LENGTHS == [3, 2, 2, 3, 1, 3] and max(RESPONSE_LENGTHS) < L
    assert sum(MIXED_ADV[:3]) == pytest.approx(0) and sum(MIXED_ADV[3:]) == pytest.approx(0)
    assert MIXED_ADV[2] > 0 > MIXED_ADV[5]


@pytest.mark.parametrize("name", ["luffy", "srft", "upt"])
def test_loss_value_and_metrics_equal_the_hand_computed_ones(name):
    _, loss, metrics = run_loss(name)
    want = spec_values(name, logits_table().tolist())
    assert float(loss.detach()) == pytest.approx(want["loss"], abs=1e-6, rel=0), (name, float(loss.detach()), want["loss"])
    for key in ("pg_loss", "sft_loss", "entropy", "expert_prob_mean"):
        assert metrics[key] == pytest.approx(want[key], abs=1e-6, rel=0), (name, key, metrics[key], want[key])
    assert metrics["tokens"] == T_ALL
    assert isinstance(metrics["weights"], dict)
    if name == "srft":
        for key in ("srft_entropy_H", "srft_sft_weight", "srft_pos_weight"):
            assert metrics[key] == pytest.approx(want[key], abs=1e-6, rel=0), (key, metrics[key], want[key])
    if name == "luffy":
        assert metrics["sft_loss"] == 0.0
    # (the bonus is visible: the loss without it differs)
    assert abs(want["loss"] - (want["pg_loss"] + want["sft_loss"])) > 1e-3


def test_srft_sft_weight_is_the_mean_over_expert_rows_of_half_exp_minus_h():
    """By hand, apart from the helper: rows 2 and 5 are the experts."""
    _, _, metrics = run_loss("srft")
    table = logits_table().tolist()
    _, H = token_stats(table)
    h2 = (H[2, 1] + H[2, 2]) / 2
    h5 = (H[5, 1] + H[5, 2] + H[5, 3]) / 3
    assert metrics["srft_sft_weight"] == pytest.approx((0.5 * math.exp(-h2) + 0.5 * math.exp(-h5)) / 2, abs=1e-6, rel=0)
    # the correct on-policy rollouts are row 0 (group A) and row 4 (group B)
    h0 = (H[0, 1] + H[0, 2] + H[0, 3]) / 3
    h4 = H[4, 1]
    assert metrics["srft_pos_weight"] == pytest.approx((0.1 * math.exp(h0) + 0.1 * math.exp(h4)) / 2, abs=1e-6, rel=0)


def test_a_luffy_expert_token_uses_the_shaped_probability_not_the_ratio():
    """One expert row alone, A = 1, beta = 0: the loss is -f(p) summed / (1 * L), whatever old_logp."""
    table = logits_table()
    loss_fn = build_loss("luffy", algo=AlgoConfig(loss="luffy", shaping_gamma=0.1, entropy_coef=0.0,
                                                   dynamic_sampling=False), kernels="unfused", temperature=1.0,
                         max_response_length=4)
    ids = torch.tensor([[2, 4, 0, 3]])
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    batch = PolicyBatch(ids, torch.ones_like(ids), mask, torch.full((1, 3), -5.0), torch.tensor([1.0]), None,
                        global_token_count=2, global_seq_count=1, expert=torch.tensor([True]),
                        correct=torch.tensor([True]), global_expert_token_count=2)
    loss, _ = loss_fn(TableLM(table), batch)
    want = 0.0
    for t, token in ((1, 0), (2, 3)):
        z = table[2, t].tolist()
        lse = math.log(sum(math.exp(x) for x in z))
        p = math.exp(z[token] - lse)
        want += -p / (p + 0.1)
    assert float(loss.detach()) == pytest.approx(want / 4, abs=1e-6, rel=0)


# --------------------------------------------------------------------------------------------
# 2. gradients against autograd of the plain formula


@pytest.mark.parametrize("name", ["luffy", "srft", "upt"])
def test_gradient_equals_autograd_of_the_spec_formula(name):
    model, loss, _ = run_loss(name)
    loss.backward()
    table = logits_table().requires_grad_(True)
    want_loss = spec_torch_loss(name, table)
    want_loss.backward()
    # the float64 formula and the float-loop spec agree with each other (the two hand versions)
    assert float(want_loss) == pytest.approx(spec_values(name, logits_table().tolist())["loss"], abs=1e-12)
    assert float(table.grad.abs().max()) > 1e-3
    torch.testing.assert_close(model.table.grad, table.grad, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# 3. micro-batch invariance


@pytest.mark.parametrize("name", ["luffy", "srft", "upt"])
def test_four_micro_batches_give_the_gradient_of_one(name):
    model_one, loss_one, metrics_one = run_loss(name)
    loss_one.backward()
    loss_fn = build_loss(name, algo=algo_config(name), kernels="unfused", temperature=T, max_response_length=L)
    model = TableLM(logits_table())
    total, pg, sft = 0.0, 0.0, 0.0
    for rows in ([0, 1], [2, 3], [4], [5]):  # each padded to its own width, with the mini-batch's counts
        loss, metrics = loss_fn(model, make_batch(name, rows))
        loss.backward()
        total, pg, sft = total + float(loss.detach()), pg + metrics["pg_loss"], sft + metrics["sft_loss"]
    assert total == pytest.approx(float(loss_one.detach()), abs=1e-6, rel=0)
    assert pg == pytest.approx(metrics_one["pg_loss"], abs=1e-6, rel=0)
    assert sft == pytest.approx(metrics_one["sft_loss"], abs=1e-6, rel=0)
    torch.testing.assert_close(model.table.grad, model_one.table.grad, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# group composition


class Item:
    def __init__(self, tag):
        self.tag = tag

    def __repr__(self):
        return self.tag


def test_mixed_group_puts_rollouts_then_experts_with_r_minus_the_mean_of_all():
    from npu_retu.algos import mixed_group

    rollouts, experts = [Item("a"), Item("b"), Item("c")], [Item("e")]
    g = mixed_group(4, [9, 8], rollouts, experts, [1.0, 0.0, 0.0, 1.0])
    assert g.prompt_index == 4 and g.prompt_ids == [9, 8]
    assert g.trajectories == rollouts + experts
    assert g.rewards == [1.0, 0.0, 0.0, 1.0]
    assert g.advantages == pytest.approx([0.5, -0.5, -0.5, 0.5], abs=1e-6)  # mean 0.5, no std division
    g = mixed_group(0, [1], rollouts[:2], [Item("e1"), Item("e2")], [0.0, 0.0, 1.0, 0.0])  # N = 2
    assert g.advantages == pytest.approx([-0.25, -0.25, 0.75, -0.25], abs=1e-6)
    g = mixed_group(0, [1], rollouts, experts, [0.0, 0.0, 0.0, 2.0])  # a std division would give 1.5 / 0.866
    assert g.advantages == pytest.approx([-0.5, -0.5, -0.5, 1.5], abs=1e-6)


@pytest.mark.parametrize("rewards,gate,to_sft", [
    ([1.0, 1.0, 0.0, 0.0], 2, True),    # 2 correct <= gate 2: SFT
    ([1.0, 1.0, 1.0, 0.0], 2, False),   # 3 correct > gate 2: RL
    ([0.0, 0.0, 0.0, 0.0], 0, True),    # gate 0, none correct: SFT
    ([1.0, 0.0, 0.0, 0.0], 0, False),   # gate 0, one correct: RL
    ([1.0, 0.5, 0.99, 0.0], 1, True),   # only R >= 1 counts as correct: 1 <= 1
])
def test_gated_group_switches_on_the_number_of_correct_rollouts(rewards, gate, to_sft):
    from npu_retu.algos import gated_group

    rollouts, expert = [Item(f"r{k}") for k in range(4)], Item("e")
    g = gated_group(3, [5, 6], rollouts, expert, rewards, 1.0, gate)
    assert g.prompt_index == 3 and g.prompt_ids == [5, 6]
    if to_sft:
        assert g.trajectories == [expert] and g.rewards == [1.0] and g.advantages == [0.0]
    else:
        mean = sum(rewards) / len(rewards)
        assert g.trajectories == rollouts and g.rewards == rewards
        assert g.advantages == pytest.approx([r - mean for r in rewards], abs=1e-6)


# --------------------------------------------------------------------------------------------
# 5. UPT's skipped step


def test_local_engine_skips_a_step_whose_grad_norm_is_above_the_threshold():
    from npu_retu.engine.local import LocalEngine

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)  # 8 parameters
    engine = LocalEngine(model, OptimConfig(lr=0.1, max_grad_norm=1.0, schedule="constant"), total_steps=10,
                         device=torch.device("cpu"))
    norm = math.sqrt(8 * 0.5**2)  # every gradient entry 0.5: norm 1.414

    def set_grads(value):
        for p in model.parameters():
            p.grad = torch.full_like(p, value)

    before = [p.detach().clone() for p in model.parameters()]
    set_grads(0.5)
    out = engine.step(skip_above=1.0)
    assert out["skipped"] == 1.0 and out["grad_norm"] == pytest.approx(norm, rel=1e-6)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())  # the gradients were dropped

    set_grads(0.5)
    out = engine.step(skip_above=2.0)
    assert out["skipped"] == 0.0 and out["grad_norm"] == pytest.approx(norm, rel=1e-6)
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), before))

    set_grads(0.5)
    assert "skipped" not in engine.step()  # no threshold: no key

    after = [p.detach().clone() for p in model.parameters()]
    set_grads(float("nan"))
    assert engine.step(skip_above=80.0)["skipped"] == 1.0  # a non-finite norm skips too
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), after))


# --------------------------------------------------------------------------------------------
# 6. config errors


@pytest.mark.parametrize("overrides,key", [
    (["rl.algorithm=luffy", "rl.algo.experts_per_prompt=8"], "rl.algo.experts_per_prompt"),  # G = 8 <= N = 8
    (["rl.algorithm=srft", "rl.algo.n=4", "rl.algo.experts_per_prompt=5"], "rl.algo.experts_per_prompt"),
    (["rl.algorithm=upt", "rl.algo.gate=9"], "rl.algo.gate"),
    (["rl.algorithm=upt", "rl.algo.gate=-1"], "rl.algo.gate"),
])
def test_config_errors_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, overrides)


def test_config_boundaries_are_accepted():
    assert load_config(None, ["rl.algorithm=luffy", "rl.algo.experts_per_prompt=7"]).rl.algo.rollouts_per_prompt == 1
    assert load_config(None, ["rl.algorithm=upt", "rl.algo.gate=8"]).rl.algo.gate == 8
    assert load_config(None, ["rl.algorithm=upt", "rl.algo.gate=0"]).rl.algo.gate == 0


# --------------------------------------------------------------------------------------------
# trainer level: policy_batch / draw_groups wiring, micro-batches, 1 vs 2 ranks


def test_policy_update_hands_the_loss_expert_flags_correctness_and_expert_token_counts():
    from npu_retu.algos import mixed_group
    from npu_retu.rollout import Trajectory
    from npu_retu.trainer.rl import Stopwatch, policy_update

    groups = []
    for p in range(2):
        prompt = [3 + p, 4]
        rollouts = [Trajectory(p, s, prompt, [10 + 3 * p + s] * (1 + s), "", [-1.0] * (1 + s), "stop") for s in range(3)]
        expert = Trajectory(p, 3, prompt, [20 + p] * (4 + p), "", [], "stop", expert=True)
        groups.append(mixed_group(p, prompt, rollouts, [expert], [1.0, 0.0, 1.0 - p, 1.0]))
    # what each sample should arrive as: response length -> (expert, correct, advantage)
    want = {}
    for g in groups:
        for t, r, a in zip(g.trajectories, g.rewards, g.advantages):
            want[t.response_ids[0]] = (len(t.response_ids), t.expert, r >= 1.0, a)

    seen = []

    def recording_loss(model, batch):
        B = batch.input_ids.shape[0]
        for k in range(B):
            span = batch.response_mask[k].bool()
            first = int(batch.input_ids[k, 1:][span][0])
            seen.append((first, int(span.sum()), bool(batch.expert[k]), bool(batch.correct[k]), float(batch.advantages[k])))
            if batch.expert[k]:  # no old policy on an expert row
                assert not batch.old_logprobs[k].any()
        assert batch.global_seq_count == B  # (one micro-batch = the mini-batch here)
        assert batch.global_token_count == int(batch.response_mask.sum())
        assert batch.global_expert_token_count == int(batch.response_mask[batch.expert].sum())
        loss = sum(p.sum() for p in model.parameters()) * 0.0
        return loss, {"tokens": float(batch.response_mask.sum()), "pg_loss": 0.0}

    model = _tiny_qwen()
    cfg = load_config(None, ["rl.algorithm=luffy", "rl.algo.n=4", "rl.train_batch_prompts=2", "rl.gen_batch_prompts=2",
                             "rl.mini_batch_prompts=1", "rl.micro_batch_size=4", "rl.kernels=unfused",
                             "rl.max_response_length=8"])
    policy_update(_GradStub(model), recording_loss, groups, cfg.rl, Stopwatch(), pad_id=0, seed=1)
    assert len(seen) == 8
    for first, length, expert, correct, adv in seen:
        w_len, w_expert, w_correct, w_adv = want[first]
        assert (length, expert, correct) == (w_len, w_expert, w_correct)
        assert adv == pytest.approx(w_adv, abs=1e-6)


class _FakeRollout:
    """Each prompt's s-th sample says ``texts[prompt position][s]``; records the sampling params."""

    def __init__(self, texts):
        self.texts, self.params = texts, []

    def generate(self, prompts, params):
        from npu_retu.rollout import Trajectory

        self.params.append(params)
        return [Trajectory(j, s, p, [7, 8 + s], self.texts[j][s], [-0.5, -0.5], "stop")
                for j, p in enumerate(prompts) for s in range(params.n)]


class _TextReward:
    def score(self, pairs):
        return [1.0 if text == "right" else 0.0 for text, _ in pairs]


def _draw(algorithm, texts, expert_texts, extra=()):
    from npu_retu.trainer.rl import PromptSampler, Stopwatch, draw_groups

    cfg = load_config(None, [f"rl.algorithm={algorithm}", "rl.algo.n=4", "rl.train_batch_prompts=2",
                             "rl.gen_batch_prompts=2", "rl.mini_batch_prompts=2", *extra])
    prompts = [[3, 4], [5, 6, 7]]
    examples = [SimpleNamespace(ground_truth=["x"], experts=[e]) for e in expert_texts]
    experts = [[[30 + i, 31, 32]] for i in range(2)]
    rollout = _FakeRollout(texts)
    groups = draw_groups(0, step=0, sampler=PromptSampler(2, 0, shuffle=False), prompts=prompts, examples=examples,
                         experts=experts, rollout=rollout, reward=_TextReward(), rl=cfg.rl, run_seed=0,
                         ranks=SimpleNamespace(rank=0, world_size=1), timer=Stopwatch())
    return groups, rollout, experts


def test_draw_groups_luffy_samples_n_minus_n_and_appends_the_scored_expert():
    texts = [["right", "wrong", "wrong"], ["wrong", "wrong", "wrong"]]
    groups, rollout, experts = _draw("luffy", texts, ["right", "wrong"])
    assert rollout.params[0].n == 3  # G - N = 4 - 1 rollouts
    assert len(groups) == 2
    for i, (g, rewards) in enumerate(zip(groups, ([1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]))):
        assert len(g.trajectories) == 4 and [t.expert for t in g.trajectories] == [False, False, False, True]
        assert g.trajectories[3].response_ids == experts[i][0] and g.trajectories[3].logprobs == []
        assert g.rewards == rewards
        mean = sum(rewards) / 4
        assert g.advantages == pytest.approx([r - mean for r in rewards], abs=1e-6)


def test_draw_groups_upt_gate_sends_a_group_to_its_expert():
    texts = [["right", "wrong", "wrong", "wrong"], ["right", "right", "wrong", "wrong"]]
    groups, rollout, experts = _draw("upt", texts, ["right", "right"], ["rl.algo.gate=1"])
    assert rollout.params[0].n == 4
    sft, rl_group = groups
    assert len(sft.trajectories) == 1 and sft.trajectories[0].expert and sft.advantages == [0.0]
    assert sft.trajectories[0].response_ids == experts[0][0] and sft.rewards == [1.0]
    assert [t.expert for t in rl_group.trajectories] == [False] * 4
    assert rl_group.advantages == pytest.approx([0.5, 0.5, -0.5, -0.5], abs=1e-6)


def _tiny_qwen():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=48, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64))


class _GradStub:
    """An engine for policy_update that records the gradient at every optimizer step, changes nothing."""

    def __init__(self, model):
        self.model = self.module = model
        self.device, self.grads = torch.device("cpu"), []

    def backward(self, loss, *, last=True):
        loss.backward()

    def step(self, skip_above=None):
        self.grads.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten().clone()
                                     for p in self.model.parameters()]))
        self.model.zero_grad(set_to_none=True)
        return {"grad_norm": float(self.grads[-1].norm()), "lr": 0.0}


@pytest.mark.parametrize("algorithm", ["luffy", "srft", "upt"])
def test_trainer_update_with_four_micro_batches_equals_one(algorithm):
    import syn_update_rank as worker
    from npu_retu.trainer.rl import Stopwatch, policy_update, rl_loss

    results = []
    for micro in (8, 2):  # a mini-batch of 2 prompts x n = 4: 8 sequences -> 1 or 4 micro-batches
        cfg = load_config(None, worker.overrides(algorithm, micro_batch_size=micro))
        engine = _GradStub(worker.tiny_model())
        metrics, _ = policy_update(engine, rl_loss(cfg.rl), worker.syn_groups(algorithm), cfg.rl, Stopwatch(),
                                   pad_id=0, seed=0)
        results.append((metrics, engine.grads))
    (m1, g1), (m4, g4) = results
    assert len(g1) == len(g4) == 2 and float(g1[0].norm()) > 1e-3
    for a, b in zip(g1, g4):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    for key in ("actor/pg_loss", "actor/sft_loss", "actor/entropy", "actor/expert_prob_mean"):
        assert m4[key] == pytest.approx(m1[key], rel=1e-5, abs=1e-7), key


@pytest.fixture(scope="module")
def single_rank(tmp_path_factory):
    import syn_update_rank as worker

    return worker.run_all(world_size=1)


def run_two_ranks(out: Path, engine_name: str) -> dict:
    from npu_retu.distributed.process_group import free_port

    port = free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(out), engine_name], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for rank, proc in enumerate(procs):
        text, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"rank {rank}:\n{text}"
    return torch.load(out, weights_only=False)


def test_two_ranks_update_equals_one(tmp_path, single_rank):
    """policy_update on 2 gloo ranks (CPU, local engine) for LUFFY, SRFT and UPT: the all-reduced
    gradient of every optimizer step, the metrics and the weights after the steps equal one process's."""
    two = run_two_ranks(tmp_path / "out.pt", "local")
    assert set(two) == set(single_rank) == {"luffy", "srft", "upt"}
    for algorithm, one in single_rank.items():
        got = two[algorithm]
        assert len(got["grads"]) == len(one["grads"]) == 3  # 2 optimizer steps, then 1 (a rank with nothing)
        assert float(one["grads"][0].norm()) > 1e-3
        for step, (a, b) in enumerate(zip(one["grads"], got["grads"])):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=lambda m: f"{algorithm} step {step}: {m}")
        for row_one, row_two in zip(one["metrics"], got["metrics"]):
            for key, value in row_one.items():
                assert row_two[key] == pytest.approx(value, rel=1e-5, abs=1e-7), (algorithm, key)
        for name, expected in one["weights"].items():
            diff = (got["weights"][name] - expected).abs().max()
            assert torch.allclose(got["weights"][name], expected, atol=1e-5, rtol=0), f"{algorithm} {name}: {diff:.2e}"



def test_deepspeed_zero2_on_two_ranks_equals_one_local_process(tmp_path, single_rank):
    """The same updates on DeepSpeed ZeRO-2 over 2 gloo ranks (UPT without its skip, which needs the
    local engine; no threshold is reached here): the metrics, grad norm included, and the weights after
    the steps equal one local process's."""
    pytest.importorskip("deepspeed", reason="needs DeepSpeed: pip install 'npu-retu[distributed]'")
    two = run_two_ranks(tmp_path / "out.pt", "deepspeed")
    assert set(two) == {"luffy", "srft", "upt"}
    for algorithm, one in single_rank.items():
        got = two[algorithm]
        assert one["metrics"][0]["actor/grad_norm"] > 1e-3
        for row_one, row_two in zip(one["metrics"], got["metrics"]):
            for key in ("actor/pg_loss", "actor/sft_loss", "actor/entropy", "actor/grad_norm", "actor/expert_prob_mean"):
                if key in row_one:
                    assert row_two[key] == pytest.approx(row_one[key], rel=1e-5, abs=1e-7), (algorithm, key)
        for name, expected in one["weights"].items():
            diff = (got["weights"][name] - expected).abs().max()
            assert torch.allclose(got["weights"][name], expected, atol=1e-5, rtol=0), f"{algorithm} {name}: {diff:.2e}"

def test_policy_update_passes_upts_skip_threshold_to_the_engine():
    """UPT's rl.algo.skip_grad_norm reaches LocalEngine.step: far below the gradient norm every step
    is skipped (weights unchanged, actor/skipped_steps counts them); far above none is."""
    import syn_update_rank as worker
    from npu_retu.trainer.rl import Stopwatch, policy_update, rl_loss

    for threshold, skipped in ((1e-9, 2.0), (1e9, 0.0)):
        cfg = load_config(None, worker.overrides("upt") + [f"rl.algo.skip_grad_norm={threshold}"])
        engine = worker.recording_engine(cfg, worker.tiny_model(), 1)
        before = {k: v.detach().clone() for k, v in engine.model.state_dict().items()}
        metrics, _ = policy_update(engine, rl_loss(cfg.rl), worker.syn_groups("upt"), cfg.rl, Stopwatch(), pad_id=0, seed=0)
        assert metrics["actor/skipped_steps"] == skipped
        assert metrics["actor/grad_norm"] > 1e-3
        same = all(torch.equal(v, before[k]) for k, v in engine.model.state_dict().items())
        assert same == (skipped > 0)
