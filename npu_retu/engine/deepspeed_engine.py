"""The DeepSpeed training engine: ZeRO stages 0-3 behind the same interface as the local engine.

The trainer sees the same interface as with :class:`npu_retu.engine.local.LocalEngine` (``module``
/ ``model``, ``backward``, ``step``, checkpoint files, ``save_pretrained``). Inside:

* the DeepSpeed accelerator is the device layer's device type (``DS_ACCELERATOR``: cpu / cuda /
  npu), and torch.distributed runs on the device layer's backend (gloo / nccl / hccl);
* the optimizer is torch AdamW handed to DeepSpeed (the same update as the local engine), or
  DeepSpeed's CPU Adam when the optimizer states are offloaded (ZeRO-Offload);
* the learning-rate schedule is the local engine's warmup + decay, stepped by DeepSpeed at each
  gradient-accumulation boundary;
* gradient accumulation is DeepSpeed's, with the boundary set by the trainer: ``backward(loss,
  last=True)`` on a rank's last micro-batch of the optimizer step, then ``step()``.

Resume reads DeepSpeed's files with ``torch.load(weights_only=True)`` and an allowlist of the three
non-tensor classes its ZeRO checkpoints hold: DeepSpeed's own loader unpickles with
``weights_only=False``, which runs whatever code a crafted shard names.

Loss scaling: the trainer divides each micro-batch's loss by the count of the whole optimizer step
(all micro-batches of all ranks), so that the sum over micro-batches and ranks is the step's token
mean (Eq. 1, Eq. 3). DeepSpeed *averages* gradients over the data-parallel ranks, so the loss is
multiplied by the number of ranks first, and ``backward`` is told not to divide by the
accumulation steps.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import torch

from npu_retu.config import EngineConfig, OptimConfig
from npu_retu.engine.local import build_scheduler, param_groups
from npu_retu.errors import UserError

logger = logging.getLogger(__name__)

CHECKPOINT_SUBDIR = "deepspeed"  # inside a checkpoint folder: DeepSpeed's own per-rank files
CHECKPOINT_TAG = "state"


def resolve_precision(engine_cfg: EngineConfig, backend: Any) -> str:
    """'bf16' or 'fp32': ``auto`` takes bf16 on an accelerator that has it, fp32 on CPU."""
    if engine_cfg.precision != "auto":
        return engine_cfg.precision
    return "bf16" if backend.is_accelerator and backend.supports_bf16() else "fp32"


def deepspeed_config(
    engine_cfg: EngineConfig,
    optim: OptimConfig,
    *,
    micro_batch_size: int,
    grad_accum_steps: int,
    world_size: int,
    precision: str,
) -> dict[str, Any]:
    """The DeepSpeed config dict for these settings (what a user would write as ds_config.json)."""
    zero: dict[str, Any] = {
        "stage": engine_cfg.zero_stage,
        "reduce_bucket_size": engine_cfg.reduce_bucket_size,
        "allgather_bucket_size": engine_cfg.reduce_bucket_size,
        "overlap_comm": False,
        "contiguous_gradients": True,
    }
    if engine_cfg.zero_stage == 3:
        # HF export gathers the 16-bit weights on rank 0 (save_pretrained below)
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        zero["stage3_prefetch_bucket_size"] = engine_cfg.reduce_bucket_size
        zero["stage3_param_persistence_threshold"] = 10_000
    if engine_cfg.offload_optimizer == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if engine_cfg.offload_params == "cpu":
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum_steps,
        "train_batch_size": micro_batch_size * grad_accum_steps * world_size,
        "gradient_clipping": optim.max_grad_norm if optim.max_grad_norm > 0 else 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,  # torch AdamW as a client optimizer
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if engine_cfg.offload_optimizer == "cpu":
        # ZeRO-Offload steps the optimizer on the host with DeepSpeed's CPU Adam (decoupled decay)
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": optim.lr, "betas": list(optim.betas), "eps": optim.eps, "weight_decay": optim.weight_decay},
        }
    return config


def import_deepspeed(backend: Any):
    """Import DeepSpeed with its accelerator set to this backend's device type.

    DeepSpeed picks its accelerator once, at import, from ``DS_ACCELERATOR`` (else by probing);
    setting it from the device layer keeps it in step with the rest of the process.
    """
    wanted = backend.device_type
    current = os.environ.get("DS_ACCELERATOR")
    if current and current != wanted:
        raise UserError(f"DS_ACCELERATOR={current!r} but the device layer chose {wanted!r}; unset DS_ACCELERATOR or set run.device")
    os.environ["DS_ACCELERATOR"] = wanted
    try:
        import deepspeed
    except ImportError as e:
        raise UserError(f"engine.name=deepspeed needs DeepSpeed: {e} (pip install 'npu-retu[distributed]')") from None
    from deepspeed.accelerator import get_accelerator

    chosen = get_accelerator().device_name()  # "cpu" / "cuda" / "npu"
    if chosen != wanted:
        raise UserError(f"DeepSpeed was already imported with accelerator {chosen!r}, not {wanted!r}")
    return deepspeed


def checkpoint_classes() -> list[type]:
    """The classes other than tensors and plain values in DeepSpeed's ZeRO 0-3 checkpoint files
    (found with ``torch.serialization.get_unsafe_globals_in_checkpoint`` on saved runs): the static
    loss scaler (bf16 / fp32: fp16 and its dynamic scaler are never configured here), the ZeRO
    stage enum and the fp32 partition's per-parameter ``fragment_address`` records. Unpickling
    them only fills their fields; nothing else is allowed."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


