"""Rollout engines: sample responses from the policy (DESIGN.md, "Interfaces" and "Backends").

``ROLLOUT_ENGINES`` maps a config name to an engine class; every engine follows
:class:`~npu_retu.rollout.base.RolloutEngine`.
"""

from npu_retu.rollout.base import FINISH_REASONS, GenerationStats, RolloutEngine, SamplingParams, Trajectory
from npu_retu.rollout.hf import TransformersRollout, sample_next_tokens, top_p_filter

ROLLOUT_ENGINES: dict[str, type] = {"transformers": TransformersRollout}

__all__ = [
    "FINISH_REASONS",
    "ROLLOUT_ENGINES",
    "GenerationStats",
    "RolloutEngine",
    "SamplingParams",
    "Trajectory",
    "TransformersRollout",
    "sample_next_tokens",
    "top_p_filter",
]
