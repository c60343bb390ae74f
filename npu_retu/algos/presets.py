"""The paper's three RL recipes as plain dicts of :class:`~npu_retu.algos.config.AlgoConfig` keys.

What the names mean (paper §5.2 "Training", Appendix B.2.1, B.2.2):

* "GRPO and DAPO_d (GRPO with dynamic difficulty sampling)" - §5.2.
* "DAPO_d adds the dynamic difficulty sampling strategy on GRPO. For DAPO_d, [...] the asymmetric
  clipping ratio strategy is not applied." - B.2.1. So d = dynamic sampling, clip 0.2 / 0.2.
* "DAPO_dc adds the asymmetric clipping ratio strategy to DAPO_d, setting (eps_high, eps_low) =
  (0.28, 0.2)." - B.2.2. So c = clip-higher.
* GRPO: no dynamic sampling; one generation batch = the train batch (Appendix C.2, Eq. 23).
* All three: "token-level loss aggregation is uniformly applied across all runs" (B.2); binary
  reward; "the entropy and KL term coefficients are 0, and the group advantage normalization is
  enabled" (B.2.2); n = 8. Dual-clip 10 for negative advantages is RETU's code setting (DESIGN),
  shared by all three since they differ only in the d / c switches.

:data:`PAPER_RUN_SETTINGS` holds the Appendix B numbers that belong to other config sections
(batch sizes, sampling, learning rate, lengths) for whoever wires the full config.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from npu_retu.algos.config import AlgoConfig
from npu_retu.config import ConfigError

_SHARED: dict[str, Any] = {
    "adv_estimator": "grpo",
    "normalize_std": True,
    "loss_agg": "token-mean",
    "clip_low": 0.2,
    "dual_clip": 10.0,
    "log_ratio_clamp": 20.0,
    "kl_coef": 0.0,
    "kl_kind": "k3",
    "entropy_coef": 0.0,
    "n": 8,
}

RL_PRESETS: dict[str, dict[str, Any]] = {
    "grpo": {**_SHARED, "clip_high": 0.2, "dynamic_sampling": False, "max_draws": 1},
    "dapo_d": {**_SHARED, "clip_high": 0.2, "dynamic_sampling": True, "max_draws": 10},
    "dapo_dc": {**_SHARED, "clip_high": 0.28, "dynamic_sampling": True, "max_draws": 10},
}

# Appendix B / DESIGN values outside the algo section. gen_batch_prompts is in prompts (verl's
# gen_batch_size): the paper's B.2 text says "128 responses per inference round"; DESIGN reads it
# as 128 prompts per draw, as Appendix C.2's K * B_gen * G sequences per step implies.
PAPER_RUN_SETTINGS: dict[str, dict[str, Any]] = {
    name: {
        "train_batch_prompts": 64,
        "gen_batch_prompts": 64 if name == "grpo" else 128,  # GRPO: B_gen = B_train (Appx. C.2)
        "mini_batch_prompts": 64,
        "temperature": 0.7,
        "top_p": 1.0,
        "lr": 1e-6,
        "max_prompt_length": 1024,
        "max_response_length": 8192,
        "overlong_penalty": False,
    }
    for name in RL_PRESETS
}


def algo_config(preset: str, **overrides: Any) -> AlgoConfig:
    """An :class:`AlgoConfig` from preset ``grpo`` / ``dapo_d`` / ``dapo_dc`` with ``overrides``, validated."""
    if preset not in RL_PRESETS:
        raise ConfigError(f"unknown RL preset {preset!r}; choose one of {', '.join(RL_PRESETS)}")
    valid = {f.name for f in dataclasses.fields(AlgoConfig)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ConfigError(f"unknown config key 'algo.{unknown[0]}'; valid keys in 'algo': {', '.join(sorted(valid))}")
    cfg = AlgoConfig(**{**RL_PRESETS[preset], **overrides})
    cfg.validate()
    return cfg
