"""TokenizedSet: tokenized SFT examples as flat int32 / int8 arrays (5 bytes a token), equal to the
list of examples it stands for, through concatenation, subsets, the validation split and packing."""

from __future__ import annotations

import numpy as np
import pytest

from npu_retu.data.batching import SFTBatcher, split_validation
from npu_retu.data.tokenize import TokenizedExample, TokenizedSet

EXAMPLES = [
    TokenizedExample([1, 2, 3], [0, 1, 1], "f.jsonl:1"),
    TokenizedExample([4, 5], [1, 1], "f.jsonl:2"),
    TokenizedExample([6], [0], "f.jsonl:3"),
    TokenizedExample([7, 8, 9, 10], [0, 0, 1, 1], "g.jsonl:1"),
]


def as_set(examples):
    ids = np.array([t for e in examples for t in e.input_ids], np.int32)
    mask = np.array([m for e in examples for m in e.loss_mask], np.int8)
    offsets = np.cumsum([0] + [len(e) for e in examples])
    return TokenizedSet(ids, mask, offsets, [e.source for e in examples])


def test_a_set_equals_its_examples_and_takes_five_bytes_a_token():
    tokens = as_set(EXAMPLES)
    assert tokens == EXAMPLES and list(tokens) == EXAMPLES
    assert tokens[-1] == EXAMPLES[3] and tokens[1:3] == EXAMPLES[1:3]
    assert [tokens.length(i) for i in range(4)] == [3, 2, 1, 4]
    assert tokens.nbytes == 10 * 4 + 10 * 1 + 5 * 8  # int32 ids, int8 mask, int64 offsets
    with pytest.raises(IndexError):
        tokens[4]
    with pytest.raises(ValueError, match="do not fit together"):
        TokenizedSet(np.zeros(3, np.int32), np.zeros(3, np.int8), np.array([0, 2]), ["a", "b"])


def test_concat_and_subset_keep_order_and_contents():
    whole = TokenizedSet.concat([as_set(EXAMPLES[:2]), as_set(EXAMPLES[2:])])
    assert whole == as_set(EXAMPLES)
    picked = whole.subset([3, 0, 2])
    assert isinstance(picked, TokenizedSet) and picked == [EXAMPLES[3], EXAMPLES[0], EXAMPLES[2]]
    assert TokenizedSet.concat([whole.subset([1]), whole.subset([2, 3])]) == EXAMPLES[1:]


def test_the_validation_split_and_packing_see_the_same_examples_as_with_a_list():
    tokens = as_set(EXAMPLES)
    train_set, val_set = split_validation(tokens, 1, seed=3)
    train_list, val_list = split_validation(EXAMPLES, 1, seed=3)
    assert isinstance(train_set, TokenizedSet) and train_set == train_list and val_set == val_list
    for packing in (False, True):
        from_set = SFTBatcher(tokens, 2, seed=1, packing=packing, max_length=5)
        from_list = SFTBatcher(EXAMPLES, 2, seed=1, packing=packing, max_length=5)
        for _ in range(5):
            a, b = next(from_set), next(from_list)
            assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
