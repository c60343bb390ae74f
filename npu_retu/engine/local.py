"""The local training engine: one process, one device, plain PyTorch.

It owns the model, the AdamW optimizer and the learning-rate schedule, and exposes the engine
interface the trainers use (DESIGN.md, "Interfaces"): ``forward_backward(batch, num_loss_tokens)``,
``step()``, ``state_dict()`` / ``load_state_dict()`` and ``save_pretrained(dir, tokenizer)``. The
DeepSpeed engine of a later issue implements the same interface.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from npu_retu.config import OptimConfig


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


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # No weight decay on biases, norms and embeddings-sized 1-D parameters (the usual AdamW recipe).
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class LocalEngine:
    """Single-process engine: model + AdamW + warmup/decay schedule + gradient clipping."""

    def __init__(self, model: torch.nn.Module, optim: OptimConfig, total_steps: int, device: torch.device):
        self.model = model.to(device)
        self.device = device
        self.optim_cfg = optim
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.model, optim.weight_decay), lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_multiplier(
                s,
                warmup_steps=optim.warmup_steps,
                total_steps=total_steps,
                schedule=optim.schedule,
                min_lr_ratio=optim.min_lr_ratio,
            ),
        )
        self.model.train()

    def forward_backward(self, batch: dict[str, torch.Tensor], num_loss_tokens: int) -> dict[str, float]:
        """Next-token loss on one micro-batch, backpropagated with weight 1 / ``num_loss_tokens``.

        ``num_loss_tokens`` is the number of loss tokens in the whole optimizer step (all
        micro-batches), so the accumulated gradient is the token mean of Eq. 1 however the step
        is split into micro-batches.
        """
        loss_sum, n_tokens = self.loss_sum(batch)
        (loss_sum / max(1, num_loss_tokens)).backward()
        return {"loss_sum": float(loss_sum.detach()), "tokens": n_tokens}

    def loss_sum(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Sum of the next-token negative log-likelihood over label tokens, and their count."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        # use_cache=False: training needs no KV cache, and with one transformers ignores the
        # restarted position_ids of packed sequences (documents would attend to each other).
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch.get("attention_mask"), "use_cache": False}
        if "position_ids" in batch:
            kwargs["position_ids"] = batch["position_ids"]
        logits = self.model(**kwargs).logits
        labels = batch["labels"]
        shifted_logits = logits[:, :-1, :].float()
        shifted_labels = labels[:, 1:]
        loss_sum = F.cross_entropy(
            shifted_logits.reshape(-1, shifted_logits.size(-1)), shifted_labels.reshape(-1), ignore_index=-100, reduction="sum"
        )
        return loss_sum, int((shifted_labels != -100).sum())

    @torch.no_grad()
    def evaluate(self, batches) -> float:
        """Token-mean validation loss over ``batches`` (eval mode, no gradients)."""
        was_training = self.model.training
        self.model.eval()
        total, count = 0.0, 0
        for batch in batches:
            loss_sum, n = self.loss_sum(batch)
            total += float(loss_sum)
            count += n
        self.model.train(was_training)
        return total / max(1, count)

    def step(self) -> dict[str, float]:
        """Clip, apply the optimizer, advance the schedule; returns grad norm (before clipping) and lr."""
        max_norm = self.optim_cfg.max_grad_norm
        params = [p for p in self.model.parameters() if p.grad is not None]
        if max_norm > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        else:
            grad_norm = float(torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params])))
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"grad_norm": grad_norm, "lr": lr}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def save_pretrained(self, path, tokenizer=None) -> None:
        """Hugging Face layout: model.safetensors + config.json (+ generation config, tokenizer)."""
        self.model.save_pretrained(path, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(path)
