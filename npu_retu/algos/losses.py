"""Every training loss, registered by name: the trainers build theirs with :func:`build_loss`.

A loss is a class; ``build_loss(name, **settings)`` makes one from its settings and the trainer
calls it on each micro-batch, ``loss(model, batch) -> (loss, metrics)``. Its ``stage`` says which
trainer runs it (and so what ``batch`` is): ``"sft"`` (a tokenized batch with ``labels``) or
``"rl"`` (a :class:`~npu_retu.algos.policy_loss.PolicyBatch`).

* ``nll`` (:class:`~npu_retu.algos.sft_loss.NextTokenNLL`): SFT's next-token negative
  log-likelihood, Eq. 1; the SFT trainer's loss.
* ``clipped`` (:class:`~npu_retu.algos.policy_loss.ClippedPolicyLoss`): GRPO / DAPO's clipped
  policy loss, Eq. 3 with DAPO's clip-higher and dual-clip; the RL trainer's default
  (``rl.algo.loss``).

Each loss takes its log-probs from the fused kernels or from the model's full logits as its
``kernels`` setting says (``auto``: the device layer picks; ``unfused``; or a named implementation),
so a trainer never chooses a kernel. A new loss (LUFFY, SRFT, UPT) is one more class with
``@register_loss("name")`` in a module that :mod:`npu_retu.algos` imports.
"""

from __future__ import annotations

from typing import Any, Callable

LOSSES: dict[str, type] = {}


def register_loss(name: str) -> Callable[[type], type]:
    """Register a loss class under ``name`` (its settings are the constructor's keyword arguments)."""

    def deco(cls: type) -> type:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is already registered")
        LOSSES[name] = cls
        return cls

    return deco


def get_loss(name: str) -> type:
    """The loss class registered as ``name``; a ValueError lists the valid names otherwise."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(sorted(LOSSES))}") from None


def loss_names(stage: str) -> list[str]:
    """The registered losses a trainer of ``stage`` ("sft" / "rl") can run."""
    return sorted(name for name, cls in LOSSES.items() if getattr(cls, "stage", None) == stage)


def build_loss(name: str, **settings: Any) -> Any:
    """The loss registered as ``name``, made with ``settings`` (torchtune's ``config.instantiate(cfg.loss)``)."""
    return get_loss(name)(**settings)
