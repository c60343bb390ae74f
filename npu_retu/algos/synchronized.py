"""Synchronized SFT-RL (paper §3.3, Eq. 4-8): LUFFY, SRFT and UPT put expert trajectories into the RL step.

Each is a registered RL loss (:mod:`npu_retu.algos.losses`) that runs on the same trainer loop,
rollout engines, reward, kernels, FLOPs accounting, data-parallel path and checkpoints as GRPO /
DAPO. What differs is the group a prompt contributes (:func:`mixed_group`, :func:`gated_group`;
the loss's ``experts`` attribute tells the trainer which) and the per-token loss. The behaviour is
that of the code the paper ran (TsinghuaC3I/Unify-Post-Training, ``hpt/verl/verl/mix_src``;
LUFFY's own tree, ElliottYan/LUFFY, has the same ``mix_core_alg.py``), with their scripts'
settings (``exp_scripts/train_luffy.sh``, ``train_srft.sh``, ``train.sh``):

* **LUFFY** (``mix_core_alg.py`` ``compute_token_on_off_policy_loss``, ``off_policy_reshape =
  p_div_p_0.1``, ``loss_remove_clip``, ``loss_remove_token_mean``): per prompt G - N rollouts and N
  expert trajectories (7 + 1); advantage R - mean over all G, the expert included, no std;
  on-policy tokens ``-A * r`` with the ratio unclipped; expert tokens ``-A * f(p)``, ``f(p) = p /
  (p + gamma)``, gamma = 0.1, p = pi_theta(token) with its gradient and no old-policy term (Eq. 4-5).
* **SRFT** (``mix_actor.py`` ``offline_loss_type == "srft"`` and ``mix_core_alg.py``
  ``compute_token_on_off_policy_srft_loss``, ``srft_type = "paper"``): 7 + 1 like LUFFY; H_i the
  mean token entropy of sequence i (detached); the expert gets the SFT NLL weighted
  ``0.5 * exp(-H)`` plus LUFFY's expert term; a correct rollout ``-0.1 * exp(H) * log pi``, a wrong
  one ``+log pi`` (raw log-probs: no ratio, no clip). Eq. 7 of the paper prints w_1 = 5 and w_2 = 1 in
  one place; the code the paper ran uses 0.5 and 0.1, and so do we (``srft_sft_weight``,
  ``srft_pos_weight``).
* **UPT** (``mix_trainer.py`` ``select_on_off_ada_balance`` with ``unify_strategy = switch``,
  ``mix_actor.py`` ``offline_loss_type == "sft"``): G = 8 rollouts; a group with at most ``gate``
  correct (0 for Qwen, 2 for Llama in UPT's scripts) is replaced by one expert trajectory trained
  with the token-mean NLL times ``sft_coef`` (1.0); otherwise GRPO on the rollouts, unclipped and
  without the std, aggregated as LUFFY (Eq. 8). Its preset also skips an optimizer step whose
  pre-clip gradient norm exceeds 80 (``rl.algo.skip_grad_norm``; clipping to 1.0 otherwise) and
  takes lr 5e-6.

Aggregation. The policy-gradient terms are summed over the response tokens and divided by the
padded response length (``loss_remove_token_mean``: verl pads every response to the configured
maximum, ``rl.max_response_length``) and, for micro-batching and data parallelism, by the
mini-batch's sequence count: ``sum_{i,t} loss_it / (N_seq * L_max)``. The reference divides each
micro-batch's sum by L_max and averages the micro-batches and ranks, which is this times the
sequences per micro-batch and rank (8 in its scripts); ours does not change with how a mini-batch is
split (a constant factor that Adam all but ignores, though it moves the grad norm that clipping and
UPT's skip compare with). The SFT terms (SRFT, UPT) are token means over the mini-batch's expert
tokens, the entropy bonus (0.001 in all three scripts) a token mean over all response tokens.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from npu_retu.algos.advantages import advantages_of_group
from npu_retu.algos.dynamic_sampling import Group
from npu_retu.algos.logprobs import token_logprobs
from npu_retu.algos.losses import register_loss
from npu_retu.algos.policy_loss import PolicyBatch

# --------------------------------------------------------------------------------------------
# the groups a prompt contributes


def mixed_group(prompt_index: int, prompt_ids: list[int], rollouts: list[Any], experts: list[Any],
                rewards: list[float]) -> Group:
    """LUFFY / SRFT: the G - N rollouts and the N expert trajectories of one prompt as one group of G,
    rollouts first; ``rewards`` in the same order. Advantage ``R - mean`` over all G, the experts
    included, no std (LUFFY's ``compute_grpo_outcome_advantage`` with ``grpo_use_std=False``)."""
    return Group(prompt_index, prompt_ids, list(rollouts) + list(experts), list(rewards),
                 advantages_of_group(list(rewards), "grpo_no_std"))


def gated_group(prompt_index: int, prompt_ids: list[int], rollouts: list[Any], expert: Any, rewards: list[float],
                expert_reward: float, gate: int) -> Group:
    """UPT's switch (``select_on_off_ada_balance``): when at most ``gate`` of the G rollouts are
    correct (reward >= 1), the group becomes the prompt's expert trajectory alone, trained with SFT
    (advantage 0: it is no RL sample); otherwise it is the G rollouts with ``R - mean`` (no std)."""
    if sum(1 for r in rewards if r >= 1.0) <= gate:
        return Group(prompt_index, prompt_ids, [expert], [expert_reward], [0.0])
    return Group(prompt_index, prompt_ids, list(rollouts), list(rewards), advantages_of_group(list(rewards), "grpo_no_std"))


# --------------------------------------------------------------------------------------------
# the losses


def shaped_probability(logp: Tensor, gamma: float) -> Tensor:
    """LUFFY's regularised importance shaping of an expert token, ``f(p) = p / (p + gamma)`` with
    ``p = exp(logp)`` (paper Eq. 5, gamma = 0.1); differentiable in ``logp``."""
    p = torch.exp(logp)
    return p / (p + gamma)


def _masked_sum(x: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device)).sum()


