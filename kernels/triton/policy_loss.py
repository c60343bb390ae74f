"""Triton kernel of the policy-loss op (``kernels/policy_loss.py``): per-token loss, gradient and
metric sums in one pass.

Each program walks the tokens in blocks of ``BLOCK`` with a stride of the grid size and keeps its
running sums in registers; it writes one row of ``LOSS_SUM_FIELDS`` partial sums, which the host
adds up. No atomics (Ascend's vector cores have no 64-bit ones) and a grid that can be capped at the
core count. Semantics: ``npu_retu.kernels.reference.policy_loss_terms`` (Eq. 3 negated, DAPO's
asymmetric clip, dual-clip, log-ratio clamp), weighted by the aggregation's per-token weights.
"""

from __future__ import annotations

import torch

from npu_retu.kernels.reference import LOSS_SUM_FIELDS

try:  # optional: ``unavailable_reason`` in this package's ``__init__`` says what is missing
    import triton
except ImportError:
    triton = None

DEFAULT_BLOCK = 1024

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _policy_loss_kernel(
        logp_ptr, old_ptr, adv_ptr, weight_ptr, mask_ptr, grad_ptr, partial_ptr, n,
        clip_low, clip_high, dual_clip, log_ratio_clamp,
        DUAL_CLIP: tl.constexpr, N_SUMS: tl.constexpr, BLOCK: tl.constexpr,
    ):
        pid = tl.program_id(0)
        loss_acc = tl.zeros([BLOCK], dtype=tl.float32)
        tokens_acc = tl.zeros([BLOCK], dtype=tl.float32)
        upper_acc = tl.zeros([BLOCK], dtype=tl.float32)
        lower_acc = tl.zeros([BLOCK], dtype=tl.float32)
        dual_acc = tl.zeros([BLOCK], dtype=tl.float32)
        ratio_acc = tl.zeros([BLOCK], dtype=tl.float32)
        kl_acc = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(pid * BLOCK, n, tl.num_programs(0) * BLOCK):
            offs = start + tl.arange(0, BLOCK)
            valid = offs < n
            on = (tl.load(mask_ptr + offs, mask=valid, other=0) != 0) & valid
            # masked-out tokens are read as 0 so that inf / nan there never reach a sum
            logp = tl.load(logp_ptr + offs, mask=on, other=0.0)
            old = tl.load(old_ptr + offs, mask=on, other=0.0)
            adv = tl.load(adv_ptr + offs, mask=on, other=0.0)
            w = tl.load(weight_ptr + offs, mask=on, other=0.0)
            raw = logp - old
            log_ratio = tl.minimum(tl.maximum(raw, -log_ratio_clamp), log_ratio_clamp)
            ratio = tl.exp(log_ratio)
            unclipped = -adv * ratio
            clipped = -adv * tl.minimum(tl.maximum(ratio, 1.0 - clip_low), 1.0 + clip_high)
            pg = tl.maximum(unclipped, clipped)
            passes = (unclipped >= clipped) & (tl.abs(raw) <= log_ratio_clamp)
            if DUAL_CLIP:
                cap = -adv * dual_clip
                negative = adv < 0
                passes = passes & ((~negative) | (pg <= cap))
                pg = tl.where(negative, tl.minimum(pg, cap), pg)
                dual_acc += tl.where(on & negative & (ratio > dual_clip), 1.0, 0.0)
            tl.store(grad_ptr + offs, tl.where(on & passes, -adv * ratio * w, 0.0), mask=valid)
            loss_acc += tl.where(on, w * pg, 0.0)
            tokens_acc += tl.where(on, 1.0, 0.0)
            upper_acc += tl.where(on & (adv > 0) & (ratio > 1.0 + clip_high), 1.0, 0.0)
            lower_acc += tl.where(on & (adv < 0) & (ratio < 1.0 - clip_low), 1.0, 0.0)
            ratio_acc += tl.where(on, ratio, 0.0)
            kl_acc += tl.where(on, ratio - 1.0 - log_ratio, 0.0)
        row = partial_ptr + pid * N_SUMS
        tl.store(row + 0, tl.sum(loss_acc, axis=0))
        tl.store(row + 1, tl.sum(tokens_acc, axis=0))
        tl.store(row + 2, tl.sum(upper_acc, axis=0))
        tl.store(row + 3, tl.sum(lower_acc, axis=0))
        tl.store(row + 4, tl.sum(dual_acc, axis=0))
        tl.store(row + 5, tl.sum(ratio_acc, axis=0))
        tl.store(row + 6, tl.sum(kl_acc, axis=0))


def policy_loss_terms(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor,
    *, clip_low: float, clip_high: float, dual_clip: float | None, log_ratio_clamp: float,
    max_programs: int | None = None, block: int = DEFAULT_BLOCK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weighted d loss / d logp, sums in LOSS_SUM_FIELDS order as fp64)`` for 1-D fp32 token arrays."""
    n = logp.numel()
    programs = max(1, min(triton.cdiv(n, block), max_programs or 65535))
    grad = torch.empty_like(logp, dtype=torch.float32)
    partial = torch.zeros((programs, len(LOSS_SUM_FIELDS)), dtype=torch.float32, device=logp.device)
    _policy_loss_kernel[(programs,)](
        logp.float().contiguous(), old_logp.float().contiguous(), advantages.float().contiguous(), weights.float().contiguous(),
        mask.to(torch.uint8).contiguous(), grad, partial, n,
        float(clip_low), float(clip_high), float(dual_clip or 0.0), float(log_ratio_clamp),
        DUAL_CLIP=dual_clip is not None, N_SUMS=len(LOSS_SUM_FIELDS), BLOCK=block,
    )
    return grad, partial.double().sum(dim=0)
