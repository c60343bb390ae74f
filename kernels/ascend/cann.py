"""CANN's own fused linear cross-entropy forward, the Ascend log-probs' first choice where it exists.

CANN 8.3+ ships the two halves of Megatron's fused vocab-parallel cross-entropy as aclnn operators,
``aclnnFusedLinearOnlineMaxSum`` (the matmul with, per row, the logits' max, the sum of
``exp(logit - max)`` and the target's ``logit - max``, without writing the ``[T, V]`` logits) and
``aclnnFusedCrossEntropyLossWithMaxSum`` (the loss from those), supported on Atlas A2 (910B) and A3
(CANN docs, ``ops-nn/matmul/fused_linear_online_max_sum``). torch_npu exposes them, as
``torch_npu.<name>`` (a copy of ``torch.ops.npu.<name>``), since its v7.2 line (op-plugin PR !3110,
2025-09), under names that changed between releases: ``npu_fused_linear_online_max_sum`` in
v7.2.0 (torch_npu 2.7.1 / 2.8.0) and in v26.2 and later, ``fused_linear_online_max_sum`` in v7.3
and v26.0-26.1 (torch_npu 2.9.0, 2.10.0 up to .post4); both are looked up, the ``npu_`` one first,
as verl's ``verl/utils/kernel/npu/cann_linear_ce.py`` does. Outputs, in order: ``logits_max``,
``sum_exp_logits``, ``predicted_logits`` (fp32 ``[N]``), the bit-packed target mask, the shifted
target, and the logits when ``return_logits``.

``vocab_end_index`` is exclusive: the kernel masks ``target < start or target >= end`` (ops-nn's
``TargetInnerProcess`` and its aclnn golden test; the documentation's ``target > end`` is wrong),
so one unsplit vocabulary of V rows is ``(0, V)``; ``V - 1`` would mask every target V - 1.

What it gives the log-probs op (``kernels/logprobs.py``) for one token chunk at temperature T::

    logits_max, sum_exp, predicted, ... = op(h / T, W, y, 0, V)
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
    return None, f"torch_npu {getattr(module, '__version__', '?')} has no {' or '.join(OP_NAMES)} (torch_npu before its v7.2 line)"


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
        logits_max, sum_exp, predicted = self.op(scaled, weight, y, 0, weight.shape[0], False)[:3]  # end exclusive
        log_sum = torch.log(sum_exp.float())
        self.calls += 1
        logp = predicted.float() - log_sum
        return logp, logits_max.float() + log_sum, torch.zeros_like(logp)
