"""RL algorithm pieces: advantages (Eq. 2), the clipped loss (Eq. 3 + DAPO), KL, dynamic sampling, presets.

Every expected number is worked out by hand in the comment next to it.
"""

from __future__ import annotations

import math

import pytest
import torch

from npu_retu.algos import (
    ADVANTAGE_ESTIMATORS,
    LOSSES,
    RL_PRESETS,
    ClippedPolicyLoss,
    Group,
    NextTokenNLL,
    advantages_of_group,
    agg_loss,
    build_loss,
    clipped_policy_loss,
    fill_batch,
    get_loss,
    group_advantages,
    keep_mask,
    kl_penalty,
    register_advantage_estimator,
    register_loss,
)
from npu_retu.config import AlgoConfig, ConfigError, from_dict, load_config

D = torch.float64


# --------------------------------------------------------------------------------------------
# group advantages (Eq. 2)

# Group 1 = [1, 0, 0, 0]: mean 0.25, deviations (0.75, -0.25, -0.25, -0.25),
#   sum of squares 0.5625 + 3 * 0.0625 = 0.75, unbiased var 0.75 / 3 = 0.25, std 0.5
#   -> A = (1.5, -0.5, -0.5, -0.5).
# Group 2 = [1, 1, 0, 0]: mean 0.5, deviations +-0.5, sum of squares 1, var 1/3, std 1/sqrt(3)
#   -> A = +-0.5 * sqrt(3) = +-0.8660254.
REWARDS = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
S3 = math.sqrt(3) / 2
ADV_STD = torch.tensor([1.5, -0.5, -0.5, -0.5, S3, S3, -S3, -S3])
ADV_NO_STD = torch.tensor([0.75, -0.25, -0.25, -0.25, 0.5, 0.5, -0.5, -0.5])


def test_group_advantages_with_std_unbiased():
    torch.testing.assert_close(group_advantages(REWARDS, 4, eps=0.0), ADV_STD, atol=1e-7, rtol=0)
    # Default eps = 1e-6 is added to the std: 0.75 / 0.500001 = 1.499997.
    torch.testing.assert_close(group_advantages(REWARDS, 4), ADV_STD, atol=5e-6, rtol=0)
    assert abs(group_advantages(REWARDS, 4)[0].item() - 0.75 / 0.500001) < 1e-6


def test_group_advantages_without_std():
    torch.testing.assert_close(group_advantages(REWARDS, 4, normalize_std=False), ADV_NO_STD)
    torch.testing.assert_close(ADVANTAGE_ESTIMATORS["grpo_no_std"](REWARDS, 4), ADV_NO_STD)
    torch.testing.assert_close(ADVANTAGE_ESTIMATORS["grpo"](REWARDS, 4, eps=0.0), ADV_STD, atol=1e-7, rtol=0)
    with pytest.raises(ValueError, match="grpo_no_std"):
        ADVANTAGE_ESTIMATORS["grpo_no_std"](REWARDS, 4, normalize_std=True)


def test_group_advantages_layouts_agree():
    # [num_groups, G] and shuffled group ids give the same numbers as consecutive runs.
    torch.testing.assert_close(group_advantages(REWARDS.reshape(2, 4), eps=0.0), ADV_STD.reshape(2, 4), atol=1e-7, rtol=0)
    perm = torch.tensor([5, 0, 7, 2, 1, 4, 6, 3])
    ids = torch.tensor([10, 10, 10, 10, 42, 42, 42, 42])[perm]
    torch.testing.assert_close(group_advantages(REWARDS[perm], ids, eps=0.0), ADV_STD[perm], atol=1e-7, rtol=0)


def test_all_equal_group_and_singleton_give_zero():
    # [1, 1, 1, 1] and [0, 0, 0, 0]: every deviation is 0 -> A = 0 (std 0, 0 / (0 + eps) = 0).
    r = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    assert torch.equal(group_advantages(r, 4), torch.zeros(8))
    assert torch.equal(group_advantages(r, 4, normalize_std=False), torch.zeros(8))
    assert torch.equal(group_advantages(r, 4, eps=0.0), torch.zeros(8))  # not 0 / 0 = nan
    # 0.1 * 3: the float mean is 0.1 + 1 ulp; still exactly 0, not ulp / eps.
    assert torch.equal(group_advantages(torch.full((3,), 0.1), 3), torch.zeros(3))
    # Groups of one (ids 0, 1, 2): no baseline -> 0, never nan. Group 3 = [2, 0]: mean 1, std sqrt(2)
    # -> (1 / 1.4142136, -1 / 1.4142136) = (0.7071068, -0.7071068).
    r = torch.tensor([0.3, 1.0, 0.0, 2.0, 0.0])
    out = group_advantages(r, torch.tensor([0, 1, 2, 3, 3]), eps=0.0)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0, 0.0, 0.7071068, -0.7071068]))


