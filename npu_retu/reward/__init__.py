"""Rule rewards for RL, by name.

``make_reward("math_verify", num_workers=..., timeout_s=...)`` returns a ``MathReward``: binary
math-verify scoring of the final answer in killable worker processes (see ``math_reward``).
Importing this package is cheap: math-verify is imported only inside the workers.
"""

from __future__ import annotations

from typing import Any

from npu_retu.errors import UserError
from npu_retu.reward.extract import final_answer_text, truncate_for_log
from npu_retu.reward.math_reward import MathReward, RewardPool, RewardResult, evaluate, score_one

REWARDS: dict[str, type] = {"math_verify": MathReward}


def make_reward(name: str, **kwargs: Any):
    """The reward registered as ``name``, built with ``kwargs`` (e.g. ``num_workers``, ``timeout_s``)."""
    try:
        cls = REWARDS[name]
    except KeyError:
        raise UserError(f"unknown reward {name!r}; choose one of: {', '.join(sorted(REWARDS))}") from None
    return cls(**kwargs)


__all__ = [
    "REWARDS",
    "MathReward",
    "RewardPool",
    "RewardResult",
    "evaluate",
    "final_answer_text",
    "make_reward",
    "score_one",
    "truncate_for_log",
]
