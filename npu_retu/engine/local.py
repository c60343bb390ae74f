"""The local training engine: one process, one device, plain PyTorch.

It owns the model, the AdamW optimizer and the learning-rate schedule, and exposes the engine
interface the trainers use (DESIGN.md, "Interfaces"): ``module`` (what a training forward runs
through) and ``model`` (the Hugging Face model in it), ``backward(loss, last=...)``, ``step()``,
``state_dict()`` / ``load_state_dict()``, ``save_engine_files(dir)`` / ``load_engine_files(dir)``
and ``save_pretrained(dir, tokenizer)``. The losses are not the engine's: the trainers build them
from :mod:`npu_retu.algos.losses` and hand the engine the result.
:class:`npu_retu.engine.deepspeed_engine.DeepSpeedEngine` implements the same interface.

With several ranks (``world_size > 1``, torch.distributed initialised) it is plain data parallel:
every rank holds the whole model and optimizer, and ``step()`` sums the gradients over the ranks
before clipping, so the update equals one process's update on the whole batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from npu_retu.config import OptimConfig
from npu_retu.distributed.process_group import all_reduce_gradients
from npu_retu.errors import UserError


def lr_multiplier(step: int, *, warmup_steps: int, total_steps: int, schedule: str, min_lr_ratio: float) -> float:
    """Learning-rate factor at optimizer step ``step`` (0-based): linear warmup, then the schedule."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if schedule == "linear":
        shape = 1.0 - progress
    elif schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown schedule {schedule!r}")
    return min_lr_ratio + (1.0 - min_lr_ratio) * shape


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # No weight decay on biases, norms and embeddings-sized 1-D parameters (the usual AdamW recipe).
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_scheduler(optimizer, optim: OptimConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Warmup then the configured decay, as a LambdaLR stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_multiplier(
            s,
            warmup_steps=optim.warmup_steps,
            total_steps=total_steps,
            schedule=optim.schedule,
            min_lr_ratio=optim.min_lr_ratio,
        ),
    )


class LocalEngine:
    """Single-process engine: model + AdamW + warmup/decay schedule + gradient clipping."""

    def __init__(self, model: torch.nn.Module, optim: OptimConfig, total_steps: int, device: torch.device, world_size: int = 1):
        self.model = model.to(device)
        self.device = device
        self.world_size = world_size
        self.optim_cfg = optim
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, optim.weight_decay), lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps
        )
        self.scheduler = build_scheduler(self.optimizer, optim, total_steps)
        self.model.train()

    @property
    def module(self) -> torch.nn.Module:
        """What a training forward runs through: here the model itself."""
        return self.model

    def backward(self, loss: torch.Tensor, *, last: bool = True) -> None:
        """Backpropagate one micro-batch's loss, already divided by the optimizer step's global count
        (token mean of the whole step); gradients accumulate until :meth:`step`. ``last`` (this
        rank's last micro-batch of the step) matters to DeepSpeed only."""
        loss.backward()

    def step(self, skip_above: float | None = None) -> dict[str, float]:
        """Sum gradients over the ranks, clip, apply the optimizer, advance the schedule; returns the
        grad norm (before clipping) and lr.

        ``skip_above`` (UPT's ``max_grad_norm`` 80, ``mix_actor.py`` ``_optimizer_step``): when the
        norm before clipping exceeds it, or is not finite, the gradients are dropped and the optimizer
        does not step (the schedule still advances); the result then also has ``skipped`` (1 or 0)."""
        max_norm = self.optim_cfg.max_grad_norm
        all_reduce_gradients(list(self.model.parameters()), self.world_size)
        params = [p for p in self.model.parameters() if p.grad is not None]
        if max_norm > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        else:
            grad_norm = float(torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params])))
        lr = self.optimizer.param_groups[0]["lr"]
        skipped = skip_above is not None and not (grad_norm <= skip_above)  # (nan / inf skip too)
        if not skipped:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        out = {"grad_norm": grad_norm, "lr": lr}
        if skip_above is not None:
            out["skipped"] = float(skipped)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("engine") == "deepspeed":
            raise UserError("this checkpoint was written by the DeepSpeed engine; resume it with engine.name=deepspeed")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def save_engine_files(self, checkpoint_dir) -> None:
        """Nothing beyond :meth:`state_dict`, which the trainer puts in trainer_state.pt."""

    def load_engine_files(self, checkpoint_dir) -> None:
        """Nothing beyond :meth:`load_state_dict`."""

    def save_pretrained(self, path, tokenizer=None, *, is_main: bool = True) -> None:
        """Hugging Face layout: model.safetensors + config.json (+ generation config, tokenizer),
        written by rank 0 (every rank holds the same weights)."""
        if not is_main:
            return
        self.model.save_pretrained(path, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(path)