def test_advantages_of_group_is_eq2_per_group():
    # one group's list of rewards through the configured estimator: [1, 0, 0, 0] -> (1.5, -0.5, -0.5, -0.5)
    # with the std (+ eps 1e-6: 0.75 / 0.500001), (0.75, -0.25, -0.25, -0.25) without
    assert advantages_of_group([1.0, 0.0, 0.0, 0.0]) == pytest.approx([1.5, -0.5, -0.5, -0.5], abs=5e-6)
    assert advantages_of_group([1.0, 0.0, 0.0, 0.0], "grpo", normalize_std=False) == [0.75, -0.25, -0.25, -0.25]
    assert advantages_of_group([1.0, 0.0, 0.0, 0.0], "grpo_no_std") == [0.75, -0.25, -0.25, -0.25]
    assert advantages_of_group([1.0, 1.0]) == [0.0, 0.0]


# --------------------------------------------------------------------------------------------
# clipped policy loss, one token at a time (B = T = 1, token-mean -> loss = the token's pg)


def one_token(adv: float, ratio: float | None = None, *, log_diff: float | None = None, **kw):
    """Loss and d loss / d logp for one token with old_logp = 0 and logp = log(ratio)."""
    lp = torch.tensor([[math.log(ratio) if log_diff is None else log_diff]], dtype=D, requires_grad=True)
    loss, metrics = clipped_policy_loss(lp, torch.zeros(1, 1, dtype=D), torch.tensor([adv], dtype=D), torch.ones(1, 1), **kw)
    loss.backward()
    return loss.item(), lp.grad.item(), metrics


def test_positive_advantage_inside_the_clip_range():
    # A = 1, r = 1.1: max(-1.1, -clip(1.1, 0.8, 1.28) = -1.1) = -1.1; d/dlogp (-A r) = -A r = -1.1.
    loss, grad, m = one_token(1.0, 1.1)
    assert loss == pytest.approx(-1.1) and grad == pytest.approx(-1.1)
    assert m["clipfrac"] == 0.0


def test_positive_advantage_above_clip_high_is_clipped():
    # A = 1, r = 1.5 > 1.28: max(-1.5, -1.28) = -1.28, a constant -> gradient 0.
    loss, grad, m = one_token(1.0, 1.5)
    assert loss == pytest.approx(-1.28) and grad == 0.0
    assert m["clipfrac_upper"] == 1.0


def test_asymmetric_clip_higher():
    # r = 1.25: clip_high 0.28 -> 1.25 < 1.28, unclipped: loss -1.25, gradient -1.25.
    loss, grad, _ = one_token(1.0, 1.25, clip_high=0.28)
    assert loss == pytest.approx(-1.25) and grad == pytest.approx(-1.25)
    # clip_high 0.2 -> clip(1.25) = 1.2: max(-1.25, -1.2) = -1.2, gradient 0.
    loss, grad, m = one_token(1.0, 1.25, clip_high=0.2)
    assert loss == pytest.approx(-1.2) and grad == 0.0 and m["clipfrac_upper"] == 1.0


def test_negative_advantage_below_clip_low():
    # A = -1, r = 0.5 < 0.8: max(0.5, 1 * 0.8) = 0.8, constant -> gradient 0.
    loss, grad, m = one_token(-1.0, 0.5)
    assert loss == pytest.approx(0.8) and grad == 0.0 and m["clipfrac_lower"] == 1.0
    # A = -1, r = 0.9 inside: loss 0.9, gradient -A r = 0.9.
    loss, grad, m = one_token(-1.0, 0.9)
    assert loss == pytest.approx(0.9) and grad == pytest.approx(0.9) and m["clipfrac"] == 0.0


