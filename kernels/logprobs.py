"""The log-probs op: ``log softmax(h W^T / T)[y]`` and the entropy from hidden states and the LM
head, written once over a *tile implementation* (``reference.TorchTiles``, ``triton.TritonTiles``,
``ascend.AscendTiles``).

An implementation supplies the per-chunk work (a chunk's log-probs, ``lse`` and entropy; the
backward of a chunk); this module does the chunking over tokens and the autograd plumbing, so every
backend has the same semantics. :func:`linear_logprobs` is differentiable; its backward recomputes
the tiles from the saved hidden states and per-token ``lse``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from npu_retu.kernels.reference import check_linear_inputs


class _LinearLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, tiles, temperature, with_entropy):
        n = hidden.shape[0]
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(logp)
        entropy = torch.empty_like(logp)
        for t0 in range(0, n, tiles.token_chunk):
            t1 = min(t0 + tiles.token_chunk, n)
            logp[t0:t1], lse[t0:t1], entropy[t0:t1] = tiles.stats(hidden[t0:t1], weight, targets[t0:t1], temperature, with_entropy)
        ctx.save_for_backward(hidden, weight, targets, lse, entropy)
        ctx.tiles, ctx.temperature = tiles, temperature
        ctx.set_materialize_grads(False)
        if not with_entropy:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, targets, lse, entropy = ctx.saved_tensors
        tiles, temperature = ctx.tiles, ctx.temperature
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if grad_logp is None:
            grad_logp = torch.zeros_like(lse)
        grad_hidden = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if need_h else None
        grad_weight = torch.zeros(weight.shape, dtype=tiles.grad_weight_dtype(weight), device=weight.device) if need_w else None
        for t0 in range(0, hidden.shape[0], tiles.token_chunk):
            t1 = min(t0 + tiles.token_chunk, hidden.shape[0])
            gh = tiles.grads(
                hidden[t0:t1], weight, targets[t0:t1], temperature, lse[t0:t1], entropy[t0:t1],
                grad_logp[t0:t1].float().contiguous(),
                None if grad_entropy is None else grad_entropy[t0:t1].float().contiguous(),
                grad_weight, need_h,
            )
            if need_h:
                grad_hidden[t0:t1] = gh
        return (
            grad_hidden.to(hidden.dtype) if need_h else None,
            grad_weight.to(weight.dtype) if need_w else None,
            None, None, None, None,
        )


def linear_logprobs(
    tiles, hidden: Tensor, weight: Tensor, targets: Tensor, *, temperature: float = 1.0, return_entropy: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Per-token ``log softmax(h W^T / T)[targets]`` in fp32 (shape of ``targets``) and optionally
    the entropy of each distribution, never building the ``[T, V]`` logits. Differentiable in
    ``hidden`` and ``weight``; under ``torch.no_grad()`` (or with neither requiring grad) no graph
    is kept."""
    check_linear_inputs(hidden, weight, targets, temperature)
    lead = targets.shape
    h = hidden.reshape(-1, hidden.shape[-1]).contiguous()
    y = targets.reshape(-1).long().contiguous()
    w = weight.contiguous()
    # without grad (old / reference log-probs) autograd records nothing and drops what forward saved
    logp, entropy = _LinearLogprobs.apply(h, w, y, tiles, float(temperature), return_entropy)
    return logp.view(lead), entropy.view(lead) if return_entropy else None
