"""Rollout engines: sample responses from the policy (DESIGN.md, "Interfaces" and "Backends").

``build_rollout`` makes the engine ``rl.rollout.engine`` names (``transformers``, ``vllm``, or
``auto``: vLLM where installed); every engine follows :class:`~npu_retu.rollout.base.RolloutEngine`.
The vLLM engine (:mod:`npu_retu.rollout.vllm`) imports vLLM only when it is built.
"""

from npu_retu.rollout.base import FINISH_REASONS, GenerationStats, RolloutEngine, SamplingParams, Trajectory
from npu_retu.rollout.build import ENGINE_CHOICES, build_rollout, choose_engine, vllm_installed
from npu_retu.rollout.hf import TransformersRollout, sample_next_tokens, top_p_filter

__all__ = [
    "ENGINE_CHOICES",
    "FINISH_REASONS",
    "GenerationStats",
    "RolloutEngine",
    "SamplingParams",
    "Trajectory",
    "TransformersRollout",
    "build_rollout",
    "choose_engine",
    "vllm_installed",
    "sample_next_tokens",
    "top_p_filter",
]
