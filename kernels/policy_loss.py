"""The clipped policy-loss ops, written once over a *tile implementation* (``reference.TorchTiles``,
``triton.TritonTiles``, ``ascend.AscendTiles``).

An implementation supplies the clipped policy loss of a run of tokens (``loss_terms``) and, for the
fused op, a token chunk's log-probs followed at once by their backward (``stats_then_grads``); this
module does the chunking over tokens and the autograd plumbing, so every backend has the same
semantics:

* :func:`policy_loss`: the clipped policy loss of ``npu_retu.algos.clipped_policy_loss`` with its
  gradient computed in the forward pass.
* :func:`linear_policy_loss`: the log-probs op (``logprobs.py``) and the loss together from hidden
  states: each token chunk's log-probs, their loss gradient, and the chunk's ``dh`` / ``dW``, in one
  forward; backward only scales them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from npu_retu.kernels.reference import check_linear_inputs, metrics_from_sums, prepare_loss_inputs


class _AttachGrads(torch.autograd.Function):
    """A scalar whose gradients w.r.t. ``inputs`` were computed along with it; backward scales them."""

    @staticmethod
    def forward(ctx, value, count, *inputs_then_grads):
        inputs, grads = inputs_then_grads[:count], inputs_then_grads[count:]
        ctx.has_grad = [g is not None for g in grads]
        ctx.dtypes = [x.dtype for x in inputs]
        ctx.save_for_backward(*[g for g in grads if g is not None])
        return value.detach().clone()

    @staticmethod
    def backward(ctx, grad_out):
        saved = iter(ctx.saved_tensors)
        grads = [(next(saved) * grad_out).to(dtype) if has else None for has, dtype in zip(ctx.has_grad, ctx.dtypes)]
        return (None, None, *grads, *([None] * len(grads)))


def attach_grads(value: Tensor, inputs: list[Tensor], grads: list[Tensor | None]) -> Tensor:
    """``value`` as a graph node whose gradient w.r.t. ``inputs[i]`` is ``grads[i]`` times the incoming one."""
    return _AttachGrads.apply(value, len(inputs), *inputs, *grads)


def policy_loss(
    tiles,
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    dual_clip: float | None = 10.0,
    agg: str = "token-mean",
    global_token_count: int | float | Tensor | None = None,
    global_seq_count: int | float | Tensor | None = None,
    log_ratio_clamp: float = 20.0,
) -> tuple[Tensor, dict[str, float]]:
    """The clipped policy loss (Eq. 3 with DAPO's clip-higher and dual-clip) and its metrics, forward
    and backward in one pass over the tokens. Same arguments and results as
    ``npu_retu.algos.clipped_policy_loss``."""
    old, adv, weights = prepare_loss_inputs(
        logprobs, old_logprobs, advantages, mask, agg, global_token_count, global_seq_count, clip_low, clip_high, dual_clip
    )
    with torch.no_grad():
        grad, sums = tiles.loss_terms(
            logprobs.detach().reshape(-1).float().contiguous(), old.reshape(-1).contiguous(), adv.reshape(-1).contiguous(),
            weights.reshape(-1).contiguous(), mask.reshape(-1).bool().contiguous(),
            clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip, log_ratio_clamp=log_ratio_clamp,
        )
    loss = attach_grads(sums[0].float(), [logprobs], [grad.view(logprobs.shape)])
    return loss, metrics_from_sums(sums)


def linear_policy_loss(
    tiles,
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    temperature: float = 1.0,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    dual_clip: float | None = 10.0,
    agg: str = "token-mean",
    global_token_count: int | float | Tensor | None = None,
    global_seq_count: int | float | Tensor | None = None,
    log_ratio_clamp: float = 20.0,
    return_entropy: bool = False,
) -> tuple[Tensor, dict[str, float]]:
    """The clipped policy loss straight from hidden states ``[B, T, H]`` and the LM head ``[V, H]``.

    Only the tokens inside ``mask`` are computed. For each token chunk: the log-probs (online
    log-sum-exp over vocab tiles), the loss gradient of each log-prob, and that chunk's share of
    ``dh`` and ``dW``, so the forward pass leaves the finished gradients and the backward pass only
    scales them. The metrics are those of :func:`policy_loss`, plus ``entropy`` (mean over the
    tokens, no gradient) when ``return_entropy``.
    """
    check_linear_inputs(hidden, weight, targets, temperature)
    old, adv, weights = prepare_loss_inputs(
        targets, old_logprobs, advantages, mask, agg, global_token_count, global_seq_count, clip_low, clip_high, dual_clip
    )
    selected = mask.reshape(-1).bool()
    h = hidden.reshape(-1, hidden.shape[-1])[selected]  # indexing keeps the graph back to `hidden`
    y = targets.reshape(-1)[selected].long().contiguous()
    old, adv, weights = (x.reshape(-1)[selected].contiguous() for x in (old, adv, weights))
    ones = torch.ones_like(y, dtype=torch.bool)
    need_h = torch.is_grad_enabled() and h.requires_grad
    need_w = torch.is_grad_enabled() and weight.requires_grad
    settings = dict(clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip, log_ratio_clamp=log_ratio_clamp)
    with torch.no_grad():
        hc, wc = h.detach().contiguous(), weight.detach().contiguous()
        grad_h = torch.empty(h.shape, dtype=torch.float32, device=h.device) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=tiles.grad_weight_dtype(weight), device=weight.device) if need_w else None
        sums = torch.zeros(7, dtype=torch.float64, device=h.device)
        entropy_sum = torch.zeros((), dtype=torch.float64, device=h.device)
        for t0 in range(0, h.shape[0], tiles.token_chunk):
            t1 = min(t0 + tiles.token_chunk, h.shape[0])
            chunk_sums = []

            def grad_of_logp(logp: Tensor, t0: int = t0, t1: int = t1) -> Tensor:
                grad, s = tiles.loss_terms(logp, old[t0:t1], adv[t0:t1], weights[t0:t1], ones[t0:t1], **settings)
                chunk_sums.append(s)
                return grad

            _, entropy, gh = tiles.stats_then_grads(
                hc[t0:t1], wc, y[t0:t1], float(temperature), return_entropy, grad_of_logp, grad_w, need_h
            )
            sums += chunk_sums[0]
            if return_entropy:
                entropy_sum += entropy.double().sum()
            if need_h:
                grad_h[t0:t1] = gh
    loss = attach_grads(sums[0].float(), [h, weight], [grad_h, grad_w])
    metrics = metrics_from_sums(sums)
    if return_entropy:
        metrics["entropy"] = float(entropy_sum) / max(1, h.shape[0])
    return loss, metrics
