"""The clipped policy loss of GRPO / DAPO (paper Eq. 3 with DAPO's asymmetric clip) and its aggregation.

Per response token, with ``r = exp(clamp(logp - old_logp, -c, c))``:

    pg = max(-A * r, -A * clip(r, 1 - eps_low, 1 + eps_high))       (Eq. 3, negated; DAPO clip-higher)
    pg = min(pg, -A * dual_clip)         for A < 0                  (dual-clip PPO, Ye et al. 2020)

This is verl's ``compute_policy_loss`` ("vanilla"), which RETU ran: for A < 0 the clipped loss
``|A| * max(r, 1 - eps_low)`` grows without bound in r, so dual-clip caps it at ``dual_clip * |A|``
(c = 10 in RETU) - a token whose ratio exceeds ``dual_clip`` then gives no gradient. The log-ratio
clamp (20, as verl) only keeps ``exp`` finite.

Aggregation (:func:`agg_loss`) decides the normaliser. For micro-batching and data parallelism the
caller passes the count over the *whole* mini-batch (every micro-batch on every rank) so that the
summed gradients equal the gradient of the whole mini-batch in one piece.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")

PolicyLoss = Callable[..., tuple[Tensor, dict[str, float]]]

POLICY_LOSSES: dict[str, PolicyLoss] = {}


def register_policy_loss(name: str) -> Callable[[PolicyLoss], PolicyLoss]:
    """Register ``fn(logp, old_logp, advantages, response_mask, **options) -> (loss, metrics)``."""

    def deco(fn: PolicyLoss) -> PolicyLoss:
        if name in POLICY_LOSSES:
            raise ValueError(f"policy loss {name!r} is already registered")
        POLICY_LOSSES[name] = fn
        return fn

    return deco


def get_policy_loss(name: str) -> PolicyLoss:
    """The policy loss registered as ``name``; a ValueError lists the valid names otherwise."""
    try:
        return POLICY_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown policy loss {name!r}; choose one of {', '.join(sorted(POLICY_LOSSES))}") from None


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


@register_policy_loss("clipped")
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
    """Clipped surrogate loss of GRPO/DAPO (paper Eq. 3, negated, with DAPO's (eps_low, eps_high)).

    ``logp`` (with gradient), ``old_logp`` and ``response_mask`` are ``[B, T]``; ``advantages`` is
    ``[B]`` (one per sequence) or ``[B, T]``. ``clip_low`` / ``clip_high`` are eps_low / eps_high
    (DAPO_dc: 0.2 / 0.28; GRPO, DAPO_d: 0.2 / 0.2); ``dual_clip`` caps the loss of negative-advantage
    tokens at ``dual_clip * |A|`` (None turns it off); ``agg`` and the global counts go to
    :func:`agg_loss`.

    Returns ``(loss, metrics)``; the metrics are floats over this call's response tokens:
    ``clipfrac_upper`` (A > 0 and r > 1 + eps_high), ``clipfrac_lower`` (A < 0 and r < 1 - eps_low),
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
