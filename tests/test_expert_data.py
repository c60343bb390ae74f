"""Expert trajectories for the synchronized SFT-RL algorithms (LUFFY / SRFT / UPT): SFT-format rows
read as RL data, expert keys on RL rows, joining SFT files to RL prompts, the missing-expert error,
tokenizing an expert as a response, and the embedded mix sets."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from npu_retu.data import BadRowCounter, DataError, RLExample, SFTExample, attach_experts, load_rl, require_experts
from npu_retu.data.schemas import rl_example_from_row
from npu_retu.data import synthetic
from npu_retu.errors import UserError

AM_TRAJECTORY = "<think>\n2 + 3 = 5\n</think>\n\nThe result is \\boxed{5}."
REQUIRE_MESSAGE = (
    "no expert trajectory for this prompt; rl.algorithm=luffy trains on one per prompt; give SFT-format rows "
    "(AM-DeepSeek messages with info.reference_answer) as rl.train_files, or join an SFT file by prompt text "
    "with rl.expert_files"
)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# SFT-format rows as RL data


def test_am_deepseek_rows_become_prompt_reference_answer_and_expert(tmp_path):
    file = write_jsonl(
        tmp_path / "am.jsonl",
        [
            {  # the AM-DeepSeek shape: the answer on the user turn, info null on the assistant turn
                "messages": [
                    {"role": "user", "content": "What is 2 + 3?", "info": {"source": "MATH", "reference_answer": "5"}},
                    {"role": "assistant", "content": AM_TRAJECTORY, "info": None},
                ]
            },
            {  # a system turn first with info null: the first user turn's info carries the answer
                "messages": [
                    {"role": "system", "content": "Think first.", "info": None},
                    {"role": "user", "content": "What is 1 + 1?", "info": {"reference_answer": 2}},
                    {"role": "assistant", "content": "It is \\boxed{2}.", "info": None},
                ],
                "data_source": "mine",
            },
        ],
    )
    first, second = load_rl(file)
    assert first == RLExample(
        prompt=[{"role": "user", "content": "What is 2 + 3?"}],
        ground_truth=["5"],
        source=f"{file}:1",
        data_source="MATH",  # AM-DeepSeek's info.source when the row has no data_source
        experts=(AM_TRAJECTORY,),
    )
    assert second == RLExample(
        prompt=[{"role": "system", "content": "Think first."}, {"role": "user", "content": "What is 1 + 1?"}],
        ground_truth=["2"],
        source=f"{file}:2",
        data_source="mine",
        experts=("It is \\boxed{2}.",),
    )


def test_sharegpt_and_prompt_response_rows_take_a_top_level_reference_answer(tmp_path):
    sharegpt = {
        "system": "Be brief.",
        "conversations": [
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello."},
            {"from": "human", "value": "What is 3 * 3?"},
            {"from": "gpt", "value": "\\boxed{9}"},
        ],
        "reference_answer": "9",
    }
    prompt_response = {"prompt": "What is 10 - 4?", "response": "So \\boxed{6}.", "reference_answer": 6.0}
    a = rl_example_from_row(sharegpt, "data/chat.json", 0)
    assert a.prompt == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "What is 3 * 3?"},
    ]
    assert (a.ground_truth, a.experts, a.source, a.data_source) == (["9"], ("\\boxed{9}",), "data/chat.json:0", None)
    b = rl_example_from_row(prompt_response, "data/pr.jsonl", 4)
    assert b == RLExample(
        prompt=[{"role": "user", "content": "What is 10 - 4?"}], ground_truth=["6"], source="data/pr.jsonl:4",
        experts=("So \\boxed{6}.",),
    )


def test_rl_rows_read_as_before_and_carry_expert_or_experts():
    skywork = {"prompt": [{"role": "user", "content": "Q?"}], "reward_model": {"ground_truth": '["3", "-3"]'}}
    assert rl_example_from_row(skywork, "rl.jsonl", 1) == RLExample(
        prompt=[{"role": "user", "content": "Q?"}], ground_truth=["3", "-3"], source="rl.jsonl:1", experts=()
    )
    one = rl_example_from_row({"question": "Q?", "answer": 3, "expert": "E"}, "rl.jsonl", 2)
    assert (one.ground_truth, one.experts) == (["3"], ("E",))
    many = rl_example_from_row({"problem": "Q?", "answer": "3", "experts": ["E1", "E2"]}, "rl.jsonl", 3)
    assert many.experts == ("E1", "E2")
    null = rl_example_from_row({"problem": "Q?", "answer": "3", "experts": None}, "rl.jsonl", 4)
    assert null.experts == ()
    # a prompt key and a ground truth make an RL row even beside SFT keys: read exactly as before
    both = rl_example_from_row({"prompt": "Q?", "response": "R", "answer": "3"}, "rl.jsonl", 5)
    assert (both.prompt, both.ground_truth, both.experts) == ([{"role": "user", "content": "Q?"}], ["3"], ())


# --------------------------------------------------------------------------------------------
# errors name file, row and field


def test_sft_row_without_reference_answer_is_an_error_naming_the_am_deepseek_field(tmp_path):
    file = write_jsonl(
        tmp_path / "am.jsonl",
        [
            {"messages": [{"role": "user", "content": "Q1", "info": {"reference_answer": "1"}}, {"role": "assistant", "content": "A1"}]},
            {"messages": [{"role": "user", "content": "Q2", "info": None}, {"role": "assistant", "content": "A2", "info": None}]},
        ],
    )
    with pytest.raises(DataError) as raised:
        load_rl(file)
    assert str(raised.value) == (
        f"{file}: row 2, field 'messages[0].info.reference_answer': no reference answer; an RL prompt needs an "
        "answer for the reward (AM-DeepSeek messages[0].info.reference_answer, or a top-level 'reference_answer')"
    )
    # the other shapes have no info to name: the top-level field
    with pytest.raises(DataError, match=r"^pr\.jsonl: row 3, field 'reference_answer': no reference answer"):
        rl_example_from_row({"prompt": "Q", "response": "R"}, "pr.jsonl", 3)
    counter = BadRowCounter()
    assert [e.source for e in load_rl(file, skip_bad_rows=True, counter=counter)] == [f"{file}:1"]
    assert counter.summary() == f"skipped 1 bad row of 2 in {file}: 1 missing field 'reference_answer' (row 2)"


def test_wrong_expert_types_and_a_non_user_prompt_end_are_errors_naming_the_field():
    with pytest.raises(DataError) as raised:
        rl_example_from_row({"problem": "Q", "answer": "1", "experts": "E"}, "rl.jsonl", 7)
    assert str(raised.value) == "rl.jsonl: row 7, field 'experts': expected a list of strings (expert trajectories), got a string"
    with pytest.raises(DataError) as raised:
        rl_example_from_row({"problem": "Q", "answer": "1", "experts": ["E", 5]}, "rl.jsonl", 8)
    assert str(raised.value) == "rl.jsonl: row 8, field 'experts[1]': expected a string, got a number"
    with pytest.raises(DataError) as raised:
        rl_example_from_row({"problem": "Q", "answer": "1", "expert": ["E"]}, "rl.jsonl", 9)
    assert str(raised.value) == "rl.jsonl: row 9, field 'expert': expected a string, got a list"
    with pytest.raises(DataError, match=r"^rl\.jsonl: row 10, field 'experts': give 'expert' .* or 'experts'"):
        rl_example_from_row({"problem": "Q", "answer": "1", "expert": "E", "experts": ["E"]}, "rl.jsonl", 10)
    two_assistants = {
        "messages": [
            {"role": "user", "content": "Q", "info": {"reference_answer": "1"}},
            {"role": "assistant", "content": "A"},
            {"role": "assistant", "content": "B"},
        ]
    }
    with pytest.raises(DataError) as raised:
        rl_example_from_row(two_assistants, "am.jsonl", 11)
    assert str(raised.value).startswith(
        "am.jsonl: row 11, field 'messages[1].role': the last message before the final assistant turn must be from the user"
    )


def rl(source: str, question: str, *experts: str) -> RLExample:
    return RLExample(prompt=[{"role": "user", "content": question}], ground_truth=["1"], source=source, experts=experts)


def test_require_experts_error_text_and_the_skip_and_count_path():
    examples = [rl("data/rl.jsonl:1", "Q1", "E1"), rl("data/rl.jsonl:2", "Q2"), rl("data/rl.jsonl:3", "Q3", "E3")]
    with pytest.raises(DataError) as raised:
        require_experts(examples, 1, algorithm="luffy", skip_bad_rows=False, counter=None)
    assert str(raised.value) == f"data/rl.jsonl: row 2, field 'experts': {REQUIRE_MESSAGE}"
    assert "\n" not in str(raised.value)
    assert (raised.value.file, raised.value.row, raised.value.field) == ("data/rl.jsonl", 2, "experts")

    counter = BadRowCounter()
    for _ in range(3):
        counter.add_row("data/rl.jsonl")
    kept = require_experts(examples, 1, algorithm="luffy", skip_bad_rows=True, counter=counter)
    assert [e.source for e in kept] == ["data/rl.jsonl:1", "data/rl.jsonl:3"]
    assert counter.skipped == 1
    assert (counter.skipped_rows[0].row, counter.skipped_rows[0].field, counter.skipped_rows[0].message) == (
        2, "experts", REQUIRE_MESSAGE,
    )
    assert counter.summary() == "skipped 1 bad row of 3 in data/rl.jsonl: 1 no expert trajectory (row 2)"

    # two per prompt: the one-expert rows are short too; nothing left is an error of its own
    with pytest.raises(DataError, match=r"^data/rl\.jsonl: row 1, field 'experts': only 1 expert trajectory for this prompt; "
                                        r"rl\.algorithm=srft trains on 2 per prompt"):
        require_experts(examples, 2, algorithm="srft", skip_bad_rows=False, counter=None)
    with pytest.raises(DataError, match=r"^data/rl\.jsonl: no RL prompt has the 2 expert trajectories that rl\.algorithm=srft needs \(3 skipped\)"):
        require_experts(examples, 2, algorithm="srft", skip_bad_rows=True, counter=BadRowCounter())
    assert require_experts(examples, 0, algorithm="grpo", skip_bad_rows=False, counter=None) == examples


# --------------------------------------------------------------------------------------------
# joining SFT files to RL prompts


def test_attach_experts_joins_by_last_user_message_in_file_order(tmp_path, caplog):
    def am(question: str, answer: str) -> dict:
        return {"messages": [{"role": "user", "content": question, "info": None}, {"role": "assistant", "content": answer}]}

    first = write_jsonl(tmp_path / "a.jsonl", [am("  What is 2 + 2?\n", "four, first"), am("Unrelated?", "x")])
    second = write_jsonl(tmp_path / "b.jsonl", [am("What is 2 + 2?", "four, second")])
    examples = [
        RLExample(prompt=[{"role": "system", "content": "S"}, {"role": "user", "content": "What is 2 + 2?"}],
                  ground_truth=["4"], source="rl.jsonl:1", experts=("own",)),
        rl("rl.jsonl:2", "What is 3 + 3?"),
    ]
    with caplog.at_level(logging.INFO, logger="npu_retu.data.schemas"):
        joined = attach_experts(examples, [first, second])
    assert joined[0].experts == ("own", "four, first", "four, second")
    assert joined[0].prompt == examples[0].prompt and joined[0].ground_truth == ["4"] and joined[0].source == "rl.jsonl:1"
    assert joined[1] == examples[1]  # unmatched: unchanged
    assert examples[0].experts == ("own",)  # a new list; the inputs stay as they were
    assert sum(1 for e in joined if e.experts) == 1  # how a caller counts the prompts that have experts
    assert f"1 of 2 RL prompts matched at least one of the 3 SFT rows of {first}, {second}" in caplog.text
    assert "(1 SFT rows matched no prompt)" in caplog.text


def test_attach_experts_bad_sft_rows_error_or_count(tmp_path):
    file = tmp_path / "sft.jsonl"
    file.write_text(
        json.dumps({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}) + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "Q"}]}) + "\n",
        encoding="utf-8",
    )
    with pytest.raises(DataError, match=r"row 2, field 'messages\[0\]\.role': the last message must be from the assistant"):
        attach_experts([rl("rl.jsonl:1", "Q")], file)
    counter = BadRowCounter()
    joined = attach_experts([rl("rl.jsonl:1", "Q")], file, skip_bad_rows=True, counter=counter)
    assert joined[0].experts == ("A",) and counter.skipped == 1


# --------------------------------------------------------------------------------------------
# tokenizing an expert trajectory as the response to its prompt


@pytest.fixture(scope="module")
def embedded_tokenizer():
    from transformers import AutoTokenizer

    from npu_retu.models.embedded import resolve

    return AutoTokenizer.from_pretrained(resolve("embedded:tokenizer"))


@pytest.mark.parametrize(
    "prompt",
    [
        [{"role": "user", "content": "Start with 3. (1) add 4. What is the result?"}],
        [
            {"role": "system", "content": "Be exact."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Start with 3. (1) add 4. What is the result?"},
        ],
    ],
    ids=["one-turn", "multi-turn"],
)
def test_tokenize_expert_is_the_masked_assistant_turn_after_the_prompt(embedded_tokenizer, prompt):
    from npu_retu.data.tokenize import tokenize_expert, tokenize_prompt, tokenize_sft

    tokenizer = embedded_tokenizer
    expert = "<think>\nStart: 3.\n(1) 3 + 4 = 7\n</think>\n\nThe result is \\boxed{7}."
    ids = tokenize_expert(prompt, expert, tokenizer)
    whole = tokenize_sft(SFTExample(prompt + [{"role": "assistant", "content": expert}], None, "x:1"), tokenizer, 10_000)
    prompt_ids = tokenize_prompt(prompt, tokenizer)
    last_turn = [t for j, (t, m) in enumerate(zip(whole.input_ids, whole.loss_mask)) if m and j >= len(prompt_ids)]
    assert ids == last_turn
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.decode(ids) == expert + "<|im_end|>"
    assert whole.input_ids[: len(prompt_ids) + len(ids)] == prompt_ids + ids
    assert len(whole.input_ids) == len(prompt_ids) + len(ids) + 1  # the template's trailing newline
    assert ids[:2] == [tokenizer.convert_tokens_to_ids("<think>"), tokenizer.convert_tokens_to_ids("Ċ")]


def test_tokenize_expert_rejects_a_template_that_rewrites_the_prompt(embedded_tokenizer):
    from npu_retu.data import ChatTemplateError
    from npu_retu.data.tokenize import tokenize_expert

    class DropsThePrompt:  # a template that renders the generation prompt differently once a reply follows
        def __init__(self, inner):
            self.inner = inner
            self.chat_template = "x"

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __call__(self, *args, **kwargs):
            return self.inner(*args, **kwargs)

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            text = self.inner.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
            return text.replace("<|im_start|>assistant\n", "<|im_start|>assistant\n\n") if not add_generation_prompt else text

    with pytest.raises(ChatTemplateError, match="not prefix-stable|renders the prompt differently"):
        tokenize_expert([{"role": "user", "content": "Q"}], "A", DropsThePrompt(embedded_tokenizer), source="rl.jsonl:3")


# --------------------------------------------------------------------------------------------
# the embedded mix sets


def test_embedded_mix_set_is_the_rl_set_with_expert_trajectories():
    from npu_retu.models import embedded

    mix_path = embedded.resolve("embedded:mix-uniform-20")
    assert mix_path.name == "mix-uniform-20.jsonl"
    rows = [json.loads(line) for line in mix_path.read_text(encoding="utf-8").splitlines()]
    rl_set = load_rl(embedded.resolve("embedded:rl-uniform-20"))
    assert len(rows) == 20 and len(rl_set) == 20
    # AM-DeepSeek rows: the user turn carries the reference answer, the assistant's info is null
    assert [row["messages"][0]["content"] for row in rows] == [e.prompt[-1]["content"] for e in rl_set]
    assert [[row["messages"][0]["info"]["reference_answer"]] for row in rows] == [e.ground_truth for e in rl_set]
    assert all(row["messages"][1]["info"] is None for row in rows)

    mixed = load_rl(mix_path)  # SFT-format rows read as RL data
    assert [e.prompt for e in mixed] == [e.prompt for e in rl_set]
    assert [e.ground_truth for e in mixed] == [e.ground_truth for e in rl_set]
    assert {e.data_source for e in mixed} == {synthetic.SOURCE}
    for example in mixed:
        (trajectory,) = example.experts
        assert trajectory.startswith("<think>\n")
        assert trajectory.endswith(f"\\boxed{{{example.ground_truth[0]}}}.")
        assert synthetic.is_correct(trajectory, example.ground_truth[0])

    # the trajectories come from the mix set's own stream, not the sft sets': a prefix stays a prefix
    first = [row["messages"][1]["content"] for row in rows]
    assert [json.loads(line)["messages"][1]["content"] for line in embedded.resolve("embedded:mix-uniform-5").read_text().splitlines()] == first[:5]
    held_out = embedded.held_out_keys()
    assert not {(p.start, p.ops) for p in embedded.rl_set_problems("uniform", 20)} & held_out
    with pytest.raises(UserError, match=r"unknown embedded name 'embedded:mix-medium-1k'.*embedded:mix-\{easy\|uniform\|hard\}-\{N\}"):
        embedded.resolve("embedded:mix-medium-1k")
