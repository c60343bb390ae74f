"""Padding, packing (checked against a real tiny Qwen2), the validation split and the resumable batcher."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from npu_retu.data import load_sft
from npu_retu.data.batching import (
    IGNORE_INDEX,
    SFTBatcher,
    block_causal_mask,
    collate_packed,
    first_fit_bins,
    pack_examples,
    pad_batch,
    split_validation,
)
from npu_retu.data.tokenize import TokenizedExample, tokenize_sft
from npu_retu.errors import UserError

FIXTURES = Path(__file__).parent / "fixtures" / "data"
X = IGNORE_INDEX


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny matmuls on a shared 2-core machine: one thread is ~1000x faster than two that spin-wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def doc(ids: list[int], mask: list[int], source: str = "s") -> TokenizedExample:
    return TokenizedExample(input_ids=ids, loss_mask=mask, source=source)


# --------------------------------------------------------------------------------------------
# padding and packing, by hand


def test_pad_batch_right_pads_and_masks_labels():
    batch = pad_batch([doc([5, 6, 7, 8], [0, 0, 1, 1]), doc([9, 10], [0, 1])], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[X, X, 7, 8], [X, 10, X, X]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_first_fit_bins_by_hand():
    # capacity 8: 5->bin0 (3 left), 4->bin1 (4 left), 3->bin0 (full), 2->bin1 (2 left), 6->bin2, 1->bin1
    assert first_fit_bins([5, 4, 3, 2, 6, 1], 8) == [[0, 2], [1, 3, 5], [4]]
    assert first_fit_bins([], 8) == []
    with pytest.raises(ValueError, match="item 1 has 9 tokens, more than the packing length 8"):
        first_fit_bins([1, 9], 8)


def test_first_fit_bins_matches_a_plain_scan():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    bins: list[list[int]] = []
    room: list[int] = []
    for item, length in enumerate(lengths):  # the O(n^2) definition of first-fit
        slot = next((b for b, free in enumerate(room) if free >= length), None)
        if slot is None:
            bins.append([])
            room.append(128)
            slot = len(bins) - 1
        bins[slot].append(item)
        room[slot] -= length
    assert first_fit_bins(lengths, 128) == bins


def test_pack_examples_restarts_positions_and_cuts_labels_between_documents():
    a = doc([11, 12, 13], [0, 1, 1], "a")
    b = doc([21, 22, 23, 24], [1, 1, 0, 1], "b")  # the first token is masked in: it must still get -100
    c = doc([31, 32], [0, 1], "c")
    packed = pack_examples([a, b, c], max_length=7)
    assert len(packed) == 2
    first, second = packed
    assert first.input_ids == [11, 12, 13, 21, 22, 23, 24]
    assert first.labels == [X, 12, 13, X, 22, X, 24]
    assert first.position_ids == [0, 1, 2, 0, 1, 2, 3]
    assert (first.document_lengths, first.sources) == ([3, 4], ["a", "b"])
    assert (second.input_ids, second.labels, second.position_ids) == ([31, 32], [X, 32], [0, 1])
    with pytest.raises(ValueError, match="b: 4 tokens, more than the packing length 3"):
        pack_examples([b], max_length=3)


def test_collate_packed_pads_as_a_separate_document():
    packed = pack_examples([doc([1, 2, 3], [0, 1, 1]), doc([4, 5], [0, 1]), doc([6, 7, 8, 9, 10], [0, 0, 1, 1, 1])], 5)
    batch = collate_packed(packed, pad_token_id=0)
    assert set(batch) == {"input_ids", "labels", "position_ids", "seq_lens"}
    assert batch["seq_lens"].tolist() == [3, 2, 5]
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 4]]
    batch = collate_packed([packed[0], pack_examples([doc([7, 8], [0, 1])], 5)[0]], pad_token_id=0, block_mask=True)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [7, 8, 0, 0, 0]]
    assert batch["labels"].tolist() == [[X, 2, 3, X, 5], [X, 8, X, X, X]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    assert batch["seq_lens"].tolist() == [3, 2, 2]  # padding is not a document
    allowed = (batch["attention_mask"] == 0).int()[:, 0].tolist()
    assert allowed[0] == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]]
    assert allowed[1] == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]
    assert batch["attention_mask"].min().item() == torch.finfo(torch.float32).min


def test_block_causal_mask_dtype():
    mask = block_causal_mask(torch.tensor([[0, 0, 1]]), torch.bfloat16)
    assert mask.shape == (1, 1, 3, 3) and mask.dtype == torch.bfloat16
    assert mask[0, 0, 2, 1].item() == torch.finfo(torch.bfloat16).min and mask[0, 0, 2, 2].item() == 0


# --------------------------------------------------------------------------------------------
# packed == unpacked on a real tiny Qwen2


@pytest.fixture(scope="module")
def tokenized_docs():
    tokenizer = AutoTokenizer.from_pretrained(FIXTURES / "chatml_tokenizer")
    files = ["sft_am_deepseek.jsonl", "sft_sharegpt.json", "sft_prompt_response.jsonl"]
    examples = load_sft([FIXTURES / name for name in files])
    return tokenizer, [tokenize_sft(example, tokenizer, max_length=256) for example in examples]


def tiny_qwen2(vocab_size: int, attn_implementation: str) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        attn_implementation=attn_implementation,
    )
    return Qwen2ForCausalLM(config).eval()


def per_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Loss of predicting labels[t + 1] from position t (0 where the label is -100), shape [B, T - 1]."""
    return F.cross_entropy(
        logits[:, :-1].transpose(1, 2).float(), labels[:, 1:], ignore_index=IGNORE_INDEX, reduction="none"
    )


