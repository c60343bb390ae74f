"""RL algorithm pieces in plain PyTorch, each registered by name so that configs pick them.

* :mod:`~npu_retu.algos.advantages` - group-relative advantages (GRPO, Eq. 2).
* :mod:`~npu_retu.algos.policy_loss` - the clipped (asymmetric, dual-clip) policy loss and its
  token-mean / sequence-mean aggregation with global counts (Eq. 3, DAPO).
* :mod:`~npu_retu.algos.kl` - k1 / k2 / k3 KL estimators (off in RETU).
* :mod:`~npu_retu.algos.dynamic_sampling` - DAPO's group filter and the refill loop.
* :mod:`~npu_retu.algos.config`, :mod:`~npu_retu.algos.presets` - the ``algo`` section and the
  paper's GRPO / DAPO_d / DAPO_dc settings.
"""

from npu_retu.algos.advantages import (
    ADVANTAGE_ESTIMATORS,
    broadcast_to_tokens,
    get_advantage_estimator,
    group_advantages,
    register_advantage_estimator,
)
from npu_retu.algos.config import AlgoConfig
from npu_retu.algos.dynamic_sampling import Group, fill_batch, keep_mask
from npu_retu.algos.kl import KL_ESTIMATORS, kl_penalty, register_kl_estimator
from npu_retu.algos.policy_loss import (
    LOSS_AGG_MODES,
    POLICY_LOSSES,
    agg_loss,
    clipped_policy_loss,
    get_policy_loss,
    register_policy_loss,
)
from npu_retu.algos.presets import PAPER_RUN_SETTINGS, RL_PRESETS, algo_config

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "KL_ESTIMATORS",
    "LOSS_AGG_MODES",
    "PAPER_RUN_SETTINGS",
    "POLICY_LOSSES",
    "RL_PRESETS",
    "AlgoConfig",
    "Group",
    "agg_loss",
    "algo_config",
    "broadcast_to_tokens",
    "clipped_policy_loss",
    "fill_batch",
    "get_advantage_estimator",
    "get_policy_loss",
    "group_advantages",
    "keep_mask",
    "kl_penalty",
    "register_advantage_estimator",
    "register_kl_estimator",
    "register_policy_loss",
]
