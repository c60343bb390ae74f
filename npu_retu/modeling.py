"""Loading models, tokenizers and data files named in configs (local paths or ``embedded:`` names)."""

from __future__ import annotations

from pathlib import Path

from npu_retu.errors import UserError

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def resolve_path(name: str) -> Path:
    """A config path: ``embedded:...`` names are built on first use (npu_retu.embedded)."""
    from npu_retu import embedded

    if embedded.is_embedded(name):
        return embedded.resolve(name)
    path = Path(name).expanduser()
    if not path.exists():
        raise UserError(f"file or folder not found: {name}")
    return path


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    folder = resolve_path(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load a tokenizer from {folder}: {e}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str, dtype: str = "float32", attn_implementation: str = "sdpa"):
    """A causal LM in Hugging Face layout (``from_pretrained``)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    # transformers draws a bar for every load and save of a 1-shard model; our own progress says more
    hf_logging.disable_progress_bar()
    folder = resolve_path(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=getattr(torch, DTYPES[dtype]), attn_implementation=attn_implementation
        )
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load a model from {folder}: {e}") from None
    return model
