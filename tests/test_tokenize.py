"""Chat-template tokenization: the assistant-only loss mask, too-long rows, prompts, bad templates.

The tokenizer is tests/fixtures/data/chatml_tokenizer (byte-level BPE, Qwen-style ChatML template,
written by make_chatml_tokenizer.py): byte-level, so decoding the masked tokens gives back the exact
text they came from.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from npu_retu.data import ChatTemplateError, DataError, SFTExample, load_sft
from npu_retu.data.tokenize import special_token_ids, tokenize_prompt, tokenize_sft

FIXTURES = Path(__file__).parent / "fixtures" / "data"
SYSTEM_DEFAULT = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


@pytest.fixture
def tokenizer():
    return AutoTokenizer.from_pretrained(FIXTURES / "chatml_tokenizer")


def masked_runs(tokenizer, tokenized) -> list[str]:
    """Decode each contiguous run of loss-mask 1 tokens."""
    runs, current = [], []
    for token, keep in zip(tokenized.input_ids, tokenized.loss_mask):
        if keep:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


def example(*turns: tuple[str, str], source: str = "data/train.jsonl:7") -> SFTExample:
    return SFTExample(messages=[{"role": r, "content": c} for r, c in turns], reference_answer=None, source=source)


def test_single_turn_mask_is_exactly_the_assistant_content_and_im_end(tokenizer):
    am = load_sft(FIXTURES / "sft_am_deepseek.jsonl")[0]
    tokenized = tokenize_sft(am, tokenizer, max_length=512)
    answer = "<think>\nAdd 2 and 3.\n</think>\n\n<answer>The answer is \\boxed{5}.</answer>"
    # the whole sequence is the ChatML text, written out by hand
    assert tokenizer.decode(tokenized.input_ids) == (
        SYSTEM_DEFAULT + "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n" + answer + "<|im_end|>\n"
    )
    assert masked_runs(tokenizer, tokenized) == [answer + "<|im_end|>"]
    assert tokenized.input_ids[-1] == tokenizer.convert_tokens_to_ids("\u010a")  # trailing "\n" ...
    assert tokenized.loss_mask[-2:] == [1, 0]  # ... is template, <|im_end|> before it is the model's
    assert tokenized.source == f"{FIXTURES / 'sft_am_deepseek.jsonl'}:1"
    assert tokenized.num_loss_tokens == len(tokenizer(answer, add_special_tokens=False)["input_ids"]) + 1


def test_multi_turn_masks_every_assistant_turn_and_nothing_else(tokenizer):
    sharegpt = load_sft(FIXTURES / "sft_sharegpt.json")[1]  # system, user, assistant, user, assistant
    tokenized = tokenize_sft(sharegpt, tokenizer, max_length=512)
    assert masked_runs(tokenizer, tokenized) == ["8<|im_end|>", "9<|im_end|>"]
    unmasked = tokenizer.decode([t for t, keep in zip(tokenized.input_ids, tokenized.loss_mask) if not keep])
    assert unmasked == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2 * 4?<|im_end|>\n<|im_start|>assistant\n"
        "\n<|im_start|>user\nAnd 3 * 3?<|im_end|>\n<|im_start|>assistant\n\n"
    )


def test_mask_agrees_with_transformers_generation_tags(tokenizer):
    """Reference: the same ChatML template with {% generation %} around the assistant's part, whose
    mask transformers computes itself (return_assistant_tokens_mask)."""
    tokenizer.chat_template = (
        "{%- if messages[0]['role'] != 'system' -%}{{- '" + SYSTEM_DEFAULT.replace("\n", "\\n") + "' -}}{%- endif -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'assistant' -%}"
        "{{- '<|im_start|>assistant\\n' -}}{% generation %}{{- message['content'] + '<|im_end|>' -}}{% endgeneration %}{{- '\\n' -}}"
        "{%- else -%}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
    )
    for sft in load_sft([FIXTURES / "sft_sharegpt.json", FIXTURES / "sft_am_deepseek.jsonl"]):
        ours = tokenize_sft(sft, tokenizer, max_length=512)
        reference = tokenizer.apply_chat_template(sft.messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        assert ours.input_ids == reference["input_ids"]
        assert ours.loss_mask == reference["assistant_masks"]


def test_template_without_newline_after_end_of_turn(tokenizer):
    # Llama-3-like layout: the turn closes with a special token and nothing follows it
    tokenizer.chat_template = (
        "{%- for m in messages -%}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|endoftext|>{%- endfor -%}"
        "{%- if add_generation_prompt -%}<|im_start|>assistant\n{% endif %}"
    )
    tokenized = tokenize_sft(example(("user", "q?"), ("assistant", "It is 5.")), tokenizer, max_length=64)
    assert masked_runs(tokenizer, tokenized) == ["It is 5.<|endoftext|>"]


def test_too_long_error_skip_truncate(tokenizer):
    long = example(("user", "What is 2 + 3?"), ("assistant", "The answer is 5. " * 10))
    length = len(tokenize_sft(long, tokenizer, max_length=10_000))
    assert length > 40
    with pytest.raises(DataError) as caught:
        tokenize_sft(long, tokenizer, max_length=40)
    assert str(caught.value) == (
        f"data/train.jsonl: row 7, field 'messages': {length} tokens after the chat template, longer than "
        "max_length 40 (set data.too_long to 'skip' or 'truncate', or raise data.max_length)"
    )
    assert caught.value.reason == "longer than max_length"
    assert tokenize_sft(long, tokenizer, max_length=40, too_long="skip") is None
    full = tokenize_sft(long, tokenizer, max_length=10_000)
    cut = tokenize_sft(long, tokenizer, max_length=40, too_long="truncate")
    assert (cut.input_ids, cut.loss_mask) == (full.input_ids[:40], full.loss_mask[:40])
    with pytest.raises(ValueError, match="too_long must be one of"):
        tokenize_sft(long, tokenizer, max_length=40, too_long="drop")


def test_tokenize_prompt_adds_the_generation_prompt(tokenizer):
    ids = tokenize_prompt([{"role": "user", "content": "What is 1 + 2?"}], tokenizer)
    assert tokenizer.decode(ids) == SYSTEM_DEFAULT + "<|im_start|>user\nWhat is 1 + 2?<|im_end|>\n<|im_start|>assistant\n"
    assert ids[:1] == [tokenizer.convert_tokens_to_ids("<|im_start|>")]  # no BOS or other token added


def test_template_that_is_not_prefix_stable_is_refused(tokenizer):
    # "assistant: " + content: byte-level BPE joins the space to the answer ("Ġ5"), so the tokens of
    # the generation prompt are not a prefix of the tokens of the rendered turn
    tokenizer.chat_template = (
        "{%- for m in messages -%}<|im_start|>{{ m['role'] }}: {{ m['content'] }}<|im_end|>{%- endfor -%}"
        "{%- if add_generation_prompt -%}<|im_start|>assistant: {% endif %}"
    )
    with pytest.raises(ChatTemplateError) as caught:
        tokenize_sft(example(("user", "q?"), ("assistant", "5")), tokenizer, max_length=64)
    assert str(caught.value).startswith(
        "data/train.jsonl:7: the chat template is not prefix-stable at assistant turn messages[1]: the tokens "
        "rendered before it are not a prefix of the tokens of messages[:2] (first difference at token "
    )


def test_template_that_rewrites_earlier_turns_is_refused(tokenizer):
    # Qwen3-style: past assistant turns lose their <think> block, so turn 1 renders differently
    # once turn 3 follows it
    tokenizer.chat_template = (
        "{%- for m in messages -%}<|im_start|>{{ m['role'] }}\n"
        "{%- if m['role'] == 'assistant' and not loop.last -%}{{ m['content'].split('</think>')[-1] }}"
        "{%- else -%}{{ m['content'] }}{%- endif -%}<|im_end|>\n{% endfor %}"
        "{%- if add_generation_prompt -%}<|im_start|>assistant\n{% endif %}"
    )
    two_turns = example(("user", "a"), ("assistant", "<think>x</think>1"), ("user", "b"), ("assistant", "2"))
    with pytest.raises(ChatTemplateError, match=r"not prefix-stable at assistant turn messages\[1\].*the whole conversation"):
        tokenize_sft(two_turns, tokenizer, max_length=256)


def test_tokenizer_without_chat_template(tokenizer):
    tokenizer.chat_template = None
    with pytest.raises(ChatTemplateError, match="data/train.jsonl:7: the tokenizer has no chat template"):
        tokenize_sft(example(("user", "q"), ("assistant", "a")), tokenizer, max_length=64)


def test_special_token_ids_include_added_tokens(tokenizer):
    assert special_token_ids(tokenizer) == {
        tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
    }
