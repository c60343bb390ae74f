"""Loaders: every accepted row shape, Parquet, the math benchmarks, and bad input with exact messages."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest

from npu_retu.data import (
    BadRowCounter,
    DataError,
    RLExample,
    last_boxed,
    load_benchmark,
    load_rl,
    load_sft,
    normalize_ground_truth,
    read_rows,
)
from npu_retu.errors import UserError

FIXTURES = Path(__file__).parent / "fixtures" / "data"
SHARED_BENCHMARKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "benchmarks"

GOOD_SFT_LINE = '{"prompt": "a", "response": "b"}'  # 33 bytes with its newline


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """Work in tmp_path so messages name files as a user types them: data/train.jsonl."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    return tmp_path / "data"


def write_lines(path: Path, lines: list[str | bytes]) -> str:
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode("utf-8")) + b"\n" for line in lines))
    return f"data/{path.name}"


# --------------------------------------------------------------------------------------------
# SFT shapes


def test_am_deepseek_shape_keeps_content_and_takes_reference_answer():
    examples = load_sft(FIXTURES / "sft_am_deepseek.jsonl")
    assert len(examples) == 3
    first, second, third = examples
    assert first.messages == [
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "<think>\nAdd 2 and 3.\n</think>\n\n<answer>The answer is \\boxed{5}.</answer>"},
    ]
    assert first.reference_answer == "5"
    assert first.source == f"{FIXTURES / 'sft_am_deepseek.jsonl'}:1"
    # info null on every message: no reference, content kept as is (think block, then the answer text)
    assert second.reference_answer is None
    assert second.messages[1]["content"] == "<think>Subtract 4, divide by 2.</think>So x = 3."
    # a system turn first: the reference comes from the first user turn's info
    assert [m["role"] for m in third.messages] == ["system", "user", "assistant"]
    assert third.reference_answer == "\\frac{1}{2}"
    assert all(set(m) == {"role", "content"} for e in examples for m in e.messages)  # `info` dropped


def test_sharegpt_json_array_maps_roles_and_system():
    examples = load_sft(FIXTURES / "sft_sharegpt.json")
    assert [e.source.rsplit(":", 1)[1] for e in examples] == ["0", "1"]  # row index in a JSON array
    assert examples[0].messages == [
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "7 is prime."},
    ]
    assert examples[1].messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2 * 4?"},
        {"role": "assistant", "content": "8"},
        {"role": "user", "content": "And 3 * 3?"},
        {"role": "assistant", "content": "9"},
    ]


def test_prompt_response_pair_becomes_two_turns():
    examples = load_sft([FIXTURES / "sft_prompt_response.jsonl"])
    assert examples[1].messages == [
        {"role": "user", "content": "Spell 'cat' backwards."},
        {"role": "assistant", "content": "tac"},
    ]
    assert examples[1].reference_answer is None


def test_several_files_load_in_order():
    examples = load_sft([FIXTURES / "sft_prompt_response.jsonl", FIXTURES / "sft_sharegpt.json"])
    assert [e.messages[-1]["content"] for e in examples] == ["10 - 7 = 3.", "tac", "7 is prime.", "9"]


# --------------------------------------------------------------------------------------------
# RL shapes and ground truth


def test_skywork_or1_json_encoded_ground_truth():
    examples = load_rl(FIXTURES / "rl_skywork_or1.jsonl")
    assert examples[0] == RLExample(
        prompt=[{"role": "user", "content": "What is 1 + 2?"}],
        ground_truth=["3"],
        source=f"{FIXTURES / 'rl_skywork_or1.jsonl'}:1",
        data_source="train-math-numinamath1.5_amc_aime",
    )
    assert examples[1].ground_truth == ["2", "-2"]


def test_plain_rl_rows_every_prompt_and_answer_key():
    examples = load_rl(FIXTURES / "rl_plain.jsonl")
    assert [e.ground_truth for e in examples] == [["27"], ["2.5"], ["1", "-1"], ["[0, 1]"], ["6"]]
    assert examples[0].prompt == [{"role": "user", "content": "How far apart are the cities?"}]  # question
    assert examples[1].prompt == [{"role": "user", "content": "What is 5 / 2?"}]  # problem
    assert [m["role"] for m in examples[3].prompt] == ["system", "user"]  # chat-message prompt
    assert examples[3].data_source == "made-up"


