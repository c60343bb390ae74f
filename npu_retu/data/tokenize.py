"""Tokenize conversations with the model's own chat template and an assistant-only loss mask.

The SFT loss (the usual next-token NLL) is taken only on the expert's tokens: the assistant's
content and its end-of-turn token. To find those tokens for any template, each assistant turn ``i``
is located by rendering two prefixes of the conversation:

    before  = template(messages[:i], add_generation_prompt=True)   # ... <|im_start|>assistant\\n
    through = template(messages[:i + 1])                          # ... <|im_start|>assistant\\n{content}<|im_end|>\\n

The tokens of ``before`` must be a prefix of the tokens of ``through`` (and those of the whole
conversation); the tokens in between are the assistant's turn. The turn ends at its last special
token (``<|im_end|>``); template text after it (ChatML's trailing newline) is not the model's to
predict. A template that is not prefix-stable (one that rewrites earlier turns, e.g. drops past
``<think>`` blocks) gets a :class:`ChatTemplateError` instead of a silently wrong mask.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from npu_retu.data.errors import ChatTemplateError, DataError, parse_source
from npu_retu.data.schemas import SFTExample

TOO_LONG_CHOICES = ("error", "skip", "truncate")


@dataclass
class TokenizedExample:
    """Token ids of one conversation and a 0/1 mask that is 1 exactly on the assistant's tokens."""

    input_ids: list[int]
    loss_mask: list[int]
    source: str

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_loss_tokens(self) -> int:
        return sum(self.loss_mask)


