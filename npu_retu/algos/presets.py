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

The synchronized SFT-RL baselines (paper §3.3, Appendix B.2.1: "we adopt training configurations from
the Unify-Post-Training codebase"; :mod:`npu_retu.algos.synchronized` has the details and sources):

* LUFFY, SRFT: 7 rollouts + 1 expert trajectory per prompt ("a fixed 7:1 ratio"), advantage without
  the std, no KL, no dynamic sampling, entropy bonus 0.001 (their scripts' ``entropy_coeff``), lr
  1e-6.
* UPT: 8 rollouts; a group with no correct rollout (gate 0, UPT's Qwen setting; 2 for Llama)
  trains on its expert with SFT (coefficient 1.0); lr 5e-6; an optimizer step whose pre-clip
  gradient norm exceeds 80 is skipped; entropy bonus 0.001.

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

_SYNCHRONIZED: dict[str, Any] = {
    **_SHARED,
    "adv_estimator": "grpo_no_std",
    "normalize_std": False,
    "entropy_coef": 0.001,
    "dynamic_sampling": False,
    "max_draws": 1,
    "clip_high": 0.2,  # (unused: their on-policy ratio is not clipped)
}

RL_PRESETS: dict[str, dict[str, Any]] = {
    "grpo": {**_SHARED, "clip_high": 0.2, "dynamic_sampling": False, "max_draws": 1},
    "dapo_d": {**_SHARED, "clip_high": 0.2, "dynamic_sampling": True, "max_draws": 10},
    "dapo_dc": {**_SHARED, "clip_high": 0.28, "dynamic_sampling": True, "max_draws": 10},
    "luffy": {**_SYNCHRONIZED, "loss": "luffy", "experts_per_prompt": 1, "shaping_gamma": 0.1},
    "srft": {**_SYNCHRONIZED, "loss": "srft", "experts_per_prompt": 1, "shaping_gamma": 0.1,
             "srft_sft_weight": 0.5, "srft_pos_weight": 0.1},
    "upt": {**_SYNCHRONIZED, "loss": "upt", "gate": 0, "sft_coef": 1.0, "skip_grad_norm": 80.0},
}

# ``rl.optim`` keys a preset sets (given keys win): UPT's learning rate (Appendix B.2.1)
RL_PRESET_OPTIM: dict[str, dict[str, Any]] = {"upt": {"lr": 5e-6}}
