"""Fused kernels for the two hot spots of RL training (imported as ``npu_retu.kernels``).

* :func:`fused_linear_logprobs`: per-token log-probs (and entropy) straight from hidden states and
  the LM head, in tiles with an online log-sum-exp; the ``[T, V]`` logits are never built.
* :func:`clipped_policy_loss`: the GRPO / DAPO clipped loss with its backward in the same pass.
* :func:`fused_linear_policy_loss`: both together, hidden states to loss.

One file per op, with each backend's file of the same name beside it (Liger-Kernel's layout):
``logprobs.py`` and ``policy_loss.py`` hold the chunking and autograd code of the ops, written once;
``triton/`` and ``ascend/`` hold a ``logprobs.py`` and a ``policy_loss.py`` each.

One dispatch picks the implementation: ``impl=None`` asks the device layer (``reference`` on CPU,
``triton`` on CUDA, ``ascend`` on Ascend NPUs); tests and benchmarks name one. Every implementation
drives the same op code and differs only in its tile operations:

* ``reference`` (``reference.py``): PyTorch ops, exact; the CPU path and the test oracle's sibling.
* ``triton`` (``triton/``: ``TritonTiles`` in ``__init__.py``, the kernels in ``logprobs.py`` and
  ``policy_loss.py``): the LM-head matmul by the vendor BLAS, the softmax statistics, gradients and
  the loss in Triton kernels.
* ``ascend`` (``ascend/``: ``AscendTiles`` in ``__init__.py``, each op's tile sizes in its file): the
  same Triton kernels through triton-ascend, with a grid sized to the vector cores and tiles that fit
  the unified buffer; the ``reference`` ops (torch_npu) where triton-ascend is missing or a kernel
  fails to compile.

``parity.py`` is the fused ops' check against float64 that ``npu-retu doctor`` runs.
"""

from __future__ import annotations

from typing import Any

from npu_retu.kernels.reference import plain_linear_logprobs

IMPLEMENTATIONS = ("reference", "triton", "ascend")

__all__ = [
    "IMPLEMENTATIONS",
    "clipped_policy_loss",
    "fused_linear_logprobs",
    "fused_linear_policy_loss",
    "get_tiles",
    "implementation_status",
    "plain_linear_logprobs",
    "resolve_impl",
]


def resolve_impl(impl: str | None = None) -> str:
    """``impl``, or the device layer's choice when None; a ValueError names the valid choices."""
    if impl is None:
        from npu_retu.device import get_backend

        impl = get_backend().kernel_impl
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown kernel implementation {impl!r}; choose one of {', '.join(IMPLEMENTATIONS)}")
    return impl


def get_tiles(impl: str | None = None, **tile_sizes: Any):
    """The tile operations of an implementation (``token_chunk`` / ``vocab_tile`` etc. override its defaults)."""
    impl = resolve_impl(impl)
    if impl == "reference":
        from npu_retu.kernels.reference import TorchTiles

        return TorchTiles(**tile_sizes)
    if impl == "triton":
        from npu_retu.kernels.triton import TritonTiles

        return TritonTiles(**tile_sizes)
    from npu_retu.kernels.ascend import AscendTiles

    return AscendTiles(**tile_sizes)


def implementation_status() -> dict[str, str | None]:
    """For each implementation: None if it can run in this process, else why not."""
    status: dict[str, str | None] = {"reference": None}
    from npu_retu.kernels import ascend, triton as triton_kernels  # not the triton package itself

    status["triton"] = triton_kernels.unavailable_reason()
    status["ascend"] = ascend.unavailable_reason()
    return status


def fused_linear_logprobs(hidden, weight, targets, *, temperature: float = 1.0, return_entropy: bool = False, impl: str | None = None, **tile_sizes: Any):
    """Log-probs ``log softmax(hidden @ weight.T / temperature)[targets]`` (fp32, the shape of
    ``targets``) and, with ``return_entropy``, the entropy of each distribution (else None).

    ``hidden`` is ``[..., H]``, ``weight`` the LM head ``[V, H]``, ``targets`` ``[...]`` token ids.
    Differentiable in ``hidden`` and ``weight`` (entropy too, for an entropy bonus); under
    ``torch.no_grad()`` it is the cheap path for old and reference log-probs.
    """
    from npu_retu.kernels.logprobs import linear_logprobs

    return linear_logprobs(get_tiles(impl, **tile_sizes), hidden, weight, targets, temperature=temperature, return_entropy=return_entropy)


def clipped_policy_loss(logprobs, old_logprobs, advantages, mask, *, clip_low: float = 0.2, clip_high: float = 0.28,
                        dual_clip: float | None = 10.0, agg: str = "token-mean", global_token_count=None,
                        global_seq_count=None, log_ratio_clamp: float = 20.0, impl: str | None = None,
                        **tile_sizes: Any):
    """``(loss, metrics)`` of the clipped policy loss with forward and backward fused; the arguments
    and semantics of ``npu_retu.algos.clipped_policy_loss``."""
    from npu_retu.kernels.policy_loss import policy_loss

    return policy_loss(
        get_tiles(impl, **tile_sizes), logprobs, old_logprobs, advantages, mask, clip_low=clip_low, clip_high=clip_high,
        dual_clip=dual_clip, agg=agg, global_token_count=global_token_count, global_seq_count=global_seq_count,
        log_ratio_clamp=log_ratio_clamp,
    )


def fused_linear_policy_loss(hidden, weight, targets, old_logprobs, advantages, mask, *, temperature: float = 1.0,
                             clip_low: float = 0.2, clip_high: float = 0.28, dual_clip: float | None = 10.0,
                             agg: str = "token-mean", global_token_count=None, global_seq_count=None,
                             log_ratio_clamp: float = 20.0, return_entropy: bool = False, impl: str | None = None,
                             **tile_sizes: Any):
    """``(loss, metrics)`` from hidden states ``[B, T, H]``, the LM head and the targets ``[B, T]``:
    :func:`fused_linear_logprobs` and :func:`clipped_policy_loss` in one pass, with ``dh`` and
    ``dW`` computed in the forward (see ``policy_loss.linear_policy_loss``)."""
    from npu_retu.kernels.policy_loss import linear_policy_loss

    return linear_policy_loss(
        get_tiles(impl, **tile_sizes), hidden, weight, targets, old_logprobs, advantages, mask, temperature=temperature,
        clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip, agg=agg, global_token_count=global_token_count,
        global_seq_count=global_seq_count, log_ratio_clamp=log_ratio_clamp, return_entropy=return_entropy,
    )
