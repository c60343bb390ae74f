"""Triton kernels of the log-probs op (``kernels/logprobs.py``): log-probs and entropy from the LM head.

Per token chunk, the vendor BLAS computes the chunk's logits ``h W^T`` (``[token_chunk, V]``, the
only buffer of vocabulary width; the ``[T, V]`` logits never exist). Two Triton kernels then work
along each row in vocabulary tiles of ``BLOCK_V``:

* ``_row_stats_kernel``: online log-sum-exp over the tiles -> ``logp``, ``lse`` and the entropy
  (``lse - sum p z``). The target logit is picked with ``tl.where`` inside each tile, not a gather
  (Ascend's compiler turns gathers into scalar loops).
* ``_row_grad_kernel``: overwrites the logits in place with ``dz = g_logp ([v = y] - p) -
  g_H p (z - (lse - H))``, times ``1/T``; two BLAS calls then give ``dh = dz W`` and ``dW += dz^T h``.

Both kernels loop over rows with a stride of the grid size, so the grid can be capped (Ascend ties
it to the vector-core count and allows at most 65535 programs) without changing the result.
"""

from __future__ import annotations

import torch

try:  # optional: ``unavailable_reason`` in this package's ``__init__`` says what is missing
    import triton
    import triton.language as tl
except ImportError:  # the reference implementation needs no Triton
    triton = None


def _grid(rows: int, max_programs: int | None) -> tuple[int]:
    return (max(1, rows if max_programs is None else min(rows, max_programs)),)


if triton is not None:

    @triton.jit
    def _row_stats_kernel(
        logits_ptr, row_stride, targets_ptr, logp_ptr, lse_ptr, entropy_ptr, n_rows, n_cols, inv_temperature,
        WITH_ENTROPY: tl.constexpr, BLOCK_V: tl.constexpr,
    ):
        for row in range(tl.program_id(0), n_rows, tl.num_programs(0)):
            base = logits_ptr + tl.cast(row, tl.int64) * row_stride
            target = tl.load(targets_ptr + row)
            running_max = float("-inf")
            sum_exp = 0.0
            sum_exp_z = 0.0
            target_logit = 0.0
            for v0 in range(0, n_cols, BLOCK_V):
                cols = v0 + tl.arange(0, BLOCK_V)
                valid = cols < n_cols
                z = tl.load(base + cols, mask=valid, other=float("-inf")).to(tl.float32) * inv_temperature
                new_max = tl.maximum(running_max, tl.max(z, axis=0))
                rescale = tl.exp(running_max - new_max)
                e = tl.exp(z - new_max)
                sum_exp = sum_exp * rescale + tl.sum(e, axis=0)
                if WITH_ENTROPY:
                    sum_exp_z = sum_exp_z * rescale + tl.sum(e * tl.where(valid, z, 0.0), axis=0)
                target_logit += tl.sum(tl.where(cols == target, z, 0.0), axis=0)
                running_max = new_max
            lse = running_max + tl.log(sum_exp)
            tl.store(logp_ptr + row, target_logit - lse)
            tl.store(lse_ptr + row, lse)
            if WITH_ENTROPY:
                tl.store(entropy_ptr + row, lse - sum_exp_z / sum_exp)

    @triton.jit
    def _row_grad_kernel(
        logits_ptr, row_stride, targets_ptr, lse_ptr, entropy_ptr, grad_logp_ptr, grad_entropy_ptr, n_rows, n_cols,
        inv_temperature, WITH_ENTROPY_GRAD: tl.constexpr, BLOCK_V: tl.constexpr,
    ):
        for row in range(tl.program_id(0), n_rows, tl.num_programs(0)):
            base = logits_ptr + tl.cast(row, tl.int64) * row_stride
            target = tl.load(targets_ptr + row)
            lse = tl.load(lse_ptr + row)
            grad_logp = tl.load(grad_logp_ptr + row)
            grad_entropy = 0.0
            mean_z = 0.0
            if WITH_ENTROPY_GRAD:
                grad_entropy = tl.load(grad_entropy_ptr + row)
                mean_z = lse - tl.load(entropy_ptr + row)
            for v0 in range(0, n_cols, BLOCK_V):
                cols = v0 + tl.arange(0, BLOCK_V)
                valid = cols < n_cols
                z = tl.load(base + cols, mask=valid, other=0.0).to(tl.float32) * inv_temperature
                p = tl.exp(z - lse)
                dz = tl.where(cols == target, grad_logp, 0.0) - grad_logp * p
                if WITH_ENTROPY_GRAD:
                    dz -= grad_entropy * p * (z - mean_z)
                dz = dz * inv_temperature
                tl.store(base + cols, dz.to(logits_ptr.dtype.element_ty), mask=valid)


def logits_stats(logits, y, temperature, with_entropy, *, block_v: int, max_programs: int | None):
    """``(logp, lse, entropy)`` of one chunk's logits ``[n, V]`` (``entropy`` zeros without ``with_entropy``)."""
    n, vocab = logits.shape
    logp = torch.empty(n, dtype=torch.float32, device=logits.device)
    lse = torch.empty_like(logp)
    entropy = torch.zeros_like(logp)
    _row_stats_kernel[_grid(n, max_programs)](
        logits, logits.stride(0), y, logp, lse, entropy, n, vocab, 1.0 / temperature,
        WITH_ENTROPY=with_entropy, BLOCK_V=block_v,
    )
    return logp, lse, entropy


def logits_grads(logits, h, weight, y, temperature, lse, entropy, grad_logp, grad_entropy, grad_weight, need_grad_hidden,
                 *, block_v: int, max_programs: int | None):
    """Back-propagate one chunk from its logits (overwritten with ``dz``): returns ``dh`` (fp32) and
    adds into ``grad_weight``."""
    n, vocab = logits.shape
    _row_grad_kernel[_grid(n, max_programs)](
        logits, logits.stride(0), y, lse, entropy, grad_logp, grad_logp if grad_entropy is None else grad_entropy,
        n, vocab, 1.0 / temperature, WITH_ENTROPY_GRAD=grad_entropy is not None, BLOCK_V=block_v,
    )
    dz = logits.to(weight.dtype)  # dz in place of the logits; BLAS in the weight's dtype
    grad_h = (dz @ weight).float() if need_grad_hidden else None
    if grad_weight is not None:
        if grad_weight.dtype == dz.dtype:
            torch.addmm(grad_weight, dz.t(), h, out=grad_weight)
        else:
            grad_weight += (dz.t() @ h).to(grad_weight.dtype)
    return grad_h
