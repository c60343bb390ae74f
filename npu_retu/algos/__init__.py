"""The algorithms' pieces in plain PyTorch, each registered by name so that configs pick them.

* :mod:`~npu_retu.algos.advantages` - group-relative advantages (GRPO, Eq. 2).
* :mod:`~npu_retu.algos.dynamic_sampling` - the :class:`Group` record, DAPO's group filter and the
  refill loop.
* :mod:`~npu_retu.algos.losses` - the registry of every training loss (:func:`build_loss`):
  :mod:`~npu_retu.algos.sft_loss` (SFT's NLL, Eq. 1) and :mod:`~npu_retu.algos.policy_loss` (the
  clipped, asymmetric, dual-clip policy loss and its token-mean / sequence-mean aggregation with
  global counts, Eq. 3, DAPO).
* :mod:`~npu_retu.algos.synchronized` - LUFFY, SRFT and UPT (Syn-SFT-RL, §3.3): their groups
  with expert trajectories and their registered losses.
* :mod:`~npu_retu.algos.logprobs` - per-token log-probs and entropy, from the full logits or the
  fused kernels.
* :mod:`~npu_retu.algos.kl` - k1 / k2 / k3 KL estimators (off in RETU).
* :mod:`~npu_retu.algos.presets` - the paper's GRPO / DAPO_d / DAPO_dc settings of ``rl.algo``.
"""

from npu_retu.algos.advantages import (
    ADVANTAGE_ESTIMATORS,
    advantages_of_group,
    get_advantage_estimator,
    group_advantages,
    register_advantage_estimator,
)
from npu_retu.algos.dynamic_sampling import Group, RolloutBatch, fill_batch, keep_mask
from npu_retu.algos.kl import KL_ESTIMATORS, kl_penalty, register_kl_estimator
from npu_retu.algos.losses import LOSSES, build_loss, get_loss, register_loss
from npu_retu.algos.policy_loss import LOSS_AGG_MODES, ClippedPolicyLoss, PolicyBatch, agg_loss, clipped_policy_loss
from npu_retu.algos.presets import RL_PRESETS
from npu_retu.algos.sft_loss import NextTokenNLL
from npu_retu.algos.synchronized import LuffyLoss, SrftLoss, UptLoss, gated_group, mixed_group

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "KL_ESTIMATORS",
    "LOSSES",
    "LOSS_AGG_MODES",
    "LuffyLoss",
    "SrftLoss",
    "UptLoss",
    "RL_PRESETS",
    "ClippedPolicyLoss",
    "Group",
    "NextTokenNLL",
    "PolicyBatch",
    "RolloutBatch",
    "advantages_of_group",
    "agg_loss",
    "build_loss",
    "clipped_policy_loss",
    "fill_batch",
    "gated_group",
    "mixed_group",
    "get_advantage_estimator",
    "get_loss",
    "group_advantages",
    "keep_mask",
    "kl_penalty",
    "register_advantage_estimator",
    "register_kl_estimator",
    "register_loss",
]
