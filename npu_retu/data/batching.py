"""Padding, packing, the validation split and a resumable micro-batch iterator for SFT.

Labels follow the Hugging Face convention: aligned with ``input_ids`` (the model shifts them by one),
``-100`` wherever no loss is taken (prompt and template tokens, padding, the first token of every
packed document).

Packing puts several documents in one row. Documents must not see each other: ``position_ids``
restart at 0 for each document, and transformers (``masking_utils.find_packed_sequence_indices``)
turns a restart into a block-diagonal causal mask, *provided the model is called with no
``attention_mask`` and no KV cache*: pass ``use_cache=False`` (the default ``use_cache=True`` makes a
cache even in training and turns the detection off). ``collate_packed(..., block_mask=True)``
builds that mask explicitly instead, for attention code that does not read ``position_ids``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from npu_retu.data.tokenize import TokenizedExample, example_length, take
from npu_retu.errors import UserError

IGNORE_INDEX = -100  # the label value that torch's cross-entropy (and transformers) skip

T = TypeVar("T")


def labels_from_mask(input_ids: Sequence[int], loss_mask: Sequence[int]) -> list[int]:
    return [token if keep else IGNORE_INDEX for token, keep in zip(input_ids, loss_mask)]


# --------------------------------------------------------------------------------------------
# padding


def pad_batch(examples: Sequence[TokenizedExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad examples to the longest: ``input_ids``, ``attention_mask``, ``labels``, ``position_ids``
    (all ``[batch, longest]``, int64)."""
    if not examples:
        raise ValueError("pad_batch: no examples")
    longest = max(len(example) for example in examples)
    input_ids = torch.full((len(examples), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
    labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        length = len(example)
        input_ids[row, :length] = torch.tensor(example.input_ids, dtype=torch.long)
        attention_mask[row, :length] = 1
        labels[row, :length] = torch.tensor(labels_from_mask(example.input_ids, example.loss_mask), dtype=torch.long)
    position_ids = torch.arange(longest, dtype=torch.long).expand(len(examples), longest).clone()
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "position_ids": position_ids}


# --------------------------------------------------------------------------------------------
# packing


@dataclass
class PackedSequence:
    """Several documents in one row; ``document_lengths`` sum to ``len(input_ids)``."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    document_lengths: list[int]
    sources: list[str]

    def __len__(self) -> int:
        return len(self.input_ids)


def first_fit_bins(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Greedy first-fit in order: each item goes into the first bin with room, else a new bin.

    Returns the item indices of each bin. A max-segment-tree over the bins' free space finds the
    first bin with room in O(log n), so packing a million documents takes seconds, not hours. All n
    slots start empty, so the leftmost slot with room is either an open bin or the next new one.
    """
    count = len(lengths)
    size = 1
    while size < max(count, 1):
        size *= 2
    free = [0] * (2 * size)  # free[size + slot] = room left in bin `slot`; inner nodes hold the max
    for slot in range(count):
        free[size + slot] = capacity
    for node in range(size - 1, 0, -1):
        free[node] = max(free[2 * node], free[2 * node + 1])

    bins: list[list[int]] = []
    for item, length in enumerate(lengths):
        if length > capacity:
            raise ValueError(f"item {item} has {length} tokens, more than the packing length {capacity}")
        node = 1
        while node < size:
            node = 2 * node if free[2 * node] >= length else 2 * node + 1
        slot = node - size
        if slot == len(bins):
            bins.append([])
        bins[slot].append(item)
        free[node] -= length
        node //= 2
        while node:
            free[node] = max(free[2 * node], free[2 * node + 1])
            node //= 2
    return bins


def pack_documents(documents: Sequence[TokenizedExample]) -> PackedSequence:
    """Concatenate documents into one row. Positions restart at 0 per document, and the first token of
    each document gets label -100 so that it is never predicted from the previous document."""
    input_ids: list[int] = []
    labels: list[int] = []
    position_ids: list[int] = []
    for document in documents:
        document_labels = labels_from_mask(document.input_ids, document.loss_mask)
        document_labels[0] = IGNORE_INDEX
        input_ids.extend(document.input_ids)
        labels.extend(document_labels)
        position_ids.extend(range(len(document)))
    return PackedSequence(
        input_ids=input_ids,
        labels=labels,
        position_ids=position_ids,
        document_lengths=[len(document) for document in documents],
        sources=[document.source for document in documents],
    )


def pack_examples(examples: Sequence[TokenizedExample], max_length: int) -> list[PackedSequence]:
    """Pack examples into rows of at most ``max_length`` tokens, greedy first-fit in order."""
    for example in examples:
        if len(example) > max_length:
            raise ValueError(f"{example.source}: {len(example)} tokens, more than the packing length {max_length}")
    bins = first_fit_bins([len(example) for example in examples], max_length)
    return [pack_documents([examples[i] for i in members]) for members in bins]


def collate_packed(
    packed: Sequence[PackedSequence],
    pad_token_id: int,
    *,
    block_mask: bool = False,
    mask_dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Right-pad packed rows into ``input_ids``, ``labels``, ``position_ids`` (``[batch, longest]``),
    plus ``seq_lens``: the length of every document in the micro-batch (1-D, for FLOPs accounting;
    not a model input).

    No ``attention_mask`` by default: transformers infers the documents from ``position_ids``, but
    only when the model is called with ``use_cache=False`` (with a cache it silently falls back to one
    causal mask over the whole row, and documents see each other). Padding is a document of its own
    (positions from 0), so it never joins a real one. With ``block_mask=True`` an explicit additive
    4-D mask ``[batch, 1, T, T]`` (0 where a token may attend, the dtype's minimum elsewhere) is
    returned as ``attention_mask``; it works whatever the cache setting, at O(T^2) memory per row.
    """
    if not packed:
        raise ValueError("collate_packed: no packed rows")
    longest = max(len(row) for row in packed)
    input_ids = torch.full((len(packed), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(packed), longest), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(packed), longest), dtype=torch.long)
    document_ids = torch.zeros((len(packed), longest), dtype=torch.long)
    for row, sequence in enumerate(packed):
        length = len(sequence)
        input_ids[row, :length] = torch.tensor(sequence.input_ids, dtype=torch.long)
        labels[row, :length] = torch.tensor(sequence.labels, dtype=torch.long)
        position_ids[row, :length] = torch.tensor(sequence.position_ids, dtype=torch.long)
        position_ids[row, length:] = torch.arange(longest - length)
        lengths = torch.tensor(sequence.document_lengths + [longest - length], dtype=torch.long)
        document_ids[row] = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    # every document's length (padding excluded): attention FLOPs grow with each document's own length
    seq_lens = torch.tensor([n for sequence in packed for n in sequence.document_lengths], dtype=torch.long)
    batch = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "seq_lens": seq_lens}
    if block_mask:
        batch["attention_mask"] = block_causal_mask(document_ids, mask_dtype)
    return batch


def block_causal_mask(document_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive ``[batch, 1, T, T]`` mask: token q may attend to token k iff k <= q and both are in the
    same document (``document_ids[b, q] == document_ids[b, k]``)."""
    length = document_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    same_document = document_ids[:, :, None] == document_ids[:, None, :]
    allowed = (causal & same_document)[:, None]
    mask = torch.zeros(allowed.shape, dtype=dtype)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


# --------------------------------------------------------------------------------------------
# validation split and the resumable batcher


def split_validation(examples: Sequence[T], val_size: int, seed: int) -> tuple[Sequence[T], Sequence[T]]:
    """Hold out ``val_size`` examples, chosen by a permutation seeded with ``seed``.

    Deterministic and disjoint; both parts keep the original order of the examples.
    """
    if not 0 <= val_size < len(examples):
        raise UserError(
            f"data.val_size={val_size}: must be >= 0 and less than the number of training examples ({len(examples)})"
        )
    permutation = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    held_out = set(permutation[:val_size])
    # a TokenizedSet stays one (compact); a list stays a list
    train = take(examples, [i for i in range(len(examples)) if i not in held_out])
    val = take(examples, sorted(held_out))
    return train, val


class SFTBatcher:
    """Micro-batches of SFT examples, epoch after epoch, from an exact resumable position.

    Epoch ``e`` visits the examples in the order of a permutation seeded by ``seed + e`` (or in order
    without ``shuffle``); with ``packing`` that order is packed first-fit into rows of ``max_length``
    tokens, and a micro-batch is ``micro_batch_size`` rows. ``state_dict()`` is ``{"epoch", "index"}``
    where ``index`` counts the micro-batches already handed out this epoch; loading it makes the next
    batch exactly the one the saved run would have seen next.
    """

    def __init__(
        self,
        examples: Sequence[TokenizedExample],
        micro_batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        packing: bool = False,
        max_length: int | None = None,
        *,
        pad_token_id: int = 0,
    ) -> None:
        if not examples:
            raise ValueError("SFTBatcher: no examples")
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        if packing and max_length is None:
            raise ValueError("SFTBatcher: packing needs max_length")
        self.examples = examples
        self.micro_batch_size = micro_batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.packing = packing
        self.max_length = max_length
        self.pad_token_id = pad_token_id
        self.epoch = 0
        self.index = 0
        self._plan_epoch: int | None = None
        self._plan: list[list[list[int]]] = []

    def epoch_plan(self, epoch: int) -> list[list[list[int]]]:
        """Each micro-batch of ``epoch`` as rows of example indices (one index per row unpacked)."""
        if self._plan_epoch != epoch:
            count = len(self.examples)
            if self.shuffle:
                order = torch.randperm(count, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
            else:
                order = list(range(count))
            if self.packing:
                bins = first_fit_bins([example_length(self.examples, i) for i in order], self.max_length)
                rows = [[order[i] for i in members] for members in bins]
            else:
                rows = [[i] for i in order]
            self._plan = [rows[start : start + self.micro_batch_size] for start in range(0, len(rows), self.micro_batch_size)]
            self._plan_epoch = epoch
        return self._plan

    def batches_in_epoch(self, epoch: int) -> int:
        return len(self.epoch_plan(epoch))

    def collate(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        if self.packing:
            return collate_packed([pack_documents([self.examples[i] for i in row]) for row in rows], self.pad_token_id)
        return pad_batch([self.examples[row[0]] for row in rows], self.pad_token_id)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.index >= self.batches_in_epoch(self.epoch):
            self.epoch, self.index = self.epoch + 1, 0
        rows = self.epoch_plan(self.epoch)[self.index]
        self.index += 1
        return self.collate(rows)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, index = int(state["epoch"]), int(state["index"])
        if epoch < 0 or not 0 <= index <= self.batches_in_epoch(epoch):
            raise ValueError(f"SFTBatcher.load_state_dict: no position epoch={epoch}, index={index} in this data")
        self.epoch, self.index = epoch, index
