"""SFT's loss: the next-token negative log-likelihood of the expert trajectory (paper Eq. 1)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from npu_retu.algos.logprobs import selected_logprobs
from npu_retu.algos.losses import register_loss


@register_loss("nll")
class NextTokenNLL:
    """``-sum_t log pi(tau_t | q, tau_<t)`` over a micro-batch's label tokens (Eq. 1), and their count.

    ``batch`` holds ``input_ids``, ``labels`` (-100 where there is no loss: the prompt, padding,
    document boundaries of a packed row), and optionally ``attention_mask`` / ``position_ids``, on
    the model's device. The loss is the *sum*: the trainer divides by the token count of the whole
    optimizer step (all micro-batches, all ranks), so the gradient is Eq. 1's token mean however the
    step is split.

    ``kernels``: ``unfused`` takes the logits from the model's forward (``[B, S, V]``, fp32 for the
    cross-entropy); anything else takes the label tokens' log-probs straight from the hidden states
    and the LM head with the fused kernel (``auto``: the device layer's implementation), which never
    holds the logits.
    """

    stage = "sft"

    def __init__(self, *, kernels: str = "unfused"):
        self.kernels = kernels

    def __call__(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        labels = batch["labels"][:, 1:]
        if self.kernels != "unfused":
            keep = labels != -100
            logp = selected_logprobs(
                model, batch["input_ids"], batch.get("attention_mask"), labels, keep,
                kernels=self.kernels, position_ids=batch.get("position_ids"),
            )
            return -logp.sum(), {"tokens": int(keep.sum())}
        # use_cache=False: training needs no KV cache, and with one transformers ignores the
        # restarted position_ids of packed sequences (documents would attend to each other).
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch.get("attention_mask"), "use_cache": False}
        if "position_ids" in batch:
            inputs["position_ids"] = batch["position_ids"]
        logits = model(**inputs).logits[:, :-1, :].float()
        loss_sum = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100, reduction="sum")
        return loss_sum, {"tokens": int((labels != -100).sum())}
