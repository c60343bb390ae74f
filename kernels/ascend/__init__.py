"""The Ascend NPU path: the Triton kernels through triton-ascend, else PyTorch ops on the NPU.

triton-ascend compiles the same Triton language for the 910B's vector cores, with limits the CUDA
launch does not have (DESIGN.md, "Known traps"): at most 65535 programs and a grid best tied to
the number of vector cores, a 192 KB unified buffer per core, no 64-bit atomics, and gathers that
turn into scalar loops. The kernels in ``kernels/triton/`` already loop over rows with a grid
stride, pick the target logit with ``tl.where`` and reduce without atomics; :class:`AscendTiles`
launches them with

* a grid of ``num_vectorcore`` programs (read from the triton-ascend driver), and
* the tile sizes of each op for the unified buffer: ``logprobs.py`` (``BLOCK_V = 2048``) and
  ``policy_loss.py`` (none of its own).

The log-probs forward without entropy in bf16 / fp16 goes first to CANN's own fused operator
(``aclnnFusedLinearOnlineMaxSum`` through torch_npu, ``cann.py``) where torch_npu has it; the rest
(entropy, fp32, every backward, the policy loss) runs the tiles below.

Where triton-ascend is not installed, or a kernel fails to compile on this CANN version, the
``reference`` tile operations run instead (PyTorch ops, dispatched to the NPU by torch_npu), with a
warning that says why. Nothing here ran on Ascend hardware in this project's CI: the launch logic
(capped grid, tile sizes) is exercised on the CPU interpreter by the tests, the rest is written
against triton-ascend's documented driver API.
"""

from __future__ import annotations

import logging
from typing import Any

from npu_retu.kernels.ascend.cann import CannLogprobs, find_online_max_sum
from npu_retu.kernels.ascend.logprobs import ASCEND_BLOCK_V, ASCEND_TOKEN_CHUNK
from npu_retu.kernels.reference import TorchTiles
from npu_retu.kernels.triton import TritonTiles, interpreting

logger = logging.getLogger(__name__)

MAX_GRID = 65535
INTERPRETER_CORES = 4


def unavailable_reason() -> str | None:
    """None when triton-ascend can launch kernels on an NPU here, else what is missing."""
    try:
        import torch_npu  # noqa: F401  (registers the NPU device with torch)
    except ImportError as e:
        return f"torch_npu not importable: {e}"
    try:
        import triton
    except ImportError as e:
        return f"triton-ascend not importable: {e}"
    try:
        triton.runtime.driver.active.utils.get_device_properties(0)
    except Exception as e:  # a CUDA-only triton, or no NPU visible
        return f"triton has no working Ascend driver: {type(e).__name__}: {e}"
    return None


def vector_core_count() -> int:
    """Vector cores of the current NPU, from the triton-ascend driver (the grid size to launch)."""
    import torch
    import triton

    properties = triton.runtime.driver.active.utils.get_device_properties(torch.npu.current_device())
    cores = int(properties.get("num_vectorcore", -1))
    if cores <= 0:
        raise RuntimeError(f"triton-ascend reported no vector cores: {properties}")
    return cores


class AscendTiles:
    """Triton tiles with Ascend launch settings, or the PyTorch tiles when those cannot run.

    ``max_programs`` overrides the vector-core count (tests on the CPU interpreter pass one);
    ``cann_op`` is CANN's fused forward operator (default: looked up in torch_npu; ``False``: not
    used), which tests inject since no NPU is present.
    """

    name = "ascend"

    def __init__(self, token_chunk: int = ASCEND_TOKEN_CHUNK, block_v: int = ASCEND_BLOCK_V, max_programs: int | None = None,
                 cann_op: Any = None):
        self.token_chunk = token_chunk
        if cann_op is None and not interpreting():
            cann_op, where = find_online_max_sum()
            logger.info("ascend kernels: CANN fused log-probs forward %s", f"from {where}" if cann_op else f"not used: {where}")
        self.cann = CannLogprobs(cann_op) if cann_op else None
        reason = None if interpreting() else unavailable_reason()
        if reason is None:
            if max_programs is None:  # on the CPU interpreter there is no NPU to ask: a stand-in count
                max_programs = INTERPRETER_CORES if interpreting() else vector_core_count()
            programs = max_programs
            self._tiles = TritonTiles(token_chunk, block_v, min(programs, MAX_GRID), fp32_logits=False)
        else:
            logger.warning("ascend kernels: using the PyTorch tile operations (%s)", reason)
            self._tiles = TorchTiles(token_chunk)
        self.backend = self._tiles.name

    def _call(self, method: str, *args, **kwargs):
        try:
            return getattr(self._tiles, method)(*args, **kwargs)
        except Exception as e:
            if isinstance(self._tiles, TorchTiles) or not _is_compile_error(e):
                raise
            logger.warning("ascend kernels: a Triton kernel failed to compile (%s: %s); using the PyTorch tile operations", type(e).__name__, e)
            self._tiles = TorchTiles(self.token_chunk)
            self.backend = self._tiles.name
            return getattr(self._tiles, method)(*args, **kwargs)

    def stats(self, h, weight, y, temperature, with_entropy):
        if self.cann is not None and self.cann.applies(h, weight, with_entropy):
            return self.cann.stats(h, weight, y, temperature)
        return self._call("stats", h, weight, y, temperature, with_entropy)

    def grads(self, *args, **kwargs):
        return self._call("grads", *args, **kwargs)

    def stats_then_grads(self, *args, **kwargs):
        return self._call("stats_then_grads", *args, **kwargs)

    def loss_terms(self, *args, **kwargs):
        return self._call("loss_terms", *args, **kwargs)

    def grad_weight_dtype(self, weight):
        return self._tiles.grad_weight_dtype(weight)


def _is_compile_error(error: Exception) -> bool:
    try:
        from triton.compiler.errors import CompilationError
    except ImportError:
        return False
    return isinstance(error, CompilationError) or "compile" in type(error).__name__.lower()
