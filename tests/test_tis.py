"""Truncated importance sampling (``rl.rollout.is_correction: tis``) against a hand computation.

Each response token's loss term is weighted by ``w_t = min(exp(logp_old - logp_rollout), cap)``;
the trainer does that by scaling the per-token advantage, which these tests check on the PyTorch
loss and the fused kernel's reference path, for a positive advantage and a negative one (dual clip).
"""

from __future__ import annotations

import math

import pytest
import torch

from npu_retu.algos import clipped_policy_loss
from npu_retu.kernels import clipped_policy_loss as fused_clipped_policy_loss
from npu_retu.trainer.rl import Sample, policy_batch, rollout_drift, truncated_is_weights

OLD = [-1.0, -2.0, -0.5]
ROLLOUT = [-1.2, -1.0, -0.5]


def samples(advantage: float) -> list[Sample]:
    return [Sample(prompt_ids=[1, 2], response_ids=[3, 4, 5], advantage=advantage, rollout_logprobs=ROLLOUT)]


def test_weights_are_the_truncated_ratio():
    old = {0: torch.tensor(OLD)}
    w = truncated_is_weights(samples(1.0), [0], old, cap=2.0)[0]
    assert w.tolist() == pytest.approx([math.exp(0.2), math.exp(-1.0), 1.0], rel=1e-6)
    w = truncated_is_weights(samples(1.0), [0], old, cap=1.1)[0]
    assert w.tolist() == pytest.approx([1.1, math.exp(-1.0), 1.0], rel=1e-6)
    no_logprobs = [Sample([1], [3, 4], 1.0, [])]
    assert truncated_is_weights(no_logprobs, [0], {0: torch.tensor([-1.0, -1.0])}, cap=2.0)[0].tolist() == [1.0, 1.0]


def test_drift_is_the_token_mean_and_max_of_the_gap():
    drift, top = rollout_drift(samples(1.0), [0], {0: torch.tensor(OLD)})
    assert drift["mean"] == pytest.approx((0.2 + 1.0 + 0.0) / 3, rel=1e-6) and drift["tokens"] == 3
    assert top == pytest.approx(1.0, rel=1e-6)


def hand_loss(advantage, deltas, weights, clip_low=0.2, clip_high=0.28, dual_clip=10.0):
    """Token-mean of w_t * max(-A r_t, -A clip(r_t)) (capped at -A * dual_clip when A < 0), by hand."""
    terms = []
    for delta, w in zip(deltas, weights):
        r = math.exp(delta)
        pg = max(-advantage * r, -advantage * min(max(r, 1 - clip_low), 1 + clip_high))
        if advantage < 0:
            pg = min(pg, -advantage * dual_clip)
        terms.append(w * pg)
    return sum(terms) / len(terms)


@pytest.mark.parametrize("advantage,deltas", [(1.0, [0.1, -0.3, 0.5]), (-0.7, [2.5, -0.4, 0.05])])
def test_tis_weights_each_tokens_loss_term(advantage, deltas):
    old = {0: torch.tensor(OLD)}
    weights = truncated_is_weights(samples(advantage), [0], old, cap=2.0)
    batch = policy_batch(samples(advantage), [0], old, None, pad_id=0, device="cpu", global_token_count=3,
                         global_seq_count=1, is_weights=weights)
    mask = batch.response_mask
    assert mask[0].tolist() == [0.0, 1.0, 1.0, 1.0]  # position t scores token t + 1: the response is tokens 2..4
    logp = batch.old_logprobs.clone()
    logp[0, 1:] += torch.tensor(deltas)
    expected = hand_loss(advantage, deltas, weights[0].tolist())
    settings = dict(clip_low=0.2, clip_high=0.28, dual_clip=10.0, global_token_count=3, global_seq_count=1)
    loss, _ = clipped_policy_loss(logp, batch.old_logprobs, batch.advantages, mask, **settings)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    fused, _ = fused_clipped_policy_loss(logp, batch.old_logprobs, batch.advantages, mask, impl="reference", **settings)
    assert float(fused) == pytest.approx(expected, rel=1e-6)
    # without TIS the same batch is the unweighted loss
    plain = policy_batch(samples(advantage), [0], old, None, pad_id=0, device="cpu", global_token_count=3, global_seq_count=1)
    loss, _ = clipped_policy_loss(logp, plain.old_logprobs, plain.advantages, mask, **settings)
    assert float(loss) == pytest.approx(hand_loss(advantage, deltas, [1.0, 1.0, 1.0]), rel=1e-6)