def unpacked_losses(model, documents) -> list[torch.Tensor]:
    losses = []
    for document in documents:
        batch = pad_batch([document], pad_token_id=0)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], use_cache=False).logits
        losses.append(per_token_loss(logits, batch["labels"])[0])
    return losses


def packed_losses(model, packed, batch) -> list[torch.Tensor]:
    """Cut the packed per-token losses back into documents (each document's last position predicts
    the next document's first token, which carries label -100 and is dropped here)."""
    inputs = {k: batch[k] for k in ("input_ids", "position_ids", "attention_mask") if k in batch}
    with torch.no_grad():
        logits = model(**inputs, use_cache=False).logits
    losses = per_token_loss(logits, batch["labels"])
    by_document = []
    for row, sequence in enumerate(packed):
        start = 0
        for length in sequence.document_lengths:
            by_document.append(losses[row, start : start + length - 1])
            start += length
    return by_document


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("block_mask", [False, True], ids=["position_ids", "explicit_4d_mask"])
def test_packed_loss_equals_unpacked_loss(tokenized_docs, attn_implementation, block_mask):
    tokenizer, documents = tokenized_docs
    model = tiny_qwen2(len(tokenizer), attn_implementation)
    packed = pack_examples(documents, max_length=160)
    assert len(packed) < len(documents) and max(len(p.document_lengths) for p in packed) >= 3  # really packed
    batch = collate_packed(packed, tokenizer.pad_token_id, block_mask=block_mask)
    order = [source for sequence in packed for source in sequence.sources]
    reference = dict(zip([d.source for d in documents], unpacked_losses(model, documents)))
    for source, loss in zip(order, packed_losses(model, packed, batch)):
        assert loss.shape == reference[source].shape
        torch.testing.assert_close(loss, reference[source], atol=1e-5, rtol=0)
    # the same tokens are trained on: every label of every document, none across documents
    assert (batch["labels"] != X).sum().item() == sum(d.num_loss_tokens for d in documents)


def test_packing_without_restarted_positions_leaks_across_documents(tokenized_docs):
    """The control: the same packed rows with plain 0..T-1 positions and no mask let documents see each
    other, and the losses change; the equality above is not an accident."""
    tokenizer, documents = tokenized_docs
    model = tiny_qwen2(len(tokenizer), "sdpa")
    packed = pack_examples(documents, max_length=160)
    batch = collate_packed(packed, tokenizer.pad_token_id)
    batch["position_ids"] = torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"])
    reference = dict(zip([d.source for d in documents], unpacked_losses(model, documents)))
    order = [source for sequence in packed for source in sequence.sources]
    differences = [(loss - reference[s]).abs().max().item() for s, loss in zip(order, packed_losses(model, packed, batch))]
    assert max(differences) > 1e-3


def test_packed_detection_is_off_when_the_model_keeps_a_cache(tokenized_docs):
    """Why collate_packed's docstring says use_cache=False: with the default use_cache=True, transformers
    builds a cache even for a training forward and then ignores the restarted position_ids."""
    tokenizer, documents = tokenized_docs
    model = tiny_qwen2(len(tokenizer), "sdpa")
    batch = collate_packed(pack_examples(documents[:3], max_length=512), tokenizer.pad_token_id)
    second = documents[1]
    start = len(documents[0])
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([second.input_ids]), use_cache=False).logits[0]
        no_cache = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        cached = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
    torch.testing.assert_close(no_cache[start : start + len(second)], alone, atol=1e-5, rtol=0)
    assert (cached[start : start + len(second)] - alone).abs().max().item() > 1e-3


