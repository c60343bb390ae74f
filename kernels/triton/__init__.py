"""The ``triton`` implementation (CUDA; under ``TRITON_INTERPRET=1`` on CPU): :class:`TritonTiles`,
the tile operations that ``kernels/logprobs.py`` and ``kernels/policy_loss.py`` drive, over the
Triton kernels of the same ops here:

* ``logprobs.py``: the LM-head matmul of a token chunk by the vendor BLAS, then row kernels for the
  softmax statistics (online log-sum-exp) and the in-place gradient of the logits.
* ``policy_loss.py``: the clipped policy loss, its gradient and its metric sums in one kernel.
"""

from __future__ import annotations

import os

import torch

from npu_retu.kernels.triton.logprobs import logits_grads, logits_stats
from npu_retu.kernels.triton.policy_loss import policy_loss_terms

try:  # what the kernels in logprobs.py / policy_loss.py are written in
    import triton.language  # noqa: F401

    _IMPORT_ERROR: str | None = None
except ImportError as e:  # the reference implementation needs no Triton
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


class TritonTiles:
    """Tile operations for ``npu_retu.kernels.logprobs`` / ``policy_loss`` with the Triton kernels here.

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
        return logits_stats(logits, y, temperature, with_entropy, block_v=self.block_v, max_programs=self.max_programs)

    def _grads_on(self, logits, h, weight, y, temperature, lse, entropy, grad_logp, grad_entropy, grad_weight, need_grad_hidden):
        return logits_grads(
            logits, h, weight, y, temperature, lse, entropy, grad_logp, grad_entropy, grad_weight, need_grad_hidden,
            block_v=self.block_v, max_programs=self.max_programs,
        )

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
        return policy_loss_terms(
            logp, old_logp, advantages, weights, mask, clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip,
            log_ratio_clamp=log_ratio_clamp, max_programs=self.max_programs,
        )