def test_dual_clip_caps_negative_advantage_loss():
    # A = -2, r = 15: max(-A r = 30, -A clip(15) = 2 * 1.28 = 2.56) = 30; dual: min(30, 10 * 2) = 20,
    # a constant -> gradient 0.
    loss, grad, m = one_token(-2.0, 15.0)
    assert loss == pytest.approx(20.0) and grad == 0.0 and m["dual_clip_frac"] == 1.0
    # Without dual-clip: loss 30, gradient -A r = 30.
    loss, grad, m = one_token(-2.0, 15.0, dual_clip=None)
    assert loss == pytest.approx(30.0) and grad == pytest.approx(30.0) and m["dual_clip_frac"] == 0.0
    # r = 5 < 10: 10 < 20, dual-clip inactive: loss 10, gradient 10.
    loss, grad, _ = one_token(-2.0, 5.0)
    assert loss == pytest.approx(10.0) and grad == pytest.approx(10.0)
    # Positive advantages are never dual-clipped: A = 2, r = 15 -> max(-30, -2.56) = -2.56.
    loss, grad, _ = one_token(2.0, 15.0)
    assert loss == pytest.approx(-2.56) and grad == 0.0


def test_log_ratio_clamp():
    # log diff 2 clamped to 1: r = e = 2.7182818; A = -1, no dual-clip: max(e, 1.28) = e; the clamp
    # is active so the gradient is 0.
    loss, grad, _ = one_token(-1.0, log_diff=2.0, log_ratio_clamp=1.0, dual_clip=None)
    assert loss == pytest.approx(math.e) and grad == 0.0
    # Default clamp 20: a log diff of 100 gives r = e^20 = 4.85165e8, finite.
    loss, grad, _ = one_token(-1.0, log_diff=100.0, dual_clip=None)
    assert loss == pytest.approx(math.exp(20.0)) and math.isfinite(loss) and grad == 0.0


def test_clip_fractions_and_metrics_on_a_hand_example():
    # One sequence, 6 response tokens + 1 padding token (ratio 2, A = 1, masked out):
    #   A     = ( 1,    1,   -1,   -1,    1,    -2)
    #   r     = (1.5,  1.1,  0.5,  0.9,  1.25,  15)
    #   upper: A > 0 and r > 1.28 -> token 0        -> 1/6
    #   lower: A < 0 and r < 0.8  -> token 2        -> 1/6
    #   dual : A < 0 and r > 10   -> token 5        -> 1/6
    #   pg    = (-1.28, -1.1, 0.8, 0.9, -1.25, 20), sum 18.07 -> token-mean 18.07 / 6 = 3.0116667
    #   ratio_mean = (1.5 + 1.1 + 0.5 + 0.9 + 1.25 + 15) / 6 = 20.25 / 6 = 3.375
    #   k3 = r - 1 - ln r: 0.0945349, 0.0046898, 0.1931472, 0.0053605, 0.0268564, 11.2919498
    #        sum 11.6165386 -> approx_kl 1.9360898
    ratios = torch.tensor([[1.5, 1.1, 0.5, 0.9, 1.25, 15.0, 2.0]], dtype=D)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 1.0, -2.0, 1.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0]])
    loss, m = clipped_policy_loss(ratios.log(), torch.zeros_like(ratios), adv, mask)
    assert loss.item() == pytest.approx(18.07 / 6)
    assert m["clipfrac_upper"] == pytest.approx(1 / 6)
    assert m["clipfrac_lower"] == pytest.approx(1 / 6)
    assert m["clipfrac"] == pytest.approx(2 / 6)
    assert m["dual_clip_frac"] == pytest.approx(1 / 6)
    assert m["ratio_mean"] == pytest.approx(3.375)
    assert m["approx_kl"] == pytest.approx(11.6165386 / 6, abs=1e-6)
    assert m["tokens"] == 6.0
    assert all(isinstance(v, float) for v in m.values())


# --------------------------------------------------------------------------------------------
# aggregation


def test_agg_loss_modes_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # token-mean: (1 + 2 + 4) / 3 = 7/3; with a global count of 7: 7 / 7 = 1.
    assert agg_loss(x, mask, "token-mean").item() == pytest.approx(7 / 3)
    assert agg_loss(x, mask, "token-mean", global_token_count=7).item() == pytest.approx(1.0)
    # seq-mean-token-sum: (3 + 4) / 2 = 3.5; with 7 global sequences: 7 / 7 = 1.
    assert agg_loss(x, mask, "seq-mean-token-sum").item() == pytest.approx(3.5)
    assert agg_loss(x, mask, "seq-mean-token-sum", global_seq_count=7).item() == pytest.approx(1.0)
    # seq-mean-token-mean: (1.5 + 4) / 2 = 2.75.
    assert agg_loss(x, mask, "seq-mean-token-mean").item() == pytest.approx(2.75)
    # Masked-out inf / nan never leak in.
    y = x.clone()
    y[0, 2], y[1, 1] = float("inf"), float("nan")
    assert agg_loss(y, mask, "token-mean").item() == pytest.approx(7 / 3)
    # A row without response tokens is not a sequence of the local count: (1 + 2) / 1 = 3.
    assert agg_loss(x, torch.tensor([[1, 1, 0], [0, 0, 0]]), "seq-mean-token-sum").item() == pytest.approx(3.0)
    # Nothing selected -> 0, not nan.
    assert agg_loss(x, torch.zeros_like(mask), "token-mean").item() == 0.0
    with pytest.raises(ValueError, match="token-mean"):
        agg_loss(x, mask, "bogus")