@pytest.mark.parametrize(
    "value, expected",
    [
        (27.0, ["27"]),
        (2.5, ["2.5"]),
        (-0.5, ["-0.5"]),
        (6, ["6"]),
        (" 7 ", ["7"]),
        ('["3"]', ["3"]),
        ('["2", "-2"]', ["2", "-2"]),
        ("[0, 1]", ["[0, 1]"]),  # an interval, not a list
        ("[0, 1)", ["[0, 1)"]),
        ("[2,5]", ["[2,5]"]),  # a JSON list of numbers is math, not a list of answers
        ("[[1,2],[3,4]]", ["[[1,2],[3,4]]"]),  # a matrix
        ("[3]", ["[3]"]),  # math-verify reads it as 3
        ("[-1, \\infty)", ["[-1, \\infty)"]),  # not JSON, and does not open like a list of strings
        (' [ "4" , "5" ] ', ["4", "5"]),
        ([1, 2.0, "x"], ["1", "2", "x"]),
        ("\\frac{1}{2}", ["\\frac{1}{2}"]),
    ],
)
def test_normalize_ground_truth(value, expected):
    assert normalize_ground_truth(value) == expected


@pytest.mark.parametrize(
    "value, message",
    [
        (None, "expected a string or a number, got null"),
        ([], "expected at least one answer, got an empty list"),
        ("[]", "expected at least one answer, got an empty JSON list"),
        ("  ", "expected a non-empty answer, got an empty string"),
        (True, "expected a string or a number, got a boolean"),
        (math.nan, "expected a finite number, got nan"),
        ([[1]], "expected a string or a number, got a list"),
        ('["8"', "expected a JSON-encoded list of answers such as '[\"3\"]', got '[\"8\"': Expecting ',' delimiter (column 5)"),
        ("['8']", "expected a JSON-encoded list of answers such as '[\"3\"]', got \"['8']\": Expecting value (column 2)"),
        ('["8", 9]', "expected a JSON-encoded list of strings, got a number at index 1 of '[\"8\", 9]'"),
        ("[null]", "expected a JSON-encoded list of strings, got null at index 0 of '[null]'"),
        ('["a", {"b": 1}]', "expected a JSON-encoded list of strings, got an object at index 1 of '[\"a\", {\"b\": 1}]'"),
    ],
)
def test_normalize_ground_truth_rejects(value, message):
    with pytest.raises(DataError) as caught:
        normalize_ground_truth(value)
    assert caught.value.message == message


# --------------------------------------------------------------------------------------------
# Parquet


