"""The paper's three RL recipes as plain dicts of ``rl.algo`` keys (:class:`npu_retu.config.AlgoConfig`).

What the names mean (paper §5.2 "Training", Appendix B.2.1, B.2.2):

* "GRPO and DAPO_d (GRPO with dynamic difficulty sampling)" - §5.2.
* "DAPO_d adds the dynamic difficulty sampling strategy on GRPO. For DAPO_d, [...] the asymmetric
  clipping ratio strategy is not applied." - B.2.1. So d = dynamic sampling, clip 0.2 / 0.2.
* "DAPO_dc adds the asymmetric clipping ratio strategy to DAPO_d, setting (eps_high, eps_low) =
  (0.28, 0.2)." - B.2.2. So c = clip-higher (``clip_high`` 0.28, ``clip_low`` 0.2).
* GRPO: no dynamic sampling; one generation batch = the train batch (Appendix C.2, Eq. 23).
* All three: "token-level loss aggregation is uniformly applied across all runs" (B.2); binary
  reward; "the entropy and KL term coefficients are 0, and the group advantage normalization is
  enabled" (B.2.2); n = 8. Dual-clip 10 for negative advantages is RETU's code setting (DESIGN),
  shared by all three since they differ only in the d / c switches.

``rl.algorithm`` names one; :func:`npu_retu.config.apply_rl_preset` fills ``rl.algo`` from it and the
keys given under ``rl.algo`` win. The Appendix B numbers of the other sections (batch sizes,
sampling, learning rate, lengths) are in the paper configs, ``configs/*dapo_dc*.yaml``.
"""

from __future__ import annotations

from typing import Any

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