def _random_batch(seed: int = 0, b: int = 8, t: int = 12):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([1, 12, 3, 7, 2, 11, 5, 9])[:b]  # differing lengths: the normaliser matters
    mask = (torch.arange(t)[None, :] < lengths[:, None]).to(D)
    old = -torch.rand(b, t, generator=g, dtype=D) * 3
    logp = (old + 0.4 * torch.randn(b, t, generator=g, dtype=D)).requires_grad_(True)  # some tokens clip
    adv = torch.randn(b, generator=g, dtype=D)
    return logp, old, adv, mask


def _grad(logp, old, adv, mask, chunks, **kw):
    logp.grad = None
    rows = torch.arange(logp.shape[0]).split(chunks) if isinstance(chunks, list) else torch.arange(logp.shape[0]).chunk(chunks)
    for idx in rows:
        loss, _ = clipped_policy_loss(logp[idx], old[idx], adv[idx], mask[idx], **kw)
        loss.backward()
    return logp.grad.clone()


def test_token_mean_micro_batches_match_one_batch():
    logp, old, adv, mask = _random_batch()
    one = _grad(logp, old, adv, mask, 1)
    total = int(mask.sum())  # 1 + 12 + 3 + 7 + 2 + 11 + 5 + 9 = 50
    assert total == 50
    four = _grad(logp, old, adv, mask, 4, global_token_count=total)
    assert (four - one).abs().max().item() < 1e-6
    assert one.abs().max().item() > 1e-3  # the gradient is not trivially zero
    # Naive: each micro-batch divides by its own token count and the four losses are averaged.
    logp.grad = None
    for idx in torch.arange(8).chunk(4):
        loss, _ = clipped_policy_loss(logp[idx], old[idx], adv[idx], mask[idx])
        (loss / 4).backward()
    assert (logp.grad - one).abs().max().item() > 1e-3


def test_seq_mean_micro_batches_match_one_batch():
    logp, old, adv, mask = _random_batch(seed=1)
    uneven = [1, 2, 2, 3]  # micro-batches of different sizes
    for mode in ("seq-mean-token-sum", "seq-mean-token-mean"):
        one = _grad(logp, old, adv, mask, 1, agg=mode)
        split = _grad(logp, old, adv, mask, uneven, agg=mode, global_seq_count=8)
        assert (split - one).abs().max().item() < 1e-6, mode
        logp.grad = None
        for idx in torch.arange(8).split(uneven):
            loss, _ = clipped_policy_loss(logp[idx], old[idx], adv[idx], mask[idx], agg=mode)
            (loss / 4).backward()
        assert (logp.grad - one).abs().max().item() > 1e-3, mode


def test_loss_registry_and_argument_checks():
    # the trainers build their losses by name: SFT's NLL (Eq. 1) and the clipped policy loss (Eq. 3)
    assert LOSSES["clipped"] is ClippedPolicyLoss and LOSSES["nll"] is NextTokenNLL
    assert isinstance(build_loss("clipped", algo=AlgoConfig(), kernels="unfused"), ClippedPolicyLoss)
    with pytest.raises(ValueError, match="unknown loss 'ppo'; choose one of clipped, luffy, nll, srft, upt"):
        get_loss("ppo")
    with pytest.raises(ValueError, match="already registered"):
        register_loss("nll")(type("AnotherNLL", (), {}))
    with pytest.raises(ConfigError, match="rl.algo.loss.*must be one of clipped"):
        load_config(None, ["rl.algo.loss=nll"])  # an SFT loss is not an RL one
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="dual_clip"):
        clipped_policy_loss(x, x, torch.zeros(1), torch.ones(1, 2), dual_clip=0.5)
    with pytest.raises(ValueError, match="already registered"):
        register_advantage_estimator("grpo")(lambda r, g=None, **kw: r)


