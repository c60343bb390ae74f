"""Loading models, tokenizers and data files named in configs (local paths or ``embedded:`` names).

Nothing in a model folder runs: Python code it ships (``auto_map``) is refused unless the caller
passes ``trust_remote_code=True`` (config key ``model.trust_remote_code``), and weights are read from
safetensors only, never unpickled. A broken folder is a one-line :class:`UserError` naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

from npu_retu.errors import UserError

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def resolve_path(name: str) -> Path:
    """A config path: ``embedded:...`` names are built on first use (npu_retu.models.embedded)."""
    from npu_retu.models import embedded

    if embedded.is_embedded(name):
        return embedded.resolve(name)
    path = Path(name).expanduser()
    if not path.exists():
        raise UserError(f"file or folder not found: {name}")
    return path


def refuse_custom_code(folder: Path) -> None:
    """Raise a :class:`UserError` if ``folder`` ships Python code that ``from_pretrained`` would import.

    Such code is named by ``auto_map`` in ``config.json`` or ``tokenizer_config.json``. Checking here,
    before transformers sees the folder, means it never asks on stdin (where ``yes y |`` would answer)
    and never quietly swaps in its built-in class for the one the folder asks for.
    """
    for name in ("config.json", "tokenizer_config.json"):
        file = folder / name
        if not file.is_file():
            continue
        try:
            settings = json.loads(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{file}: not valid JSON: {e}") from None
        auto_map = settings.get("auto_map") if isinstance(settings, dict) else None
        if auto_map:
            modules = sorted(_code_files(auto_map))
            raise UserError(
                f"{folder} ships its own Python code ({', '.join(modules) or 'auto_map'} in {name}'s auto_map), "
                "which npu-retu does not run unless model.trust_remote_code=true "
                "(npu-retu eval: --trust-remote-code); read that code before you allow it"
            )


def _code_files(auto_map) -> set[str]:
    """The ``.py`` files an ``auto_map`` names: ``{"AutoModel": "modeling_x.XModel"}`` -> ``modeling_x.py``;
    tokenizers map to a ``[slow, fast]`` pair; ``repo--module.Class`` names another repository."""
    values = auto_map.values() if isinstance(auto_map, dict) else [auto_map]
    names = [v for value in values for v in (value if isinstance(value, list) else [value]) if isinstance(v, str)]
    return {name.rpartition("--")[2].rpartition(".")[0] + ".py" for name in names if "." in name}


def load_tokenizer(path: str, *, trust_remote_code: bool = False):
    """The tokenizer in a Hugging Face folder; pads with eos when it has no pad token.

    A folder with custom code (``auto_map``) is refused unless ``trust_remote_code``.
    """
    from transformers import AutoTokenizer

    folder = resolve_path(path)
    if not trust_remote_code:
        refuse_custom_code(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"cannot load a tokenizer from {folder}: {_one_line(e)}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str, dtype: str = "float32", attn_implementation: str = "sdpa", *, trust_remote_code: bool = False):
    """A causal LM in Hugging Face layout (``from_pretrained``), from safetensors weights only.

    A folder whose only weights are ``pytorch_model*.bin`` is refused, not loaded: those are pickles,
    and unpickling is the one weight format whose reader runs instructions from the file (even
    ``torch.load(weights_only=True)`` had a bypass before torch 2.6, CVE-2025-32434), and each way a
    pickle can be broken fails with a different exception. npu-retu writes safetensors everywhere.
    A corrupted safetensors file (empty, truncated, garbled header), a tensor of the wrong shape or
    a tensor missing from the checkpoint (which transformers would fill with random weights) is a
    :class:`UserError` naming the file; so is custom code (``auto_map``) unless ``trust_remote_code``.
    """
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    # transformers draws a bar for every load and save of a 1-shard model; our own progress says more
    hf_logging.disable_progress_bar()
    folder = resolve_path(path)
    if not trust_remote_code:
        refuse_custom_code(folder)
    if folder.is_dir() and not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.glob("pytorch_model*.bin"))
        if pickles:
            raise UserError(
                f"{folder} has only PyTorch pickle weights ({', '.join(pickles)}), which npu-retu does not "
                "load because unpickling can run code; convert them to model.safetensors where you trust "
                "the file (from_pretrained, then save_pretrained)"
            )
    try:
        model, loading = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=getattr(torch, DTYPES[dtype]), attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code, use_safetensors=True,
            # mismatched shapes come back in `loading` (raised below as one line) instead of a RuntimeError
            ignore_mismatched_sizes=True, output_loading_info=True,
        )
    except SafetensorError as e:
        raise UserError(_broken_safetensors(folder, e)) from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load a model from {folder}: {_one_line(e)}") from None
    if loading["mismatched_keys"]:
        key, in_file, in_model = sorted(loading["mismatched_keys"])[0]
        raise UserError(
            f"{folder}: weight {key} has shape {list(in_file)} in the checkpoint but {list(in_model)} in "
            f"config.json ({len(loading['mismatched_keys'])} mismatched in all): the weights belong to another model"
        )
    if loading["missing_keys"]:
        missing = sorted(loading["missing_keys"])
        raise UserError(
            f"{folder}: the checkpoint lacks {len(missing)} of the model's weights ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}): it is incomplete or for another architecture"
        )
    return model


def _broken_safetensors(folder: Path, error: Exception) -> str:
    """Which ``*.safetensors`` file of ``folder`` is broken, and how (safetensors does not say which)."""
    from safetensors import SafetensorError, safe_open

    files = [folder] if folder.is_file() else sorted(folder.glob("*.safetensors"))
    for file in files:
        if file.stat().st_size == 0:
            return f"{file}: empty file (0 bytes), not safetensors weights"
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except SafetensorError as e:
            return f"{file}: corrupted or truncated safetensors file ({_one_line(e)})"
    return f"cannot load the safetensors weights in {folder}: {_one_line(error)}"


def _one_line(error: Exception) -> str:
    """An exception's message on one line (transformers' messages span several)."""
    return " ".join(str(error).split()) or type(error).__name__