class TokenizedSet(Sequence[TokenizedExample]):
    """Tokenized examples held as flat arrays: int32 token ids, int8 loss mask and int64 offsets,
    about 5 bytes a token, where the lists of :class:`TokenizedExample` take 30-45 (30.3 measured on
    ``embedded:sft-uniform-1k``, whose ids are small; a large vocabulary's ids are objects of their
    own). ``set[i]`` makes the example on access; ``length(i)`` and ``subset(indices)`` need none.

    What :func:`npu_retu.data.prepare.tokenize_sft_files` returns: at the paper's SFT889K (~3.4 G
    tokens) about 17 GB instead of 100-150 GB. Equal (``==``) to a list of the same examples.
    """

    def __init__(self, input_ids: np.ndarray, loss_mask: np.ndarray, offsets: np.ndarray, sources: list[str]) -> None:
        if len(offsets) != len(sources) + 1 or int(offsets[-1]) != len(input_ids) or len(loss_mask) != len(input_ids):
            raise ValueError(f"TokenizedSet: {len(sources)} sources, {len(offsets)} offsets, {len(input_ids)} ids, "
                             f"{len(loss_mask)} mask entries do not fit together")
        self.input_ids = np.ascontiguousarray(input_ids, dtype=np.int32)
        self.loss_mask = np.ascontiguousarray(loss_mask, dtype=np.int8)
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        self.sources = list(sources)

    @classmethod
    def concat(cls, parts: Sequence[TokenizedSet]) -> TokenizedSet:
        """One set holding ``parts`` in order."""
        offsets, total = [np.zeros(1, np.int64)], 0
        for part in parts:
            offsets.append(part.offsets[1:] - part.offsets[0] + total)
            total += int(part.offsets[-1] - part.offsets[0])
        return cls(
            np.concatenate([p.input_ids[p.offsets[0] : p.offsets[-1]] for p in parts]) if parts else np.zeros(0, np.int32),
            np.concatenate([p.loss_mask[p.offsets[0] : p.offsets[-1]] for p in parts]) if parts else np.zeros(0, np.int8),
            np.concatenate(offsets), [s for p in parts for s in p.sources],
        )

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"TokenizedSet index {index} out of range for {len(self)} examples")
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return TokenizedExample(input_ids=self.input_ids[start:end].tolist(), loss_mask=self.loss_mask[start:end].tolist(),
                                source=self.sources[index])

    def length(self, index: int) -> int:
        return int(self.offsets[index + 1] - self.offsets[index])

    def subset(self, indices: Sequence[int]) -> TokenizedSet:
        """The examples at ``indices``, in that order, as a new set."""
        idx = np.asarray(indices, dtype=np.int64)
        starts, ends = self.offsets[idx], self.offsets[idx + 1]
        lengths = ends - starts
        offsets = np.concatenate([np.zeros(1, np.int64), np.cumsum(lengths)])
        positions = np.repeat(starts - offsets[:-1], lengths) + np.arange(int(offsets[-1]), dtype=np.int64)
        return TokenizedSet(self.input_ids[positions], self.loss_mask[positions], offsets, [self.sources[i] for i in idx.tolist()])

    @property
    def nbytes(self) -> int:
        return self.input_ids.nbytes + self.loss_mask.nbytes + self.offsets.nbytes

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TokenizedSet):
            return (self.sources == other.sources and np.array_equal(self.offsets, other.offsets)
                    and np.array_equal(self.input_ids, other.input_ids) and np.array_equal(self.loss_mask, other.loss_mask))
        if isinstance(other, (list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # mutable arrays inside

    def __repr__(self) -> str:
        return f"TokenizedSet({len(self)} examples, {len(self.input_ids)} tokens, {self.nbytes / 2**20:.1f} MiB)"


def example_length(examples: Sequence[TokenizedExample], index: int) -> int:
    """Tokens of ``examples[index]`` without making the example where the set can say (TokenizedSet)."""
    length = getattr(examples, "length", None)
    return length(index) if length is not None else len(examples[index])


def take(examples: Sequence[TokenizedExample], indices: Sequence[int]) -> Sequence[TokenizedExample]:
    """``examples`` at ``indices`` (a TokenizedSet stays one)."""
    subset = getattr(examples, "subset", None)
    return subset(indices) if subset is not None else [examples[i] for i in indices]


def tokenize_sft(
    example: SFTExample,
    tokenizer: Any,
    max_length: int,
    *,
    too_long: Literal["error", "skip", "truncate"] = "error",
) -> TokenizedExample | None:
    """Render ``example.messages`` with the chat template and mask everything but assistant turns.

    Longer than ``max_length`` tokens: ``error`` raises a :class:`DataError` naming the source, the
    length and the limit; ``skip`` returns None (the caller counts it); ``truncate`` keeps the first
    ``max_length`` tokens.
    """
    if too_long not in TOO_LONG_CHOICES:
        raise ValueError(f"too_long must be one of {TOO_LONG_CHOICES}, got {too_long!r}")
    messages = example.messages
    special_ids = special_token_ids(tokenizer)
    input_ids = _encode(tokenizer, _render(tokenizer, messages, False, example.source))
    loss_mask = [0] * len(input_ids)

    for turn, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _encode(tokenizer, _render(tokenizer, messages[:turn], True, example.source))
        if turn == len(messages) - 1:
            through = input_ids
        else:
            through = _encode(tokenizer, _render(tokenizer, messages[: turn + 1], False, example.source))
            _require_prefix(through, input_ids, turn, example.source, "the whole conversation")
        _require_prefix(before, through, turn, example.source, f"messages[:{turn + 1}]")
        end = len(through)
        specials_in_turn = [j for j in range(len(before), len(through)) if through[j] in special_ids]
        if specials_in_turn:
            end = specials_in_turn[-1] + 1
        for position in range(len(before), end):
            loss_mask[position] = 1

    if len(input_ids) > max_length:
        if too_long == "skip":
            return None
        if too_long == "error":
            raise too_long_error(example.source, len(input_ids), max_length)
        input_ids, loss_mask = input_ids[:max_length], loss_mask[:max_length]
    return TokenizedExample(input_ids=input_ids, loss_mask=loss_mask, source=example.source)


def too_long_error(source: str, length: int, max_length: int) -> DataError:
    """The error for a conversation of ``length`` tokens, more than ``max_length`` (``too_long="error"``)."""
    file, row = parse_source(source)
    return DataError(
        file,
        f"{length} tokens after the chat template, longer than max_length {max_length} "
        "(set data.too_long to 'skip' or 'truncate', or raise data.max_length)",
        row=row,
        field="messages",
        reason="longer than max_length",
    )


def tokenize_prompt(messages: list[dict[str, str]], tokenizer: Any) -> list[int]:
    """Token ids of a prompt with the generation prompt added (``... <|im_start|>assistant\\n``), for
    rollouts and evaluation."""
    return _encode(tokenizer, _render(tokenizer, messages, True, "prompt"))


def tokenize_expert(
    prompt_messages: list[dict[str, str]],
    expert_text: str,
    tokenizer: Any,
    *,
    source: str = "expert trajectory",
) -> list[int]:
    """Token ids of an expert trajectory as the assistant's reply to ``prompt_messages`` (LUFFY /
    SRFT / UPT train on it beside the rollouts): exactly the tokens :func:`tokenize_sft` masks for
    that turn, the content through its end-of-turn token (``<|im_end|>``) and not the template text
    after it, so that ``tokenize_prompt(prompt_messages) + tokenize_expert(...)`` is a prefix of the
    whole conversation's tokens. No length limit: the caller checks the response length.

    A template whose masked tokens for the turn do not start right after the prompt's tokens, or are
    not one contiguous run, is a :class:`ChatTemplateError` naming ``source``.
    """
    prompt_ids = tokenize_prompt(prompt_messages, tokenizer)
    example = SFTExample(
        messages=[*prompt_messages, {"role": "assistant", "content": expert_text}], reference_answer=None, source=source
    )
    tokenized = tokenize_sft(example, tokenizer, max_length=sys.maxsize)
    assert tokenized is not None  # no limit, nothing is skipped
    ids, mask = tokenized.input_ids, tokenized.loss_mask
    start = len(prompt_ids)
    if ids[:start] != prompt_ids:
        raise ChatTemplateError(
            f"{source}: the chat template renders the prompt differently when the expert's turn follows it "
            "(the prompt's tokens are not a prefix of the conversation's), so the expert trajectory cannot "
            "be tokenized as a response to that prompt"
        )
    positions = [j for j in range(start, len(ids)) if mask[j]]
    if not positions or positions[0] != start or positions != list(range(start, positions[-1] + 1)):
        first = positions[0] if positions else None
        raise ChatTemplateError(
            f"{source}: the chat template's assistant tokens for the expert trajectory are not one run right "
            f"after the prompt's {start} tokens (masked positions start at {first}, {len(positions)} masked), so "
            "it cannot be tokenized as a response to that prompt; use a template that writes the assistant's "
            "content straight after the generation prompt"
        )
    return ids[start : positions[-1] + 1]


def special_token_ids(tokenizer: Any) -> set[int]:
    """Ids of all special tokens, including added ones such as ``<|im_start|>`` that are neither BOS,
    EOS nor PAD (``all_special_ids`` alone misses those)."""
    ids = set(tokenizer.all_special_ids)
    ids.update(token_id for token_id, token in tokenizer.added_tokens_decoder.items() if token.special)
    return ids


def _render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool, source: str) -> str:
    if getattr(tokenizer, "chat_template", None) is None:
        raise ChatTemplateError(
            f"{source}: the tokenizer has no chat template; use a chat/instruct tokenizer or set "
            "tokenizer.chat_template (a Jinja template)"
        )
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # Jinja raises its own TemplateError / exceptions from inside the template
        raise ChatTemplateError(f"{source}: the chat template failed on {len(messages)} messages: {e}") from e
    return text


def _encode(tokenizer: Any, text: str) -> list[int]:
    # The template already wrote any BOS it wants: the tokenizer must add nothing of its own.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _require_prefix(prefix: list[int], tokens: list[int], turn: int, source: str, longer: str) -> None:
    if tokens[: len(prefix)] != prefix:
        mismatch = next((j for j, (a, b) in enumerate(zip(prefix, tokens)) if a != b), min(len(prefix), len(tokens)))
        raise ChatTemplateError(
            f"{source}: the chat template is not prefix-stable at assistant turn messages[{turn}]: the tokens "
            f"rendered before it are not a prefix of the tokens of {longer} (first difference at token "
            f"{mismatch}), so the assistant-only loss mask cannot be found. Use a template that renders "
            "earlier turns the same way whatever follows them (no stripping of past reasoning, no "
            "generation prompt that the rendered turn does not contain)"
        )