# --------------------------------------------------------------------------------------------
# KL estimators


def test_kl_estimators_by_hand():
    # d = logp - ref = (1, -1, 0):
    #   k1 = d = (1, -1, 0);  k2 = d^2 / 2 = (0.5, 0.5, 0)
    #   k3 = exp(-d) + d - 1 = (e^-1 = 0.3678794, e - 2 = 0.7182818, 0)
    logp = torch.tensor([-1.0, -2.0, -0.5], dtype=D, requires_grad=True)
    ref = torch.tensor([-2.0, -1.0, -0.5], dtype=D)
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), torch.tensor([1.0, -1.0, 0.0], dtype=D))
    torch.testing.assert_close(kl_penalty(logp, ref, "k2"), torch.tensor([0.5, 0.5, 0.0], dtype=D))
    k3 = kl_penalty(logp, ref, "k3")
    torch.testing.assert_close(k3, torch.tensor([math.exp(-1), math.e - 2, 0.0], dtype=D))
    # d k3 / d logp = 1 - exp(ref - logp): (1 - e^-1 = 0.6321206, 1 - e = -1.7182818, 0).
    k3.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([1 - math.exp(-1), 1 - math.e, 0.0], dtype=D))
    # Clamp: ref - logp = 30 -> clamped to 20 -> e^20 - 21 -> capped at 10.
    assert kl_penalty(torch.tensor([-31.0]), torch.tensor([-1.0]), "k3").item() == 10.0
    # k3 >= 0 everywhere.
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1000, generator=g) * 3, torch.randn(1000, generator=g) * 3
    assert (kl_penalty(a, b, "k3") >= 0).all()
    with pytest.raises(ValueError, match="k1"):
        kl_penalty(a, b, "k4")


# --------------------------------------------------------------------------------------------
# dynamic sampling


def test_keep_mask():
    # G = 4: all correct (drop), all wrong (drop), 1 of 4 (keep), 3 of 4 (keep).
    r = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 1], dtype=torch.float32)
    assert keep_mask(r, 4).tolist() == [False, False, True, True]
    assert keep_mask(r.reshape(4, 4), 4).tolist() == [False, False, True, True]
    assert keep_mask([0.5, 0.5, 0.2, 0.7], 2).tolist() == [False, True]
    with pytest.raises(ValueError):
        keep_mask(r, 3)


ALL_RIGHT, ALL_WRONG, MIXED = [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0]


class Script:
    """A draw_fn that hands out pre-written generation batches and counts the calls; group j of
    batch i is prompt 10 i + j (``name`` spells it "b{i}g{j}")."""

    def __init__(self, *batches):
        self.batches = [[Group(10 * i + j, [], [], r) for j, r in enumerate(b)] for i, b in enumerate(batches)]
        self.calls = 0

    def __call__(self, draw):
        assert draw == self.calls  # fill_batch numbers its draws 0, 1, ...
        batch = self.batches[self.calls]
        self.calls += 1
        return batch


def name(group: Group) -> str:
    return f"b{group.prompt_index // 10}g{group.prompt_index % 10}"


def test_fill_batch_fills_in_two_draws_and_truncates():
    # Target 3. Draw 0 keeps g1, g3 (2 < 3); draw 1 keeps g0, g2 -> 4 >= 3: stop, keep the first 3.
    draw = Script(
        [ALL_RIGHT, MIXED, ALL_WRONG, MIXED],
        [MIXED, ALL_WRONG, MIXED, ALL_RIGHT],
        [MIXED, MIXED, MIXED, MIXED],  # never drawn
    )
    batch = fill_batch(draw, train_batch_prompts=3, max_draws=10, group_size=4)
    kept, stats = batch.kept, batch.stats
    assert [name(g) for g in kept] == ["b0g1", "b0g3", "b1g0"]
    assert [name(g) for g in batch.generated] == ["b0g0", "b0g1", "b0g2", "b0g3", "b1g0", "b1g1", "b1g2", "b1g3"]
    assert draw.calls == 2
    # generated 8, kept 4 -> fraction 0.5; used 3 after truncation.
    assert stats == {
        "draws": 2,
        "groups_generated": 8,
        "groups_kept": 4,
        "groups_used": 3,
        "kept_fraction": 0.5,
        "budget_exhausted": False,
    }