def test_parquet_round_trip_matches_jsonl(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    for name, load in (("sft_am_deepseek", load_sft), ("rl_skywork_or1", load_rl)):
        rows = [json.loads(line) for line in (FIXTURES / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
        parquet_path = tmp_path / f"{name}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), parquet_path)
        from_jsonl, from_parquet = load(FIXTURES / f"{name}.jsonl"), load(parquet_path)
        assert [e.source for e in from_parquet] == [f"{parquet_path}:{i}" for i in range(len(rows))]  # 0-based
        strip = lambda examples: [{**vars(e), "source": None} for e in examples]  # noqa: E731
        assert strip(from_parquet) == strip(from_jsonl)
    # nested columns come back as lists of dicts, a null struct as None
    (row_index, record), *_ = read_rows(tmp_path / "sft_am_deepseek.parquet")
    assert row_index == 0 and record["messages"][0]["info"]["reference_answer"] == "5"
    assert list(read_rows(tmp_path / "sft_am_deepseek.parquet"))[1][1]["messages"][1]["info"] is None


def test_parquet_that_is_not_parquet(data_dir):
    (data_dir / "train.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(DataError) as caught:
        load_sft("data/train.parquet")
    assert str(caught.value).startswith("data/train.parquet: not a readable Parquet file: ")


# --------------------------------------------------------------------------------------------
# bad input: exact messages naming file, row and field


def test_wrong_type_names_row_and_field(data_dir):
    good = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    bad = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]})
    file = write_lines(data_dir / "train.jsonl", [good] * 11 + [bad])
    with pytest.raises(DataError) as caught:
        load_sft(file)
    assert str(caught.value) == "data/train.jsonl: row 12, field 'messages[1].content': expected a string, got null"
    assert isinstance(caught.value, UserError)
    assert (caught.value.file, caught.value.row, caught.value.field) == ("data/train.jsonl", 12, "messages[1].content")


@pytest.mark.parametrize(
    "line, expected",
    [
        ('{"messages": [}', "row 2: malformed JSON: Expecting value (column 15)"),
        ('[1, 2]', "row 2: expected a JSON object, got a list"),
        (
            '{"msgs": []}',
            "row 2, field 'messages': missing field 'messages' (or ShareGPT 'conversations', or 'prompt' + 'response')",
        ),
        ('{"messages": "hi"}', "row 2, field 'messages': expected a list of messages, got a string"),
        (
            '{"messages": [{"role": "bot", "content": "x"}]}',
            "row 2, field 'messages[0].role': expected one of 'system', 'user', 'assistant', got 'bot'",
        ),
        ('{"messages": [{"role": "user"}]}', "row 2, field 'messages[0].content': missing"),
        (
            '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]}',
            "row 2, field 'messages[1].content': expected non-empty text, got an empty string",
        ),
        (
            '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "q2"}]}',
            "row 2, field 'messages[2].role': the last message must be from the assistant, got 'user'",
        ),
        (
            '{"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]}',
            "row 2, field 'messages': expected at least one user message, found none",
        ),
        (
            '{"messages": [{"role": "user", "content": "q", "info": "x"}, {"role": "assistant", "content": "a"}]}',
            "row 2, field 'messages[0].info': expected an object or null, got a string",
        ),
        (
            '{"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]}',
            "row 2, field 'conversations[1].from': expected one of 'human', 'user', 'gpt', 'assistant', 'system', got 'bot'",
        ),
        ('{"prompt": "q", "response": 5}', "row 2, field 'response': expected a string, got a number"),
    ],
)
def test_bad_sft_rows(data_dir, line, expected):
    file = write_lines(data_dir / "train.jsonl", [GOOD_SFT_LINE, line])
    with pytest.raises(DataError) as caught:
        load_sft(file)
    assert str(caught.value) == f"data/train.jsonl: {expected}"


@pytest.mark.parametrize(
    "line, expected",
    [
        ('{"answer": "3"}', "row 1, field 'prompt': missing field 'prompt' (or 'question', or 'problem')"),
        (
            '{"prompt": "q"}',
            "row 1, field 'ground_truth': missing field 'ground_truth' (or 'answer', 'reward_model.ground_truth', 'final_answer')",
        ),
        ('{"prompt": "q", "answer": []}', "row 1, field 'answer': expected at least one answer, got an empty list"),
        (
            '{"prompt": [{"role": "user", "content": "q"}], "reward_model": {"ground_truth": "[]"}}',
            "row 1, field 'reward_model.ground_truth': expected at least one answer, got an empty JSON list",
        ),
        ('{"prompt": "q", "reward_model": "3"}', "row 1, field 'reward_model': expected an object, got a string"),
        ('{"question": 12, "answer": "3"}', "row 1, field 'question': expected a string or a list of messages, got a number"),
        ('{"problem": "", "answer": "3"}', "row 1, field 'problem': expected non-empty text, got an empty string"),
        ('{"prompt": "q", "final_answer": [null]}', "row 1, field 'final_answer[0]': expected a string or a number, got null"),
        (
            '{"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "answer": "1"}',
            "row 1, field 'prompt[1].role': the last prompt message must be from the user, got 'assistant'",
        ),
        ('{"prompt": "q", "answer": "1", "data_source": 3}', "row 1, field 'data_source': expected a string or null, got a number"),
    ],
)
def test_bad_rl_rows(data_dir, line, expected):
    file = write_lines(data_dir / "rl.jsonl", [line])
    with pytest.raises(DataError) as caught:
        load_rl(file)
    assert str(caught.value) == f"data/rl.jsonl: {expected}"


def test_non_utf8_bytes_name_line_and_byte_offset(data_dir):
    file = write_lines(data_dir / "train.jsonl", [GOOD_SFT_LINE, b'{"prompt": "\xff\xfe", "response": "b"}'])
    with pytest.raises(DataError) as caught:
        load_sft(file)
    # line 1 is 33 bytes, the bad byte is the 13th of line 2 (index 12): offset 33 + 12 = 45
    assert str(caught.value) == "data/train.jsonl: row 2: not valid UTF-8: byte 0xff at byte offset 45 of the file (byte 12 of the line)"


def test_blank_lines_and_byte_order_mark_are_not_rows(data_dir):
    file = write_lines(data_dir / "train.jsonl", ["\ufeff" + GOOD_SFT_LINE, "", "   ", GOOD_SFT_LINE])
    assert [row for row, _ in read_rows(file)] == [1, 4]


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("empty.jsonl", b"", "data/empty.jsonl: empty file: no rows"),
        ("blank.jsonl", b"\n  \n", "data/blank.jsonl: empty file: no rows"),
        ("empty.json", b"[]", "data/empty.json: empty file: no rows"),
        ("train.csv", b"a,b\n", "data/train.csv: unknown file type '.csv': expected one of .jsonl, .json, .parquet, .arrow"),
        ("train.json", b'{"messages": []}', "data/train.json: expected a JSON list of objects at the top level, got an object"),
        ("broken.json", b'[{"prompt": "a",\n "response": }]', "data/broken.json: malformed JSON: Expecting value (line 2, column 14)"),
        ("items.json", b'[{"prompt": "a", "response": "b"}, 7]', "data/items.json: row 1: expected a JSON object, got a number"),
    ],
)
def test_bad_files(data_dir, name, content, expected):
    (data_dir / name).write_bytes(content)
    with pytest.raises(DataError) as caught:
        load_sft(f"data/{name}")
    assert str(caught.value) == expected


