"""Triton kernels for log-probs and entropy from the LM head (CUDA; under ``TRITON_INTERPRET=1`` on CPU).

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

import os

import torch

try:
    import triton
    import triton.language as tl

    _IMPORT_ERROR: str | None = None
except ImportError as e:  # the reference implementation needs no Triton
    triton = None
    _IMPORT_ERROR = f"triton not importable: {e}"

DEFAULT_TOKEN_CHUNK = 1024
DEFAULT_BLOCK_V = 4096


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def unavailable_reason() -> str | None:
    """None when the Triton kernels can run in this process, else why not."""
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    if interpreting():
        return None
    if not torch.cuda.is_available():
        return "no CUDA device (TRITON_INTERPRET=1 runs the kernels on the CPU interpreter, slowly)"
    return None


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


class TritonTiles:
    """Tile operations for ``npu_retu.kernels.fused`` with the Triton kernels above.

    ``token_chunk`` rows of logits are live at a time (``token_chunk * V * 4`` bytes in fp32);
    ``block_v`` is the kernels' vocabulary tile; ``max_programs`` caps the grid (None: one program
    per row). ``fp32_logits`` asks the BLAS for fp32 logits from bf16 inputs where it can (more
    exact log-probs for twice the chunk buffer); otherwise the logits keep the input dtype and are
    up-cast inside the kernels.
    """

    name = "triton"

    def __init__(self, token_chunk: int = DEFAULT_TOKEN_CHUNK, block_v: int = DEFAULT_BLOCK_V,
                 max_programs: int | None = None, fp32_logits: bool = True):
        reason = unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"the triton kernels cannot run here: {reason}")
        if token_chunk < 1 or block_v < 16 or block_v & (block_v - 1):
            raise ValueError(f"need token_chunk >= 1 and block_v a power of two >= 16, got {token_chunk}, {block_v}")
        self.token_chunk = token_chunk
        self.block_v = block_v
        self.max_programs = max_programs
        self.fp32_logits = fp32_logits

    def _grid(self, rows: int) -> tuple[int]:
        return (max(1, rows if self.max_programs is None else min(rows, self.max_programs)),)

    def _logits(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if not h.is_cuda:  # the CPU interpreter (tests): fp32 logits, like the reference
            return h.float() @ weight.float().t()
        if self.fp32_logits and h.dtype in (torch.bfloat16, torch.float16) and h.is_cuda:
            try:
                return torch.mm(h, weight.t(), out_dtype=torch.float32)
            except (RuntimeError, TypeError):  # older torch: no mixed-precision output
                self.fp32_logits = False
        return h @ weight.t()

    def _stats_on(self, logits, y, temperature, with_entropy):
        n, vocab = logits.shape
        logp = torch.empty(n, dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(logp)
        entropy = torch.zeros_like(logp)
        _row_stats_kernel[self._grid(n)](
            logits, logits.stride(0), y, logp, lse, entropy, n, vocab, 1.0 / temperature,
            WITH_ENTROPY=with_entropy, BLOCK_V=self.block_v,
        )
        return logp, lse, entropy

    def _grads_on(self, logits, h, weight, y, temperature, lse, entropy, grad_logp, grad_entropy, grad_weight, need_grad_hidden):
        n, vocab = logits.shape
        _row_grad_kernel[self._grid(n)](
            logits, logits.stride(0), y, lse, entropy, grad_logp, grad_logp if grad_entropy is None else grad_entropy,
            n, vocab, 1.0 / temperature, WITH_ENTROPY_GRAD=grad_entropy is not None, BLOCK_V=self.block_v,
        )
        dz = logits.to(weight.dtype)  # dz in place of the logits; BLAS in the weight's dtype
        grad_h = (dz @ weight).float() if need_grad_hidden else None
        if grad_weight is not None:
            if grad_weight.dtype == dz.dtype:
                torch.addmm(grad_weight, dz.t(), h, out=grad_weight)
            else:
                grad_weight += (dz.t() @ h).to(grad_weight.dtype)
        return grad_h

    def stats(self, h, weight, y, temperature, with_entropy):
        return self._stats_on(self._logits(h, weight), y, temperature, with_entropy)

    def grads(self, h, weight, y, temperature, lse, entropy, grad_logp, grad_entropy, grad_weight, need_grad_hidden):
        logits = self._logits(h, weight)  # recomputed: the forward kept only lse and entropy
        return self._grads_on(logits, h, weight, y, temperature, lse, entropy, grad_logp, grad_entropy, grad_weight, need_grad_hidden)

    def stats_then_grads(self, h, weight, y, temperature, with_entropy, grad_of_logp, grad_weight, need_grad_hidden):
        logits = self._logits(h, weight)  # one matmul serves both kernels
        logp, lse, entropy = self._stats_on(logits, y, temperature, with_entropy)
        grad_logp = grad_of_logp(logp)
        grad_h = self._grads_on(logits, h, weight, y, temperature, lse, entropy, grad_logp, None, grad_weight, need_grad_hidden)
        return logp, entropy, grad_h

    def grad_weight_dtype(self, weight: torch.Tensor) -> torch.dtype:
        """dW accumulates in the weight's dtype, in place by ``addmm`` (no ``[V, H]`` fp32 copy)."""
        return weight.dtype

    def loss_terms(self, logp, old_logp, advantages, weights, mask, *, clip_low, clip_high, dual_clip, log_ratio_clamp):
        from npu_retu.kernels.triton_policy_loss import policy_loss_terms

        return policy_loss_terms(
            logp, old_logp, advantages, weights, mask, clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip,
            log_ratio_clamp=log_ratio_clamp, max_programs=self.max_programs,
        )