def test_fill_batch_budget_exhausted_returns_partial():
    # Target 4, at most 2 draws, one mixed group per draw -> 2 kept, budget exhausted.
    draw = Script([MIXED, ALL_RIGHT], [ALL_WRONG, MIXED], [MIXED, MIXED])
    batch = fill_batch(draw, train_batch_prompts=4, max_draws=2, group_size=4)
    kept, stats = batch.kept, batch.stats
    assert [name(g) for g in kept] == ["b0g0", "b1g1"]
    assert draw.calls == 2
    assert stats["budget_exhausted"] is True and stats["groups_kept"] == 2 and stats["groups_used"] == 2
    assert stats["kept_fraction"] == pytest.approx(2 / 4)


def test_fill_batch_zero_kept_is_not_an_error():
    draw = Script([ALL_RIGHT, ALL_WRONG], [ALL_WRONG], [])  # an empty draw counts as a draw
    batch = fill_batch(draw, train_batch_prompts=2, max_draws=3, group_size=4)
    kept, stats = batch.kept, batch.stats
    assert kept == [] and len(batch.generated) == 3
    assert stats["draws"] == 3 and stats["groups_generated"] == 3 and stats["groups_kept"] == 0
    assert stats["kept_fraction"] == 0.0 and stats["budget_exhausted"] is True


def test_fill_batch_without_filter_is_one_draw_keeping_everything():
    draw = Script([ALL_RIGHT, MIXED, ALL_WRONG], [MIXED])
    batch = fill_batch(draw, train_batch_prompts=3, max_draws=10, group_size=4, filter=False)
    kept, stats = batch.kept, batch.stats
    assert [name(g) for g in kept] == ["b0g0", "b0g1", "b0g2"]
    assert draw.calls == 1 and stats["draws"] == 1
    assert stats["groups_kept"] == 3 and stats["kept_fraction"] == 1.0 and stats["budget_exhausted"] is False


def test_fill_batch_checks_group_size():
    with pytest.raises(ValueError, match="group_size=4"):
        fill_batch(Script([[1.0, 0.0]]), train_batch_prompts=1, max_draws=1, group_size=4)


# --------------------------------------------------------------------------------------------
# presets and the algo config section


def test_presets_match_the_paper():
    assert RL_PRESETS["dapo_dc"]["clip_high"] == 0.28
    assert RL_PRESETS["dapo_d"]["clip_high"] == 0.2
    assert RL_PRESETS["grpo"]["clip_high"] == 0.2
    assert RL_PRESETS["grpo"]["dynamic_sampling"] is False
    assert RL_PRESETS["dapo_d"]["dynamic_sampling"] is True and RL_PRESETS["dapo_dc"]["dynamic_sampling"] is True
    for name, preset in RL_PRESETS.items():
        assert preset["loss_agg"] == "token-mean" and preset["clip_low"] == 0.2, name
        # RETU's RL has no entropy bonus; the synchronized baselines' scripts use 0.001
        entropy = 0.001 if name in ("luffy", "srft", "upt") else 0.0
        assert preset["kl_coef"] == 0.0 and preset["entropy_coef"] == entropy and preset["n"] == 8, name
        cfg = load_config(None, [f"rl.algorithm={name}"]).rl.algo  # the preset, through the config loader
        assert isinstance(cfg, AlgoConfig)
    # The dataclass defaults are DAPO_dc.
    assert load_config(None, ["rl.algorithm=dapo_dc"]).rl.algo == AlgoConfig(normalize_std=True)


def test_algo_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="algo.dual_clip"):
        load_config(None, ["rl.algorithm=dapo_dc", "rl.algo.dual_clip=0.5"])
    with pytest.raises(ConfigError, match="algo.normalize_std"):
        # the preset says normalize_std=True
        load_config(None, ["rl.algorithm=grpo", "rl.algo.adv_estimator=grpo_no_std"])
    with pytest.raises(ConfigError, match="algo.adv_estimator"):
        AlgoConfig(adv_estimator="ppo").validate()
    with pytest.raises(ConfigError, match="algo.bogus"):
        load_config(None, ["rl.algorithm=grpo", "rl.algo.bogus=1"])
    # Through the main config loader: null turns dual-clip off; a bad literal names the key.
    cfg = from_dict(AlgoConfig, {"dual_clip": None, "adv_estimator": "grpo_no_std"}, "algo")
    cfg.validate()
    assert cfg.dual_clip is None
    with pytest.raises(ConfigError, match="algo.loss_agg"):
        from_dict(AlgoConfig, {"loss_agg": "sum"}, "algo")