@contextlib.contextmanager
def weights_only_loads(checkpoint_engine: Any):
    """Make DeepSpeed's checkpoint engine load with ``weights_only=True`` for the duration.

    Every file ``DeepSpeedEngine.load_checkpoint`` reads outside universal checkpoints (model
    states, ZeRO optimizer shards, schedule) goes through ``checkpoint_engine.load(path,
    map_location)``, and the stock ``TorchCheckpointEngine.load`` calls ``torch.load(...,
    weights_only=False)``. A refused or damaged file is a :class:`UserError` naming it.
    """
    from npu_retu.trainer.checkpoint import load_weights_only

    allowed = checkpoint_classes()

    def load(path, map_location=None):
        return load_weights_only(Path(path), map_location=map_location, allowed=allowed)

    previous = vars(checkpoint_engine).get("load")
    checkpoint_engine.load = load
    try:
        yield
    finally:
        if previous is None:
            del checkpoint_engine.load
        else:
            checkpoint_engine.load = previous


class DeepSpeedEngine:
    """ZeRO-sharded data-parallel training of one model (one instance per rank)."""

    def __init__(
        self,
        model: torch.nn.Module,
        optim: OptimConfig,
        engine_cfg: EngineConfig,
        *,
        total_steps: int,
        backend: Any,
        world_size: int,
        micro_batch_size: int,
        grad_accum_steps: int,
    ):
        from npu_retu.distributed.process_group import ensure_single_process_group

        deepspeed = import_deepspeed(backend)
        ensure_single_process_group(backend)  # DeepSpeed always needs a process group, even of one
        self.world_size = world_size
        self.backend = backend
        self.engine_cfg = engine_cfg
        self.precision = resolve_precision(engine_cfg, backend)
        self.device = backend.device()
        config = deepspeed_config(
            engine_cfg, optim, micro_batch_size=micro_batch_size, grad_accum_steps=grad_accum_steps,
            world_size=world_size, precision=self.precision,
        )
        client_optimizer = None
        if engine_cfg.offload_optimizer == "none":
            client_optimizer = torch.optim.AdamW(
                param_groups(model, optim.weight_decay), lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps
            )
        self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=client_optimizer,
            model_parameters=None if client_optimizer is not None else param_groups(model, optim.weight_decay),
            lr_scheduler=lambda opt: build_scheduler(opt, optim, total_steps),
            config=config,
        )
        self.model = self.ds.module
        self.ds.train()

    # ---- training -------------------------------------------------------------------------------

    @property
    def module(self) -> Any:
        """What a training forward runs through: DeepSpeed's engine (its forward prepares the
        backward; ZeRO-3 gathers the parameters). The model's methods (``get_decoder``,
        ``get_output_embeddings``, ...) pass through it; its ``config`` is DeepSpeed's own."""
        return self.ds

    def backward(self, loss, *, last: bool) -> None:
        """Backpropagate one micro-batch's share of a step's loss (already divided by the step's
        global count); ``last`` marks this rank's final micro-batch of the optimizer step, where
        DeepSpeed reduces the gradients (every rank must reach it once)."""
        self.ds.set_gradient_accumulation_boundary(last)
        self.ds.backward(loss * self.world_size, scale_wrt_gas=False)

    def step(self, skip_above: float | None = None) -> dict[str, float]:
        """The accumulation boundary: reduce gradients, clip, optimizer step, schedule step.
        (``skip_above`` is refused before training starts, ``npu_retu.trainer.rl.check_rl_scale``.)"""
        if skip_above is not None:
            raise UserError("rl.algo.skip_grad_norm needs engine.name=local")
        if not self.ds.is_gradient_accumulation_boundary():
            raise RuntimeError("DeepSpeedEngine.step() before the last micro-batch of the optimizer step")
        lr = self.optimizer.param_groups[0]["lr"]
        self.ds.step()
        grad_norm = self.ds.get_global_grad_norm()
        return {"grad_norm": float(grad_norm) if grad_norm is not None else float("nan"), "lr": lr}

    # ---- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """What goes into trainer_state.pt: only a marker; DeepSpeed keeps its state in its own files."""
        return {"engine": "deepspeed", "zero_stage": self.engine_cfg.zero_stage, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("engine") != "deepspeed":
            raise UserError("this checkpoint was written by the local engine; resume it with engine.name=local")

    def save_engine_files(self, checkpoint_dir: Path) -> None:
        """DeepSpeed's checkpoint (fp32 master weights, optimizer shards, schedule) under
        ``checkpoint_dir/deepspeed``; a collective: every rank calls it."""
        self.ds.save_checkpoint(str(Path(checkpoint_dir) / CHECKPOINT_SUBDIR), tag=CHECKPOINT_TAG)

    def load_engine_files(self, checkpoint_dir: Path) -> None:
        folder = Path(checkpoint_dir) / CHECKPOINT_SUBDIR
        if not (folder / CHECKPOINT_TAG).is_dir():
            raise UserError(f"{checkpoint_dir} has no DeepSpeed state ({folder / CHECKPOINT_TAG}); was it written by engine.name=local?")
        with weights_only_loads(self.ds.checkpoint_engine):
            load_path, _ = self.ds.load_checkpoint(
                str(folder), tag=CHECKPOINT_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
            )
        if load_path is None:
            raise UserError(f"DeepSpeed could not load its checkpoint from {folder}")

    def save_pretrained(self, path, tokenizer=None, *, is_main: bool = True) -> None:
        """Hugging Face safetensors of the current weights; every rank calls it (ZeRO-3 gathers the
        shards), rank 0 writes."""
        state_dict = None
        if self.engine_cfg.zero_stage == 3:
            state_dict = self.ds._zero3_consolidated_16bit_state_dict()
        if not is_main:
            return
        if state_dict is None:
            state_dict = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        self.model.save_pretrained(path, state_dict=state_dict, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(path)
