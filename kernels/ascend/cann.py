"""CANN's own fused linear cross-entropy forward, the Ascend log-probs' first choice where it exists.

CANN 8.3+ ships the two halves of Megatron's fused vocab-parallel cross-entropy as aclnn operators,
``aclnnFusedLinearOnlineMaxSum`` (the matmul with, per row, the logits' max, the sum of
``exp(logit - max)`` and the target's ``logit - max``, without writing the ``[T, V]`` logits) and
``aclnnFusedCrossEntropyLossWithMaxSum`` (the loss from those), supported on Atlas A2 (910B) and A3
(CANN docs, ``ops-nn/matmul/fused_linear_online_max_sum``). torch_npu exposes the first through
op-plugin (``Ascend/op-plugin`` PR #3110, 2025-09:
``fused_linear_online_max_sum(input, weight, target, vocab_start_index, vocab_end_index,
return_logits=False) -> (logits_max, sum_exp_logits, predicted_logits, target_mask, masked_target,
vocab_parallel_logits)``), as ``torch_npu.npu_fused_linear_online_max_sum`` in later op-plugin
sources; both spellings are looked up.

What it gives the log-probs op (``kernels/logprobs.py``) for one token chunk at temperature T::

    logits_max, sum_exp, predicted, ... = op(h / T, W, y, 0, V - 1)
    log p(y) = predicted - log(sum_exp)          lse = logits_max + log(sum_exp)

Its limits decide when it is used: bf16 / fp16 inputs only (fp32 runs the Triton or PyTorch
tiles), ``hidden_size <= 65534``, and no entropy (a chunk that needs the entropy runs the other
tiles). The backward is unchanged: it recomputes from the saved ``lse`` with the Triton or PyTorch
tiles. Nothing here ran on Ascend hardware in this project: the wiring is tested on the CPU with
an injected operator that follows the documented formulas, and ``npu-retu doctor``'s parity check
(``kernels/parity.py``) compares it with float64 on a real NPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

OP_NAMES = ("npu_fused_linear_online_max_sum", "fused_linear_online_max_sum")
MAX_HIDDEN = 65534  # aclnnFusedLinearOnlineMaxSum: input.size(1) <= 65534
DTYPES = (torch.bfloat16, torch.float16)


def find_online_max_sum(module: Any = None) -> tuple[Callable | None, str]:
    """(the operator, where it was found) or (None, why not) from ``module`` (default: torch_npu)."""
    if module is None:
        try:
            import torch_npu as module
        except ImportError as e:
            return None, f"torch_npu not importable: {e}"
    for name in OP_NAMES:
        op = getattr(module, name, None)
        if callable(op):
            return op, f"torch_npu.{name}"
    return None, f"torch_npu {getattr(module, '__version__', '?')} has no {' or '.join(OP_NAMES)} (op-plugin before 2025-09)"


class CannLogprobs:
    """One token chunk's forward through the CANN operator (see the module docstring)."""

    def __init__(self, op: Callable) -> None:
        self.op = op
        self.calls = 0  # chunks it computed (tests and benchmarks read it)

    @staticmethod
    def applies(h: torch.Tensor, weight: torch.Tensor, with_entropy: bool) -> bool:
        return not with_entropy and h.dtype in DTYPES and weight.dtype == h.dtype and h.shape[-1] <= MAX_HIDDEN

    def stats(self, h: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, temperature: float) -> tuple[torch.Tensor, ...]:
        """(log-probs, lse, entropy placeholder) in fp32 for a chunk, as the tiles' ``stats`` returns them."""
        scaled = h if temperature == 1.0 else (h.float() / temperature).to(h.dtype)
        logits_max, sum_exp, predicted = self.op(scaled, weight, y, 0, weight.shape[0] - 1, False)[:3]
        log_sum = torch.log(sum_exp.float())
        self.calls += 1
        logp = predicted.float() - log_sum
        return logp, logits_max.float() + log_sum, torch.zeros_like(logp)
