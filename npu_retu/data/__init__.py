"""Data: readers (JSONL / JSON / Parquet), example schemas and loaders, chat-template tokenization
with an assistant-only loss mask, padding / packing, the validation split and the SFT batcher.

    examples = load_sft(["data/train.jsonl"], skip_bad_rows=True)
    tokenized = [tokenize_sft(example, tokenizer, max_length=4096) for example in examples]
    train, val = split_validation(tokenized, val_size=200, seed=0)
    for batch in SFTBatcher(train, micro_batch_size=8, seed=0, shuffle=True, packing=True, max_length=4096):
        ...

The torch-using parts (tokenize, batching) load on first use, so importing this package stays cheap.
"""

from importlib import import_module
from typing import Any

from npu_retu.data.errors import BadRowCounter, ChatTemplateError, DataError
from npu_retu.data.readers import read_rows
from npu_retu.data.schemas import (
    BENCHMARKS,
    RLExample,
    SFTExample,
    attach_experts,
    last_boxed,
    load_benchmark,
    load_rl,
    load_sft,
    normalize_ground_truth,
    require_experts,
)

_LAZY = {
    "TokenizedExample": "npu_retu.data.tokenize",
    "tokenize_sft": "npu_retu.data.tokenize",
    "tokenize_prompt": "npu_retu.data.tokenize",
    "tokenize_expert": "npu_retu.data.tokenize",
    "IGNORE_INDEX": "npu_retu.data.batching",
    "PackedSequence": "npu_retu.data.batching",
    "SFTBatcher": "npu_retu.data.batching",
    "collate_packed": "npu_retu.data.batching",
    "pack_examples": "npu_retu.data.batching",
    "pad_batch": "npu_retu.data.batching",
    "split_validation": "npu_retu.data.batching",
}

__all__ = [
    "BENCHMARKS",
    "BadRowCounter",
    "ChatTemplateError",
    "DataError",
    "RLExample",
    "SFTExample",
    "attach_experts",
    "last_boxed",
    "load_benchmark",
    "load_rl",
    "load_sft",
    "normalize_ground_truth",
    "read_rows",
    "require_experts",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'npu_retu.data' has no attribute {name!r}")