def test_missing_file(data_dir):
    with pytest.raises(DataError) as caught:
        load_rl(["data/nope.jsonl"])
    assert str(caught.value) == "data/nope.jsonl: file not found"


# --------------------------------------------------------------------------------------------
# skip_bad_rows


def bad_mix(data_dir: Path) -> str:
    """10 rows: 6 good, 2 malformed JSON, 1 missing 'messages', 1 not UTF-8."""
    return write_lines(
        data_dir / "train.jsonl",
        [
            GOOD_SFT_LINE,
            '{"prompt": ',
            GOOD_SFT_LINE,
            '{"text": "no conversation"}',
            GOOD_SFT_LINE,
            b'{"prompt": "\xff", "response": "b"}',
            GOOD_SFT_LINE,
            "{oops}",
            GOOD_SFT_LINE,
            GOOD_SFT_LINE,
        ],
    )


def test_skip_bad_rows_counts_by_reason(data_dir):
    counter = BadRowCounter()
    examples = load_sft(bad_mix(data_dir), skip_bad_rows=True, counter=counter)
    assert [e.source for e in examples] == [f"data/train.jsonl:{row}" for row in (1, 3, 5, 7, 9, 10)]
    assert counter.skipped == 4
    assert counter.summary() == (
        "skipped 4 bad rows of 10 in data/train.jsonl: 2 malformed JSON (rows 2, 8), "
        "1 missing field 'messages' (row 4), 1 not valid UTF-8 (row 6)"
    )


def test_skip_bad_rows_without_counter_logs_the_summary(data_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="npu_retu.data.errors"):
        assert len(load_sft(bad_mix(data_dir), skip_bad_rows=True)) == 6
    assert [record.getMessage() for record in caplog.records] == [
        "skipped 4 bad rows of 10 in data/train.jsonl: 2 malformed JSON (rows 2, 8), "
        "1 missing field 'messages' (row 4), 1 not valid UTF-8 (row 6)"
    ]


def test_without_skip_the_first_bad_row_stops(data_dir):
    with pytest.raises(DataError) as caught:
        load_sft(bad_mix(data_dir))
    assert str(caught.value) == "data/train.jsonl: row 2: malformed JSON: Expecting value (column 12)"


def test_all_rows_bad_is_an_error_even_when_skipping(data_dir):
    file = write_lines(data_dir / "rl.jsonl", ['{"prompt": "q"}', "{"])
    with pytest.raises(DataError) as caught:
        load_rl(file, skip_bad_rows=True)
    assert str(caught.value) == (
        "data/rl.jsonl: no usable rows (skipped 2 bad rows of 2 in data/rl.jsonl: "
        "1 missing field 'ground_truth' (row 1), 1 malformed JSON (row 2))"
    )


def test_data_error_formats():
    assert str(DataError("a.jsonl", "boom")) == "a.jsonl: boom"
    assert str(DataError("a.jsonl", "boom", row=3)) == "a.jsonl: row 3: boom"
    assert str(DataError("a.jsonl", "boom", row=3, field="x")) == "a.jsonl: row 3, field 'x': boom"
    counter = BadRowCounter()
    counter.add_row("a.jsonl")
    counter.skip("a.jsonl", "longer than max_length")
    assert counter.summary() == "skipped 1 bad row of 1 in a.jsonl: 1 longer than max_length"
    counter.add_row("a.jsonl")
    counter.skip("a.jsonl:2", "longer than max_length")  # an example's source names the file and row
    assert counter.summary() == "skipped 2 bad rows of 2 in a.jsonl: 2 longer than max_length (rows 2, and 1 more)"
    assert BadRowCounter().summary() == ""


# --------------------------------------------------------------------------------------------
# math benchmarks