def test_padded_batch_loss_equals_single_documents(tokenized_docs):
    tokenizer, documents = tokenized_docs
    model = tiny_qwen2(len(tokenizer), "sdpa")
    batch = pad_batch(documents, tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
    losses = per_token_loss(logits, batch["labels"])
    for row, (document, reference) in enumerate(zip(documents, unpacked_losses(model, documents))):
        torch.testing.assert_close(losses[row, : len(document) - 1], reference, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------
# validation split


def test_split_validation_is_deterministic_and_disjoint():
    items = list(range(100))
    train, val = split_validation(items, val_size=10, seed=3)
    assert (train, val) == split_validation(items, val_size=10, seed=3)
    assert len(val) == 10 and len(train) == 90
    assert sorted(train + val) == items and not set(train) & set(val)
    assert train == sorted(train) and val == sorted(val)  # original order kept
    expected_val = sorted(torch.randperm(100, generator=torch.Generator().manual_seed(3))[:10].tolist())
    assert val == expected_val
    assert split_validation(items, val_size=10, seed=4)[1] != val
    assert split_validation(items, val_size=0, seed=3) == (items, [])


def test_split_validation_refuses_a_split_that_leaves_no_training_data():
    with pytest.raises(UserError, match=r"data.val_size=5: must be >= 0 and less than the number of training examples \(5\)"):
        split_validation([1, 2, 3, 4, 5], val_size=5, seed=0)


# --------------------------------------------------------------------------------------------
# the batcher


def numbered_docs(count: int) -> list[TokenizedExample]:
    """Document i is [100 + i] * (1 + i % 4) tokens: its first token says which document it is."""
    return [doc([100 + i] * (1 + i % 4), [0] + [1] * (i % 4), f"d{i}") for i in range(count)]


def documents_in(batch: dict[str, torch.Tensor]) -> list[int]:
    return [int(token) - 100 for token in batch["input_ids"].flatten().tolist() if token >= 100]


def test_batcher_in_order_epoch_after_epoch():
    batcher = SFTBatcher(numbered_docs(5), micro_batch_size=2, seed=0, shuffle=False)
    seen = [documents_in(next(batcher)) for _ in range(6)]
    firsts = [sorted(set(batch)) for batch in seen]
    assert firsts == [[0, 1], [2, 3], [4], [0, 1], [2, 3], [4]]
    assert batcher.state_dict() == {"epoch": 1, "index": 3}


def test_batcher_shuffles_by_seed_plus_epoch():
    batcher = SFTBatcher(numbered_docs(7), micro_batch_size=1, seed=10, shuffle=True)
    for epoch in range(3):
        expected = torch.randperm(7, generator=torch.Generator().manual_seed(10 + epoch)).tolist()
        assert [documents_in(next(batcher))[0] for _ in range(7)] == expected


@pytest.mark.parametrize("packing", [False, True])
def test_batcher_resumes_exactly(packing):
    documents = numbered_docs(23)
    run = SFTBatcher(documents, micro_batch_size=3, seed=5, shuffle=True, packing=packing, max_length=8)
    per_epoch = run.batches_in_epoch(0)
    for _ in range(per_epoch + 2):  # into the second epoch
        next(run)
    state = run.state_dict()
    assert state == {"epoch": 1, "index": 2}
    expected = [next(run) for _ in range(per_epoch + 3)]  # across the next epoch boundary too

    resumed = SFTBatcher(documents, micro_batch_size=3, seed=5, shuffle=True, packing=packing, max_length=8)
    resumed.load_state_dict(state)
    for want in expected:
        got = next(resumed)
        assert got.keys() == want.keys()
        assert all(torch.equal(got[key], want[key]) for key in want)


def test_batcher_visits_every_document_once_per_epoch():
    documents = numbered_docs(23)
    for packing in (False, True):
        batcher = SFTBatcher(documents, micro_batch_size=3, seed=1, shuffle=True, packing=packing, max_length=8)
        visited = [d for _ in range(batcher.batches_in_epoch(0)) for d in documents_in(next(batcher))]
        # document i appears once per token it has (1 + i % 4)
        assert sorted(visited) == sorted(i for i in range(23) for _ in range(1 + i % 4))
        assert batcher.state_dict() == {"epoch": 0, "index": batcher.batches_in_epoch(0)}


def test_batcher_packed_batches_have_the_packing_shape():
    batcher = SFTBatcher(numbered_docs(10), micro_batch_size=2, seed=0, shuffle=False, packing=True, max_length=8)
    # lengths 1,2,3,4,1,2,3,4,1,2 first-fit into 8: bin0 gets docs 0,1,2 (6), bin1 doc 3 (4), doc 4 -> bin0
    # (7), doc 5 -> bin1 (6), doc 6 -> bin2 (3), doc 7 -> bin2 (7), doc 8 -> bin0 (8), doc 9 -> bin1 (8)
    assert batcher.epoch_plan(0) == [[[0, 1, 2, 4, 8], [3, 5, 9]], [[6, 7]]]
    batch = next(batcher)
    assert set(batch) == {"input_ids", "labels", "position_ids", "seq_lens"}
    assert batch["seq_lens"].tolist() == [1, 2, 3, 1, 1, 4, 2, 2]
    assert batch["position_ids"].tolist() == [[0, 0, 1, 0, 1, 2, 0, 0], [0, 1, 2, 3, 0, 1, 0, 1]]
    assert documents_in(batch) == [0, 1, 1, 2, 2, 2, 4, 8, 3, 3, 3, 3, 5, 5, 9, 9]


def test_batcher_rejects_bad_state_and_arguments():
    batcher = SFTBatcher(numbered_docs(4), micro_batch_size=2, seed=0, shuffle=False)
    with pytest.raises(ValueError, match="no position epoch=0, index=3"):
        batcher.load_state_dict({"epoch": 0, "index": 3})
    with pytest.raises(ValueError, match="packing needs max_length"):
        SFTBatcher(numbered_docs(4), micro_batch_size=2, packing=True)
