"""Training engines behind one interface: the local PyTorch engine and DeepSpeed ZeRO.

An engine runs the forward (``engine.module``), ``backward(loss, last=...)``, ``step()`` and saves
and loads; the losses are the trainers' (:mod:`npu_retu.algos.losses`)."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


def build_engine(cfg: Any, model: Any, *, total_steps: int, backend: Any, world_size: int, micro_batch_size: int,
                 grad_accum_steps: int, optim: Any = None) -> Any:
    """The engine ``cfg.engine.name`` names, for ``model`` on this rank.

    ``grad_accum_steps`` is this rank's number of micro-batches per optimizer step. On Ascend, with
    ``engine.fused_ops``, the model's RMSNorm / SwiGLU / rotary run as fused torch_npu ops
    first (the device layer decides; elsewhere nothing changes).
    """
    optim = cfg.sft.optim if optim is None else optim
    if cfg.engine.fused_ops:
        from npu_retu.device import apply_fused_ops

        applied = apply_fused_ops(model, backend)
        if applied:
            logger.info("fused ops: %s", ", ".join(applied))
    if cfg.engine.name == "deepspeed":
        from npu_retu.engine.deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(
            model, optim, cfg.engine, total_steps=total_steps, backend=backend, world_size=world_size,
            micro_batch_size=micro_batch_size, grad_accum_steps=grad_accum_steps,
        )
    from npu_retu.engine.local import LocalEngine

    return LocalEngine(model, optim, total_steps, backend.device(), world_size=world_size)