def _positive(count: float) -> float:
    return float(count) if count > 0 else 1.0


class _SynchronizedLoss:
    """What the three share: one forward for the log-probs (and entropy) at the rollout temperature,
    the sum-over-padded-length aggregation, the entropy bonus and the metrics."""

    stage = "rl"
    experts: Literal["mixed", "gated"]

    def __init__(self, *, algo: Any, kernels: str = "auto", temperature: float = 1.0, max_response_length: int = 8192):
        self.kernels, self.temperature, self.padded_length = kernels, temperature, max_response_length
        self.entropy_coef, self.gamma = algo.entropy_coef, algo.shaping_gamma
        self.algo = algo

    def __call__(self, model: Any, batch: PolicyBatch) -> tuple[Tensor, dict[str, Any]]:
        logp, entropy = token_logprobs(model, batch.input_ids, batch.attention_mask, temperature=self.temperature,
                                       kernels=self.kernels, with_entropy=True, entropy_grad=self.entropy_coef > 0)
        mask = batch.response_mask
        expert = batch.expert[:, None].to(mask.dtype) * mask  # [B, T] 1 on expert tokens
        on = mask - expert
        per_token, sft, extra = self.token_losses(logp, entropy, batch, mask, expert, on)
        pg_loss = _masked_sum(per_token, mask) / (_positive(batch.global_seq_count) * self.padded_length)
        loss = pg_loss + sft
        if self.entropy_coef > 0:
            loss = loss - self.entropy_coef * _masked_sum(entropy, mask) / _positive(batch.global_token_count)
        with torch.no_grad():
            tokens, expert_tokens, on_tokens = float(mask.sum()), float(expert.sum()), float(on.sum())
            p = torch.exp(logp.detach())
            ratio = torch.exp(logp.detach() - batch.old_logprobs)
            metrics = {
                "pg_loss": float(pg_loss.detach()),
                "sft_loss": float(sft.detach()) if isinstance(sft, Tensor) else float(sft),
                "entropy": float(_masked_sum(entropy.detach(), mask)) / _positive(tokens),
                "expert_prob_mean": float(_masked_sum(p, expert)) / _positive(expert_tokens),
                "on_policy_ratio_mean": float(_masked_sum(ratio, on)) / _positive(on_tokens),
                "tokens": tokens,
                **extra,
            }
            metrics["weights"] = {"expert_prob_mean": expert_tokens, "on_policy_ratio_mean": on_tokens,
                                  **metrics.pop("weights", {})}
        return loss, metrics

    def token_losses(self, logp, entropy, batch, mask, expert, on) -> tuple[Tensor, Tensor | float, dict[str, Any]]:
        raise NotImplementedError


def _on_policy_ratio(logp: Tensor, old_logp: Tensor, on: Tensor) -> Tensor:
    """The unclipped importance ratio ``pi_theta / pi_old`` of the on-policy tokens (1 elsewhere: the
    expert rows have no old policy)."""
    log_ratio = torch.where(on.bool(), logp - old_logp, torch.zeros_like(logp))
    return torch.exp(log_ratio)


