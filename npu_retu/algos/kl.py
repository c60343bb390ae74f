"""Per-token estimators of the KL term ``beta * D_KL[pi_theta || pi_ref]`` of GRPO (paper Eq. 3).

With samples from pi_theta and ``d = logp - ref_logp`` (Schulman's estimators, as named in verl):

    k1 = d                                   unbiased, can be negative
    k2 = 0.5 * d**2                          biased, low variance, >= 0
    k3 = exp(-d) - (-d) - 1                  unbiased, low variance, >= 0  (verl "low_var_kl")

k3 guards as verl does: ``-d`` is clamped to [-20, 20] before ``exp`` and the estimate to at most 10,
so one token whose log-probs drifted far from the reference cannot dominate the loss or overflow.

RETU runs with no KL term (Appendix B.2.2: "the entropy and KL term coefficients are 0"), so
``algo.kl_coef`` defaults to 0 and the trainer skips the reference model entirely then.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

KL_LOG_RATIO_CLAMP = 20.0
KL_K3_MAX = 10.0

KLEstimator = Callable[[Tensor, Tensor], Tensor]

KL_ESTIMATORS: dict[str, KLEstimator] = {}


def register_kl_estimator(name: str) -> Callable[[KLEstimator], KLEstimator]:
    """Register ``fn(logp, ref_logp) -> per-token KL estimate`` under ``name``."""

    def deco(fn: KLEstimator) -> KLEstimator:
        if name in KL_ESTIMATORS:
            raise ValueError(f"KL estimator {name!r} is already registered")
        KL_ESTIMATORS[name] = fn
        return fn

    return deco


@register_kl_estimator("k1")
def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 = logp - ref_logp."""
    return logp - ref_logp.detach()


@register_kl_estimator("k2")
def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k2 = 0.5 * (logp - ref_logp)^2."""
    return 0.5 * (logp - ref_logp.detach()).square()


@register_kl_estimator("k3")
def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 = exp(ref - logp) - (ref - logp) - 1, log-ratio clamped to +-20, result to <= 10."""
    neg_d = torch.clamp(ref_logp.detach() - logp, -KL_LOG_RATIO_CLAMP, KL_LOG_RATIO_CLAMP)
    return torch.clamp(torch.exp(neg_d) - neg_d - 1.0, max=KL_K3_MAX)


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: str = "k3") -> Tensor:
    """Per-token KL estimate of kind ``k1`` / ``k2`` / ``k3`` (the D_KL term of Eq. 3); no reduction.

    The reference log-probs are treated as constants; aggregate with
    :func:`~npu_retu.algos.policy_loss.agg_loss` and scale by ``algo.kl_coef``.
    """
    try:
        fn = KL_ESTIMATORS[kind]
    except KeyError:
        raise ValueError(f"unknown KL estimator {kind!r}; choose one of {', '.join(sorted(KL_ESTIMATORS))}") from None
    return fn(logp, ref_logp)
