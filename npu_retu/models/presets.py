"""Published Hugging Face ``config.json`` values of the models the RETU paper trains (and a few small
relatives), so that FLOPs can be counted without downloading anything.

Only the keys that shape the compute are kept, spelled as in ``config.json``. Where a model card's
config has no ``head_dim`` key (the Qwen2.5 family), none is invented here: ``ModelShape`` derives it
as ``hidden_size // num_attention_heads`` exactly as transformers does.
"""

from __future__ import annotations

from npu_retu.errors import UserError

MODEL_PRESETS: dict[str, dict] = {
    # The paper's main model (§5.1).
    "Qwen2.5-7B": {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "num_hidden_layers": 28,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "vocab_size": 152064,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,  # head_dim 3584 / 28 = 128, so the K projection is 512 wide
        "tie_word_embeddings": False,
    },
    # The paper's cross-validation model (§6.3).
    "Llama-3.2-3B": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "num_hidden_layers": 28,
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "vocab_size": 128256,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "tie_word_embeddings": True,
    },
    # Small relatives for laptop-sized runs and the demo.
    "Qwen2.5-0.5B": {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "num_hidden_layers": 24,
        "hidden_size": 896,
        "intermediate_size": 4864,
        "vocab_size": 151936,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "tie_word_embeddings": True,
    },
    "Qwen2.5-1.5B": {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "num_hidden_layers": 28,
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "vocab_size": 151936,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "tie_word_embeddings": True,
    },
}


def _normalise(name: str) -> str:
    # Accept the Hub id too ("Qwen/Qwen2.5-7B", "meta-llama/Llama-3.2-3B") and any letter case.
    return name.strip().rsplit("/", 1)[-1].lower()


def preset_names() -> list[str]:
    """The preset names, as ``get_preset`` accepts them."""
    return list(MODEL_PRESETS)


def find_preset(name: str) -> dict | None:
    """The preset's config dict (a copy), or None when ``name`` is not a preset."""
    wanted = _normalise(name)
    for preset_name, config in MODEL_PRESETS.items():
        if _normalise(preset_name) == wanted:
            return dict(config)
    return None


def get_preset(name: str) -> dict:
    """The published ``config.json`` values of a preset model (a copy).

    Names are matched without regard to case, with or without the Hub organisation
    (``Qwen/Qwen2.5-7B`` works as well as ``qwen2.5-7b``).
    """
    config = find_preset(name)
    if config is None:
        raise UserError(f"unknown model preset {name!r}; known presets: {', '.join(MODEL_PRESETS)}")
    return config