def test_last_boxed():
    assert last_boxed("x = \\boxed{1} then \\boxed{\\frac{a}{b^{2}}} m") == "\\frac{a}{b^{2}}"
    assert last_boxed("so $\\fbox{204}$ minutes") == "204"
    assert last_boxed("no answer here") is None
    assert last_boxed("\\boxed{\\frac{1}{2}") is None  # unbalanced


def test_benchmark_fixtures_in_each_shape():
    golds = {
        name: [(e.prompt[0]["content"], e.ground_truth) for e in load_benchmark(FIXTURES / "benchmarks" / f"{name}.jsonl")]
        for name in ("gsm8k", "minerva_math", "olympiadbench", "aime24", "aime25", "amc23", "math500")
    }
    assert [g for _, g in golds["gsm8k"]] == [["12"], ["2125"]]  # "#### 2,125": thousands comma dropped
    assert [g for _, g in golds["minerva_math"]] == [["\\frac{3}{2}"], ["3 \\times 10^{8}"]]  # the last \boxed
    assert golds["olympiadbench"] == [
        ("Find all $x$ with $x^2=9$.", ["$3,-3$"]),
        ("A square has side 2.\n\nWhat is its area?", ["4"]),  # context + question
    ]
    assert [g for _, g in golds["aime24"]] == [["6"], ["32"]]  # a string and an int
    assert [g for _, g in golds["amc23"]] == [["27"], ["2.5"], ["9"]]  # floats
    assert [g for _, g in golds["aime25"]] == [["70"], ["8"]]  # math-ai/aime25 ('problem') and opencompass ('question') rows
    # MATH500: 'answer', else the last \boxed of 'solution'
    assert [g for _, g in golds["math500"]] == [["\\left( 3, \\frac{\\pi}{2} \\right)"], ["2"]]
    assert load_benchmark(FIXTURES / "benchmarks" / "amc23.jsonl")[0].data_source == "amc23"


def test_benchmark_bad_rows(data_dir):
    file = write_lines(data_dir / "gsm8k.jsonl", ['{"question": "q", "answer": "no marker"}'])
    with pytest.raises(DataError) as caught:
        load_benchmark(file)
    assert str(caught.value) == "data/gsm8k.jsonl: row 1, field 'answer': expected the final number after '####', found no '####'"
    file = write_lines(data_dir / "test.jsonl", ['{"problem": "q", "solution": "x = 3"}'])
    with pytest.raises(DataError) as caught:
        load_benchmark(file, "minerva")
    assert str(caught.value) == (
        "data/test.jsonl: row 1, field 'solution': expected a \\boxed{...} answer, found none (or unbalanced braces)"
    )
    with pytest.raises(DataError) as caught:
        load_benchmark(file)
    assert str(caught.value) == (
        "data/test.jsonl: unknown benchmark 'test': expected one of gsm8k, minerva_math, olympiadbench, aime24, aime25, amc23, math500"
    )


@pytest.mark.skipif(not SHARED_BENCHMARKS.is_dir(), reason=f"{SHARED_BENCHMARKS} is absent (../shared beside the checkout)")
def test_shared_benchmarks_row_counts_and_golds():
    loaded = {name: load_benchmark(SHARED_BENCHMARKS / f"{name}.jsonl") for name in ("gsm8k", "minerva_math", "olympiadbench", "aime24", "amc23")}
    assert {name: len(rows) for name, rows in loaded.items()} == {
        "gsm8k": 1319, "minerva_math": 272, "olympiadbench": 675, "aime24": 30, "amc23": 40,
    }
    gold = {name: [e.ground_truth for e in rows] for name, rows in loaded.items()}
    # gsm8k: "#### 18", "#### 3", "#### 70000"; line 147 ends "#### 2,125"
    assert gold["gsm8k"][:3] == [["18"], ["3"], ["70000"]]
    assert gold["gsm8k"][146] == ["2125"]
    assert loaded["gsm8k"][0].prompt[0]["content"].startswith("Janet\u2019s ducks lay 16 eggs per day.")
    # minerva: "...7200=\boxed{1.6} \mathrm{~cm}", "\boxed{4.5e33}", and one with nested braces
    assert gold["minerva_math"][:2] == [["1.6"], ["4.5e33"]]
    assert gold["minerva_math"][25] == ["\\frac{a M^{1 / 3}}{G M^{2 / 3}+b}"]
    assert gold["olympiadbench"][:2] == [["2"], ["$\\frac{1}{2 n+2}$"]]
    assert gold["aime24"][:3] == [["204"], ["113"], ["371"]]
    assert gold["amc23"][:4] == [["27"], ["36"], ["45"], ["3159"]]