@register_loss("luffy")
class LuffyLoss(_SynchronizedLoss):
    """LUFFY (paper Eq. 4-5; ``mix_core_alg.py`` ``compute_token_on_off_policy_loss``): per token
    ``-A * r`` on the rollouts (r unclipped) and ``-A * f(p)`` on the expert trajectory, summed and
    divided by ``N_seq * L_max``, minus the entropy bonus."""

    experts = "mixed"

    def token_losses(self, logp, entropy, batch, mask, expert, on):
        advantages = batch.advantages if batch.advantages.dim() == 2 else batch.advantages[:, None].expand_as(logp)
        ratio = _on_policy_ratio(logp, batch.old_logprobs, on)
        per_token = torch.where(expert.bool(), -advantages * shaped_probability(logp, self.gamma), -advantages * ratio)
        return per_token, 0.0, {}


@register_loss("srft")
class SrftLoss(_SynchronizedLoss):
    """SRFT (paper Eq. 6-7 with the code's weights; ``mix_actor.py`` ``srft`` branch and
    ``mix_core_alg.py`` ``compute_token_on_off_policy_srft_loss``).

    With ``H_i`` the detached mean token entropy of sequence i: the expert's tokens ``-A * f(p)``
    (LUFFY's term) in the summed part and, as a token mean over the expert tokens,
    ``-srft_sft_weight * exp(-H_i) * log p`` (0.5; the paper's text prints 5); a correct rollout's
    tokens ``-srft_pos_weight * exp(H_i) * log p`` (0.1; the text prints 1), a wrong rollout's
    ``+log p``. Raw log-probs: no ratio, no clip, no old policy."""

    experts = "mixed"

    def token_losses(self, logp, entropy, batch, mask, expert, on):
        advantages = batch.advantages if batch.advantages.dim() == 2 else batch.advantages[:, None].expand_as(logp)
        h = (_row_sums(entropy.detach(), mask) / _row_sums(mask, mask).clamp(min=1.0))[:, None]  # [B, 1]
        sft_weight = self.algo.srft_sft_weight * torch.exp(-h)
        pos_weight = self.algo.srft_pos_weight * torch.exp(h)
        correct = batch.correct[:, None].expand_as(logp)
        on_policy = torch.where(correct, -pos_weight * logp, logp)
        per_token = torch.where(expert.bool(), -advantages * shaped_probability(logp, self.gamma), on_policy)
        sft = _masked_sum(-sft_weight * logp, expert) / _positive(batch.global_expert_token_count)
        with torch.no_grad():
            rows_expert = batch.expert & (mask.sum(dim=1) > 0)
            rows_correct = ~batch.expert & batch.correct & (mask.sum(dim=1) > 0)
            rows = mask.sum(dim=1) > 0
            extra = {
                "srft_entropy_H": float(h[rows].sum()) / _positive(float(rows.sum())),
                "srft_sft_weight": float(sft_weight[rows_expert].sum()) / _positive(float(rows_expert.sum())),
                "srft_pos_weight": float(pos_weight[rows_correct].sum()) / _positive(float(rows_correct.sum())),
                "weights": {"srft_entropy_H": float(rows.sum()), "srft_sft_weight": float(rows_expert.sum()),
                            "srft_pos_weight": float(rows_correct.sum())},
            }
        return per_token, sft, extra


@register_loss("upt")
class UptLoss(_SynchronizedLoss):
    """UPT (paper Eq. 8; ``mix_actor.py`` ``offline_loss_type == "sft"``): the groups the gate sent to
    SFT hold one expert trajectory each, trained with ``sft_coef *`` the token-mean NLL over the
    mini-batch's expert tokens; the rollouts of the other groups get ``-A * r`` (r unclipped), summed
    and divided by ``N_seq * L_max``."""

    experts = "gated"

    def token_losses(self, logp, entropy, batch, mask, expert, on):
        advantages = batch.advantages if batch.advantages.dim() == 2 else batch.advantages[:, None].expand_as(logp)
        ratio = _on_policy_ratio(logp, batch.old_logprobs, on)
        per_token = torch.where(expert.bool(), torch.zeros_like(logp), -advantages * ratio)
        sft = self.algo.sft_coef * _masked_sum(-logp, expert) / _positive(batch.global_expert_token_count)
        return per_token, sft, {}


def _row_sums(x: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim=1)
