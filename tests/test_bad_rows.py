"""Bad rows, end to end on hand-written files: a broken Skywork-OR1 ground truth is an error naming
file, row and field (not a literal answer that scores every correct response 0), and a run that skips
bad rows says which rows it skipped, in its summary and in ``skipped_rows.jsonl``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from npu_retu.data import BadRowCounter, DataError, load_rl, load_sft
from npu_retu.reward import evaluate

GOOD_SFT = '{"prompt": "a", "response": "b"}'


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """Work in tmp_path so messages name files as a user types them: data/rl.jsonl."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    return tmp_path / "data"


def skywork_row(ground_truth: str) -> str:
    """A Skywork-OR1 row (the shape of its parquet files), ground truth as the dataset stores it."""
    return json.dumps({
        "data_source": "train-math-deepscaler",
        "prompt": [{"role": "user", "content": "Find x."}],
        "ability": "math",
        "reward_model": {"ground_truth": ground_truth, "style": "rule"},
    })


def write_lines(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return f"data/{path.name}"


# --------------------------------------------------------------------------------------------
# Skywork-OR1 ground truth that is a broken JSON list


@pytest.mark.parametrize(
    "ground_truth, message",
    [
        ('["8"', "expected a JSON-encoded list of answers such as '[\"3\"]', got '[\"8\"': Expecting ',' delimiter (column 5)"),
        ('["8", 9]', "expected a JSON-encoded list of strings, got a number at index 1 of '[\"8\", 9]'"),
        ("['8']", "expected a JSON-encoded list of answers such as '[\"3\"]', got \"['8']\": Expecting value (column 2)"),
        (' ["8", "9"', "expected a JSON-encoded list of answers such as '[\"3\"]', got '[\"8\", \"9\"': Expecting ',' delimiter (column 10)"),
    ],
)
def test_broken_json_list_ground_truth_names_file_row_and_field(data_dir, ground_truth, message):
    file = write_lines(data_dir / "rl.jsonl", [skywork_row('["1"]'), skywork_row(ground_truth)])
    with pytest.raises(DataError) as caught:
        load_rl(file)
    assert str(caught.value) == f"data/rl.jsonl: row 2, field 'reward_model.ground_truth': {message}"
    assert (caught.value.row, caught.value.field, caught.value.reason) == (2, "reward_model.ground_truth", "bad 'ground_truth'")


def test_math_that_starts_with_a_bracket_stays_a_literal_answer_that_scores(data_dir):
    """Skywork lists are decoded; math that starts with '[' (intervals, a matrix) stays a literal answer."""
    golds = ['["8"]', '["2", "-2"]', "[2,5]", "[0, 1)", "[-1, \\infty)", "[[1,2],[3,4]]"]
    file = write_lines(data_dir / "rl.jsonl", [skywork_row(gold) for gold in golds])
    loaded = [example.ground_truth for example in load_rl(file)]
    assert loaded == [["8"], ["2", "-2"], ["[2,5]"], ["[0, 1)"], ["[-1, \\infty)"], ["[[1,2],[3,4]]"]]
    answers = ["8", "-2", "[2, 5]", "[0,1)", "[-1,\\infty)", "[[1,2],[3,4]]"]
    results = [evaluate(f"\\boxed{{{answer}}}", gold) for answer, gold in zip(answers, loaded)]
    assert [(r.score, r.status) for r in results] == [(1.0, "ok")] * 6
    # and a wrong answer still scores 0 against a kept interval
    assert evaluate("\\boxed{[2, 6]}", ["[2,5]"]).score == 0.0


# --------------------------------------------------------------------------------------------
# skip_bad_rows: which rows, in the summary and in skipped_rows.jsonl


def test_skipped_rl_rows_are_listed_in_the_summary_and_the_file(data_dir, tmp_path):
    file = write_lines(
        data_dir / "rl.jsonl",
        [
            skywork_row('["1"]'),
            skywork_row('["8"'),  # 2: cut short
            '{"prompt": "q"',  # 3: malformed JSON
            skywork_row('["8", 9]'),  # 4: a number among the strings
            skywork_row("[2,5]"),  # an interval: kept
            '{"prompt": "q"}',  # 6: no ground truth
        ],
    )
    counter = BadRowCounter()
    examples = load_rl(file, skip_bad_rows=True, counter=counter)
    assert [(e.source, e.ground_truth) for e in examples] == [("data/rl.jsonl:1", ["1"]), ("data/rl.jsonl:5", ["[2,5]"])]
    assert counter.skipped == 4
    assert counter.summary() == (
        "skipped 4 bad rows of 6 in data/rl.jsonl: 2 bad 'ground_truth' (rows 2, 4), "
        "1 malformed JSON (row 3), 1 missing field 'ground_truth' (row 6)"
    )
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    assert counter.write(run_dir / "skipped_rows.jsonl") == run_dir / "skipped_rows.jsonl"
    lines = (run_dir / "skipped_rows.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [
        {
            "file": "data/rl.jsonl", "row": 2, "field": "reward_model.ground_truth", "reason": "bad 'ground_truth'",
            "message": "expected a JSON-encoded list of answers such as '[\"3\"]', got '[\"8\"': Expecting ',' delimiter (column 5)",
        },
        {
            "file": "data/rl.jsonl", "row": 3, "field": None, "reason": "malformed JSON",
            "message": "malformed JSON: Expecting ',' delimiter (column 15)",
        },
        {
            "file": "data/rl.jsonl", "row": 4, "field": "reward_model.ground_truth", "reason": "bad 'ground_truth'",
            "message": "expected a JSON-encoded list of strings, got a number at index 1 of '[\"8\", 9]'",
        },
        {
            "file": "data/rl.jsonl", "row": 6, "field": "ground_truth", "reason": "missing field 'ground_truth'",
            "message": "missing field 'ground_truth' (or 'answer', 'reward_model.ground_truth', 'final_answer')",
        },
    ]
    assert sorted(os.listdir(run_dir)) == ["skipped_rows.jsonl"]  # no temporary file left behind


def test_summary_shows_the_first_five_rows_of_each_reason(data_dir, tmp_path):
    """12 rows: 7 without 'messages' (rows 2-8), 1 malformed; a second file, a JSON array, 0-based."""
    jsonl = write_lines(data_dir / "train.jsonl", [GOOD_SFT] + ['{"text": "x"}'] * 7 + ["{oops}", GOOD_SFT, GOOD_SFT, GOOD_SFT])
    (data_dir / "extra.json").write_text(f'[{GOOD_SFT}, {{"prompt": "a", "response": ""}}]', encoding="utf-8")
    counter = BadRowCounter()
    examples = load_sft([jsonl, "data/extra.json"], skip_bad_rows=True, counter=counter)
    assert [e.source for e in examples] == ["data/train.jsonl:1", "data/train.jsonl:10", "data/train.jsonl:11",
                                            "data/train.jsonl:12", "data/extra.json:0"]
    counter.skip("data/train.jsonl:11", "longer than data.max_length")  # what the SFT trainer adds after tokenizing
    assert counter.summary() == (
        "skipped 9 bad rows of 12 in data/train.jsonl: 7 missing field 'messages' (rows 2, 3, 4, 5, 6, and 2 more), "
        "1 malformed JSON (row 9), 1 longer than data.max_length (row 11)\n"
        "skipped 1 bad row of 2 in data/extra.json: 1 empty 'response' (row 1)"
    )
    assert counter.summary(rows_shown=2).splitlines()[0].startswith(
        "skipped 9 bad rows of 12 in data/train.jsonl: 7 missing field 'messages' (rows 2, 3, and 5 more)"
    )
    path = counter.write(tmp_path / "skipped_rows.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [(r["file"], r["row"], r["reason"]) for r in rows] == (
        [("data/train.jsonl", row, "missing field 'messages'") for row in range(2, 9)]
        + [
            ("data/train.jsonl", 9, "malformed JSON"),
            ("data/extra.json", 1, "empty 'response'"),
            ("data/train.jsonl", 11, "longer than data.max_length"),
        ]
    )
    assert rows[-2] == {
        "file": "data/extra.json", "row": 1, "field": "response", "reason": "empty 'response'",
        "message": "expected non-empty text, got an empty string",
    }
    assert rows[-1] == {
        "file": "data/train.jsonl", "row": 11, "field": None, "reason": "longer than data.max_length",
        "message": "longer than data.max_length",
    }


def test_skip_by_source_keeps_field_and_message_and_write_replaces_atomically(tmp_path, monkeypatch):
    counter = BadRowCounter()
    counter.add_row("a.jsonl")
    counter.skip("a.jsonl:3", "prompt too long", field="prompt", message="prompt has 900 tokens, more than 512")
    assert counter.summary() == "skipped 1 bad row of 1 in a.jsonl: 1 prompt too long (row 3)"
    target = tmp_path / "skipped_rows.jsonl"
    target.write_text("old\n", encoding="utf-8")

    def crash(src, dst):  # the machine dies between writing the temporary file and renaming it
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        counter.write(target)
    assert target.read_text(encoding="utf-8") == "old\n"  # the previous file is intact
    assert sorted(os.listdir(tmp_path)) == ["skipped_rows.jsonl"]  # and the temporary file is gone
    monkeypatch.undo()
    counter.write(target)
    assert [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()] == [
        {"file": "a.jsonl", "row": 3, "field": "prompt", "reason": "prompt too long",
         "message": "prompt has 900 tokens, more than 512"},
    ]


def test_sft_run_with_skip_bad_rows_lists_the_rows_in_its_folder(tmp_path, capsys):
    """The trainer writes every skipped row to RUN/skipped_rows.jsonl and names the first ones."""
    from npu_retu.cli import main
    from npu_retu.models.embedded import resolve

    good = resolve("embedded:sft-uniform-1k").read_text(encoding="utf-8").splitlines()[:8]
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(good[:3] + ["{not json", *good[3:6], '{"messages": 3}', *good[6:]]) + "\n", encoding="utf-8")
    rc = main([
        "sft", "--config", "demo_cpu", "--skip-bad-rows", f"run.output_dir={tmp_path}", "run.name=r", "run.progress=false",
        f"data.train_files=[{train}]", "data.val_files=[]", "data.val_size=2", "sft.optim.warmup_steps=0", "sft.max_steps=1",
        "sft.global_batch_size=4",
        "sft.micro_batch_size=4", "monitor.enabled=false",
    ])
    captured = capsys.readouterr()
    out = captured.out
    assert rc == 0, captured.err
    assert "(row 4)" in out and "(row 8)" in out
    rows = [json.loads(line) for line in (tmp_path / "r" / "skipped_rows.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(r["file"], r["row"]) for r in rows] == [(str(train), 4), (str(train), 8)]
