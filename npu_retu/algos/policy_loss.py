"""The clipped policy loss of GRPO / DAPO (paper Eq. 3 with DAPO's asymmetric clip) and its aggregation.

Per response token, with ``r = exp(clamp(logp - old_logp, -c, c))``:

    pg = max(-A * r, -A * clip(r, 1 - clip_low, 1 + clip_high))     (Eq. 3, negated; DAPO clip-higher)
    pg = min(pg, -A * dual_clip)         for A < 0                  (dual-clip PPO, Ye et al. 2020)

This is verl's ``compute_policy_loss`` ("vanilla"), which RETU ran: for A < 0 the clipped loss
``|A| * max(r, 1 - clip_low)`` grows without bound in r, so dual-clip caps it at ``dual_clip * |A|``
(c = 10 in RETU) - a token whose ratio exceeds ``dual_clip`` then gives no gradient. The log-ratio
clamp (20, as verl) only keeps ``exp`` finite. ``clip_low`` / ``clip_high`` are the paper's
eps_low / eps_high (TRL's ``epsilon`` / ``epsilon_high``); the fused kernels take the same names.

Aggregation (:func:`agg_loss`) decides the normaliser. For micro-batching and data parallelism the
caller passes the count over the *whole* mini-batch (every micro-batch on every rank) so that the
summed gradients equal the gradient of the whole mini-batch in one piece.

:class:`ClippedPolicyLoss` is the registered loss ``clipped`` the RL trainer runs on each
micro-batch (a :class:`PolicyBatch`): this loss, plus the KL and entropy terms when configured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from npu_retu import kernels as fused
from npu_retu.algos.kl import kl_penalty
from npu_retu.algos.logprobs import hidden_states_and_head, kernel_impl, token_logprobs
from npu_retu.algos.losses import register_loss
from npu_retu.kernels.reference import LOSS_AGG_MODES  # the fused loss takes the same


def agg_loss(
    per_token: Tensor,
    mask: Tensor,
    mode: str = "token-mean",
    global_token_count: int | float | Tensor | None = None,
    global_seq_count: int | float | Tensor | None = None,
) -> Tensor:
    """Reduce a ``[B, T]`` per-token loss to a scalar over the tokens where ``mask`` is set.

    * ``token-mean`` (DAPO, RETU's "token-level loss aggregation", Appx. B.2; Eq. 3's
      ``1 / sum_i |tau_i|``): ``sum(loss * mask) / global_token_count``.
    * ``seq-mean-token-sum``: ``sum over sequences of (sum over tokens) / global_seq_count``.
    * ``seq-mean-token-mean`` (the original GRPO): ``sum over sequences of (token mean) / global_seq_count``.

    ``global_token_count`` / ``global_seq_count`` are the counts over the whole mini-batch (all
    micro-batches, all data-parallel ranks); None uses this call's own: ``mask.sum()`` tokens, and
    the sequences with at least one masked-in token. Masked-out entries never reach the result, even
    if they hold inf or nan. An empty selection gives 0 (still attached to the graph).
    """
    if per_token.shape != mask.shape:
        raise ValueError(f"per-token loss {tuple(per_token.shape)} and mask {tuple(mask.shape)} differ in shape")
    m = mask.bool()
    x = torch.where(m, per_token, torch.zeros((), dtype=per_token.dtype, device=per_token.device))
    if mode == "token-mean":
        denom = m.sum() if global_token_count is None else global_token_count
        return x.sum() / _positive(denom, x)
    if mode in ("seq-mean-token-sum", "seq-mean-token-mean"):
        tokens = m.sum(dim=-1)
        per_seq = x.sum(dim=-1)
        if mode == "seq-mean-token-mean":
            per_seq = per_seq / tokens.clamp(min=1).to(per_seq.dtype)
        denom = (tokens > 0).sum() if global_seq_count is None else global_seq_count
        return per_seq.sum() / _positive(denom, x)
    raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {', '.join(LOSS_AGG_MODES)}")


def _positive(denom: int | float | Tensor, like: Tensor) -> Tensor:
    # A zero count means nothing to average (every term of the sum is 0 too): divide by 1.
    d = torch.as_tensor(denom, device=like.device).to(like.dtype)
    return torch.where(d > 0, d, torch.ones_like(d))


def clipped_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    dual_clip: float | None = 10.0,
    log_ratio_clamp: float = 20.0,
    agg: str = "token-mean",
    global_token_count: int | float | Tensor | None = None,
    global_seq_count: int | float | Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped surrogate loss of GRPO/DAPO (paper Eq. 3, negated, with DAPO's asymmetric clip).

    ``logp`` (with gradient), ``old_logp`` and ``response_mask`` are ``[B, T]``; ``advantages`` is
    ``[B]`` (one per sequence) or ``[B, T]``. ``clip_low`` / ``clip_high`` are eps_low / eps_high
    (DAPO_dc: 0.2 / 0.28; GRPO, DAPO_d: 0.2 / 0.2); ``dual_clip`` caps the loss of negative-advantage
    tokens at ``dual_clip * |A|`` (None turns it off); ``agg`` and the global counts go to
    :func:`agg_loss`.

    Returns ``(loss, metrics)``; the metrics are floats over this call's response tokens:
    ``clipfrac_upper`` (A > 0 and r > 1 + clip_high), ``clipfrac_lower`` (A < 0 and r < 1 - clip_low),
    ``clipfrac`` (their sum: tokens whose gradient the clip removed), ``dual_clip_frac`` (A < 0 and
    r > dual_clip), ``approx_kl`` (the k3 estimator of KL(pi_old || pi_theta): mean of
    ``r - 1 - log r``, >= 0), ``ratio_mean``, and ``tokens`` (the count they are averaged over, to
    weight them across micro-batches).
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}")
    if not (0.0 <= clip_low < 1.0) or clip_high < 0.0:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    if logp.shape != old_logp.shape or logp.shape != response_mask.shape:
        raise ValueError(f"logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)}, mask {tuple(response_mask.shape)} must match")
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(logp)
    if advantages.shape != logp.shape:
        raise ValueError(f"advantages {tuple(advantages.shape)} must be [B] or [B, T] like logp {tuple(logp.shape)}")
    advantages = advantages.detach().to(logp.dtype)
    old_logp = old_logp.detach()

    log_ratio = torch.clamp(logp - old_logp, -log_ratio_clamp, log_ratio_clamp)
    ratio = torch.exp(log_ratio)
    pg_unclipped = -advantages * ratio
    pg_clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    pg = torch.maximum(pg_unclipped, pg_clipped)
    if dual_clip is not None:
        pg = torch.where(advantages < 0, torch.minimum(pg, -advantages * dual_clip), pg)

    loss = agg_loss(pg, response_mask, agg, global_token_count, global_seq_count)

    with torch.no_grad():
        m = response_mask.bool()
        n = int(m.sum())

        def frac(cond: Tensor) -> float:
            return float((cond & m).sum()) / n if n else 0.0

        upper = frac((advantages > 0) & (ratio > 1.0 + clip_high))
        lower = frac((advantages < 0) & (ratio < 1.0 - clip_low))
        zero = torch.zeros((), dtype=torch.float64, device=ratio.device)
        r = torch.where(m, ratio.double(), zero)
        lr = torch.where(m, log_ratio.double(), zero)
        metrics = {
            "clipfrac_upper": upper,
            "clipfrac_lower": lower,
            "clipfrac": upper + lower,
            "dual_clip_frac": frac((advantages < 0) & (ratio > dual_clip)) if dual_clip is not None else 0.0,
            "approx_kl": float(torch.where(m, r - 1.0 - lr, zero).sum()) / n if n else 0.0,
            "ratio_mean": float(r.sum()) / n if n else 0.0,
            "tokens": float(n),
        }
    return loss, metrics


@dataclass
class PolicyBatch:
    """One micro-batch for the policy loss: right-padded ``prompt + response`` rows.

    Position ``t`` of the ``[B, S-1]`` tensors scores token ``t + 1`` of the row; the counts are
    those of the whole mini-batch (all micro-batches on all ranks), the loss's normaliser.
    """

    input_ids: Tensor  # [B, S]
    attention_mask: Tensor  # [B, S]
    response_mask: Tensor  # [B, S-1] float: 1 where position t predicts a response token
    old_logprobs: Tensor  # [B, S-1] the sampling policy's log-probs (0 outside the response)
    advantages: Tensor  # [B] one per sequence, A_{i,t} = A_i (Eq. 2); [B, S-1] per token with TIS weights
    ref_logprobs: Tensor | None  # [B, S-1] the reference policy's, when there is a KL term
    global_token_count: int  # response tokens in the mini-batch
    global_seq_count: int  # sequences in the mini-batch
    # synchronized SFT-RL (npu_retu.algos.synchronized): which rows are expert trajectories, which
    # rollouts were correct (reward >= 1), and the mini-batch's expert response tokens
    expert: Tensor | None = None  # [B] bool
    correct: Tensor | None = None  # [B] bool
    global_expert_token_count: int = 0


@register_loss("clipped")
class ClippedPolicyLoss:
    """GRPO / DAPO's objective to minimise (Eq. 3, negated): the clipped policy loss of
    :func:`clipped_policy_loss` with the clip settings and aggregation of ``algo`` (the ``rl.algo``
    section, :class:`npu_retu.config.AlgoConfig`), ``+ kl_coef * KL(pi ||
    pi_ref)`` when ``algo.kl_coef > 0`` (``batch.ref_logprobs`` then set), ``- entropy_coef *
    entropy`` when ``algo.entropy_coef > 0``. Log-probs at the rollout ``temperature``.

    ``kernels`` picks the path: with no KL and no entropy bonus (GRPO / DAPO as the paper ran them)
    the fused kernels go from the hidden states to the loss in one pass
    (``fused_linear_policy_loss``); with either term, fused log-probs (and entropy) then the fused
    loss; ``unfused``: the model's full logits and the PyTorch loss. All give the same loss and
    gradients (tests/test_rl_trainer.py).

    Returns ``(loss, metrics)``: the clip metrics of :func:`clipped_policy_loss` (``tokens`` is their
    weight), ``pg_loss`` (this micro-batch's share of the mini-batch loss), ``kl_ref`` (with a KL
    term) and ``entropy`` (mean over the response tokens).
    """

    stage = "rl"
    experts = None  # trains on rollouts only (the synchronized losses set "mixed" or "gated")

    def __init__(self, *, algo: Any, kernels: str = "auto", temperature: float = 1.0, max_response_length: int | None = None):
        # (max_response_length: the synchronized losses' normaliser; this one divides by token counts)
        self.kernels, self.temperature = kernels, temperature
        self.kl_coef, self.kl_kind, self.entropy_coef, self.agg = algo.kl_coef, algo.kl_kind, algo.entropy_coef, algo.loss_agg
        self.settings = {"clip_low": algo.clip_low, "clip_high": algo.clip_high, "dual_clip": algo.dual_clip,
                         "log_ratio_clamp": algo.log_ratio_clamp, "agg": algo.loss_agg}

    def __call__(self, model: Any, batch: PolicyBatch) -> tuple[Tensor, dict[str, float]]:
        ids, attention, mask = batch.input_ids, batch.attention_mask, batch.response_mask
        counts = {"global_token_count": batch.global_token_count, "global_seq_count": batch.global_seq_count}
        impl = kernel_impl(self.kernels)
        if self.kernels != "unfused" and batch.ref_logprobs is None and self.entropy_coef == 0:
            hidden, head = hidden_states_and_head(model, ids, attention)
            loss, metrics = fused.fused_linear_policy_loss(
                hidden[:, :-1], head, ids[:, 1:], batch.old_logprobs, batch.advantages, mask, temperature=self.temperature,
                return_entropy=True, impl=impl, **self.settings, **counts,
            )
            return loss, {**metrics, "pg_loss": float(loss.detach())}

        logp, entropy = token_logprobs(
            model, ids, attention, temperature=self.temperature, kernels=self.kernels, with_entropy=True,
            entropy_grad=self.entropy_coef > 0,
        )
        if self.kernels == "unfused":
            loss, metrics = clipped_policy_loss(logp, batch.old_logprobs, batch.advantages, mask, **self.settings, **counts)
        else:
            loss, metrics = fused.clipped_policy_loss(logp, batch.old_logprobs, batch.advantages, mask, impl=impl, **self.settings, **counts)
        metrics = {**metrics, "pg_loss": float(loss.detach())}
        if batch.ref_logprobs is not None:  # beta * KL(pi || pi_ref), Eq. 3's penalty, with the chosen estimator
            kl = agg_loss(kl_penalty(logp, batch.ref_logprobs, kind=self.kl_kind), mask, self.agg, **counts)
            loss = loss + self.kl_coef * kl
            metrics["kl_ref"] = float(kl.detach())
        if self.entropy_coef > 0:  # an entropy bonus lowers the loss
            loss = loss - self.entropy_coef * agg_loss(entropy, mask, self.agg, **counts)
        metrics["entropy"] = float((entropy.detach() * mask).sum() / max(1.0, float(mask.sum())))
        return loss, metrics
