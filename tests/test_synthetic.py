"""The synthetic task: problems, expert trajectories, row formats, answers, files (no torch)."""

from __future__ import annotations

import json
import random
import re

import pytest

from npu_retu.data import synthetic
from npu_retu.data.synthetic import (
    DIFFICULTY_STEPS,
    Problem,
    answer_of,
    expert_trajectory,
    generate_problems,
    pretrain_text,
    rl_row,
    sft_row,
    write_jsonl,
    write_parquet,
)
from npu_retu.errors import UserError

# --------------------------------------------------------------------------------------------
# an independent reading of the problem text: the tests recompute every answer from the words


_OP_WORDS = re.compile(r"\b(add|subtract|multiply by) (\d)\b")


def parse_problem_text(text: str) -> tuple[int, list[tuple[str, int]]]:
    start = int(re.search(r"\d", text).group(0))  # every template states the start first
    names = {"add": "add", "subtract": "sub", "multiply by": "mul"}
    ops = [(names[m.group(1).lower()], int(m.group(2))) for m in _OP_WORDS.finditer(text.lower())]
    return start, ops


def recompute(start: int, ops: list[tuple[str, int]]) -> int:
    value = start
    for name, a in ops:
        value = {"add": value + a, "sub": value - a, "mul": value * a}[name]
        value = ((value % 10) + 10) % 10
    return value


# --------------------------------------------------------------------------------------------
# problems


def test_generation_is_deterministic_by_seed_and_changes_with_it():
    a = generate_problems(200, "uniform", seed=7)
    b = generate_problems(200, "uniform", seed=7)
    c = generate_problems(200, "uniform", seed=8)
    assert a == b
    assert [p.key for p in a] != [p.key for p in c]


def test_a_smaller_set_is_a_prefix_of_a_larger_one():
    small = generate_problems(50, "hard", seed=3)
    large = generate_problems(120, "hard", seed=3)
    assert large[:50] == small


@pytest.mark.parametrize("difficulty", sorted(DIFFICULTY_STEPS))
def test_problems_are_distinct_in_range_and_answered_correctly(difficulty):
    lo, hi = DIFFICULTY_STEPS[difficulty]
    problems = generate_problems(400, difficulty, seed=1)
    assert len({p.key for p in problems}) == 400
    assert {p.steps for p in problems} == set(range(lo, hi + 1))  # 400 draws reach every step count
    for p in problems:
        assert p.steps == len(p.ops)
        assert 0 <= p.start <= 9
        assert all(1 <= a <= 9 and (name != "mul" or 2 <= a <= 3) for name, a in p.ops)
        start, ops = parse_problem_text(p.text)
        assert (start, tuple(ops)) == p.key, p.text
        assert recompute(start, ops) == p.answer, p.text


def test_difficulty_table_orders_easy_uniform_hard():
    (e_lo, e_hi), (u_lo, u_hi), (h_lo, h_hi) = (DIFFICULTY_STEPS[d] for d in ("easy", "uniform", "hard"))
    assert set(DIFFICULTY_STEPS) == {"easy", "uniform", "hard"}
    assert e_lo == u_lo == 1 and e_hi < h_lo and h_hi == u_hi  # uniform spans easy and hard


def test_excluded_problems_never_come_back():
    held_out = generate_problems(300, "easy", seed=11)
    train = generate_problems(3000, "easy", seed=12, exclude=frozenset(p.key for p in held_out))
    assert not {p.key for p in held_out} & {p.key for p in train}


def test_a_full_step_count_drops_out_and_asking_for_too_many_is_a_user_error(monkeypatch):
    # one step: 10 starts x 20 operations (add 1-9, subtract 1-9, multiply by 2-3) = 200 problems
    monkeypatch.setitem(DIFFICULTY_STEPS, "one", (1, 1))
    assert synthetic.space_size(1) == 200
    everything = generate_problems(200, "one", seed=0)
    assert len({p.key for p in everything}) == 200
    exclude = frozenset(p.key for p in everything[:10])
    assert len(generate_problems(190, "one", seed=1, exclude=exclude)) == 190
    with pytest.raises(UserError, match=r"cannot draw 191 distinct 'one' problems .*only 190 exist"):
        generate_problems(191, "one", seed=1, exclude=exclude)
    # a set larger than twice the 1-step space uses up 1 step and leans on 2 steps, still distinct
    monkeypatch.setitem(DIFFICULTY_STEPS, "one-two", (1, 2))
    mixed = generate_problems(3000, "one-two", seed=2)
    counts = {k: sum(p.steps == k for p in mixed) for k in (1, 2)}
    assert counts == {1: 200, 2: 2800} and len({p.key for p in mixed}) == 3000


def test_unknown_difficulty_names_the_choices():
    with pytest.raises(UserError, match="'medium'.*easy, uniform, hard"):
        generate_problems(5, "medium", seed=0)


# --------------------------------------------------------------------------------------------
# trajectories


_EQUATION = re.compile(r"(\d) ([+×-]) (\d) = (-?\d+)")
_MOD_MENTION = re.compile(r"\(?\bmod(?:ulo)? 10\)?")


def _check_step_line(line: str, value: int, op: tuple[str, int]) -> int:
    """Check a step line's equation against (value, op); return the reduced value it states."""
    name, a = op
    symbol = {"add": "+", "sub": "-", "mul": "×"}[name]
    raw = {"add": value + a, "sub": value - a, "mul": value * a}[name]
    m = _EQUATION.search(line)
    assert m is not None, line
    assert m.groups() == (str(value), symbol, str(a), str(raw)), line
    # the reduced value is the last number after the equation, "modulo 10" mentions aside
    after = _MOD_MENTION.sub("", line[m.end() :])
    reduced = int(re.findall(r"-?\d+", after)[-1])
    assert reduced == raw % 10, line
    return reduced


def test_expert_trajectory_has_r1_shape_and_correct_arithmetic():
    rng = random.Random(0)
    for p in generate_problems(300, "uniform", seed=5):
        text = expert_trajectory(p, rng)
        assert text.startswith("<think>\n")
        assert text.endswith(f"\n</think>\n\nThe result is \\boxed{{{p.answer}}}.")
        lines = text[len("<think>\n") : text.index("\n</think>")].split("\n")
        assert lines[0] == synthetic.restatement(p)  # the problem read back first
        step_lines = [line for line in lines if _EQUATION.search(line)]
        assert len(step_lines) == p.steps, text
        value = p.start
        for line, op in zip(step_lines, p.ops):
            value = _check_step_line(line, value, op)
        assert value == p.answer
        assert str(p.answer) in lines[-1]  # the closing line states the result
        assert answer_of(text) == str(p.answer)


def test_negative_differences_are_spelled_out_and_reduced():
    p = Problem(start=2, ops=(("sub", 4),), answer=8, steps=1, text="Start with 2. Subtract 4.")
    for seed in range(20):
        text = expert_trajectory(p, random.Random(seed))
        (line,) = [line for line in text.split("\n") if _EQUATION.search(line)]
        assert "2 - 4 = -2" in line
        assert _check_step_line(line, 2, ("sub", 4)) == 8


def test_practice_text_is_the_fact_table():
    facts = synthetic.all_facts()
    assert len(facts) == 200 and len(set(facts)) == 200
    assert synthetic.fact_line(4, ("add", 8)) == "4 + 8 = 12, keep 2."
    assert synthetic.fact_line(2, ("sub", 7)) == "2 - 7 = -5, keep 5."
    assert synthetic.fact_line(7, ("mul", 3)) == "7 × 3 = 21, keep 1."
    text = synthetic.practice_text(random.Random(0), lines=30)
    lines = text.strip().split("\n")
    assert len(lines) == 30
    for line in lines:
        m = _EQUATION.match(line)
        value, sym, a = int(m.group(1)), m.group(2), int(m.group(3))
        name = {"+": "add", "-": "sub", "×": "mul"}[sym]
        assert line == synthetic.fact_line(value, (name, a))


def test_phrasing_varies_but_is_deterministic_by_rng():
    p = generate_problems(1, "hard", seed=0)[0]
    assert expert_trajectory(p, random.Random(1)) == expert_trajectory(p, random.Random(1))
    assert len({expert_trajectory(p, random.Random(s)) for s in range(20)}) > 10


# --------------------------------------------------------------------------------------------
# rows


def test_sft_row_is_in_the_am_deepseek_shape():
    p = Problem(start=7, ops=(("add", 5), ("mul", 3), ("sub", 4)), answer=2, steps=3, text="T")
    row = sft_row(p, random.Random(0))
    assert list(row) == ["messages"]
    user, assistant = row["messages"]
    assert user == {
        "role": "user",
        "content": "T",
        "info": {"source": "npu-retu-synthetic", "reference_answer": "2", "difficulty": 3},
    }
    assert assistant["role"] == "assistant" and assistant["info"] is None
    assert assistant["content"].endswith("</think>\n\nThe result is \\boxed{2}.")
    assert "7 + 5 = 12" in assistant["content"] and "2 × 3 = 6" in assistant["content"]


def test_rl_row_is_in_the_skywork_shape_with_json_encoded_ground_truth():
    p = Problem(start=7, ops=(("add", 5), ("mul", 3), ("sub", 4)), answer=2, steps=3, text="T")
    row = rl_row(p)
    assert row == {
        "data_source": "npu-retu-synthetic",
        "prompt": [{"role": "user", "content": "T"}],
        "reward_model": {"style": "rule", "ground_truth": '["2"]'},
        "extra_info": {"steps": 3},
    }
    assert json.loads(row["reward_model"]["ground_truth"]) == ["2"]


def test_restatement_reads_the_problem_back():
    p = Problem(start=7, ops=(("add", 5), ("mul", 3)), answer=6, steps=2, text="T")
    assert synthetic.restatement(p) == "In short: start 7; (1) add 5; (2) multiply by 3."


def test_pretrain_text_has_bare_answers_and_a_chat_share():
    problems = generate_problems(400, "uniform", seed=9)
    rendered = []

    def fake_chat(messages):
        rendered.append(messages)
        return "CHAT:" + "|".join(m["content"] for m in messages)

    rng = random.Random(0)
    docs = [pretrain_text(p, rng, fake_chat) for p in problems]
    chat_docs = [d for d in docs if d.startswith("CHAT:")]
    assert 0.2 < len(chat_docs) / len(docs) < 0.4  # ~30 %
    for p, d in zip(problems, docs):
        if d.startswith("CHAT:"):
            assert d == f"CHAT:{p.text}|The result is \\boxed{{{p.answer}}}."
        else:
            assert d == f"{p.text}\n{synthetic.restatement(p)}\nAnswer: \\boxed{{{p.answer}}}\n"
        assert "<think>" not in d and " = " not in d  # no worked steps before SFT
    assert all([m["role"] for m in msgs] == ["user", "assistant"] for msgs in rendered)
    # without a chat renderer every document is plain
    assert all(not pretrain_text(p, rng).startswith("CHAT:") for p in problems[:50])


# --------------------------------------------------------------------------------------------
# answers


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>\n\\boxed{3} maybe\n</think>\n\nThe result is \\boxed{7}.", "7"),
        ("<think>\nsee \\boxed{3}\n</think>\n\nno box here", None),
        ("The result is \\boxed{4}.", "4"),
        ("first \\boxed{1} then \\boxed{ 9 }", "9"),
        ("<think>\nstill thinking \\boxed{5}", None),  # reasoning cut off: no answer
        ("<think>a</think> x <think>b</think> \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{12", None),
        ("", None),
    ],
)
def test_answer_of(text, expected):
    assert answer_of(text) == expected


def test_is_correct_is_exact_match():
    assert synthetic.is_correct("The result is \\boxed{2}.", 2)
    assert not synthetic.is_correct("The result is \\boxed{12}.", 2)
    assert not synthetic.is_correct("The result is 2.", "2")


# --------------------------------------------------------------------------------------------
# files


def _rows(seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [sft_row(p, rng) for p in generate_problems(30, "uniform", seed=seed)]


def test_jsonl_is_byte_identical_for_a_seed_and_leaves_no_temp_files(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", _rows(4))
    b = write_jsonl(tmp_path / "sub" / "b.jsonl", _rows(4))
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != write_jsonl(tmp_path / "c.jsonl", _rows(5)).read_bytes()
    lines = a.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 30 and json.loads(lines[0]) == _rows(4)[0]
    assert "×" in a.read_text(encoding="utf-8") or "≡" in a.read_text(encoding="utf-8")  # UTF-8, not \\u escapes
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.jsonl", "c.jsonl", "sub"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"x": 1}])

    def broken():
        yield {"x": 2}
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_jsonl(path, broken())
    assert path.read_text() == '{"x": 1}\n'
    assert [x.name for x in tmp_path.iterdir()] == ["a.jsonl"]


def test_parquet_round_trip_keeps_nested_rows(tmp_path):
    import pyarrow.parquet as pq

    sft = _rows(6)
    rl = [rl_row(p) for p in generate_problems(20, "hard", seed=6)]
    assert pq.read_table(write_parquet(tmp_path / "sft.parquet", sft)).to_pylist() == sft
    assert pq.read_table(write_parquet(tmp_path / "rl.parquet", rl)).to_pylist() == rl


# --------------------------------------------------------------------------------------------
# the CLI's synth action


def test_cli_synth_writes_rows_without_held_out_problems(tmp_path, capsys):
    from npu_retu.models import embedded
    from npu_retu.cli import main

    out = tmp_path / "rl.jsonl"
    assert main(["data", "synth", "--kind", "rl", "--difficulty", "easy", "--n", "40", "--seed", "3", "--out", str(out)]) == 0
    assert "wrote 40 rl rows" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 40
    held_out = embedded.held_out_keys()
    for row in rows:
        start, ops = parse_problem_text(row["prompt"][0]["content"])
        assert (start, tuple(ops)) not in held_out
        assert json.loads(row["reward_model"]["ground_truth"]) == [str(recompute(start, ops))]
        assert 1 <= row["extra_info"]["steps"] <= 3

    sft = tmp_path / "sft.parquet"
    assert main(["data", "synth", "--kind", "sft", "--n", "5", "--out", str(sft)]) == 0
    import pyarrow.parquet as pq

    assert len(pq.read_table(sft).to_pylist()) == 5


def test_cli_synth_rejects_a_bad_output_suffix(tmp_path, capsys):
    from npu_retu.cli import main

    assert main(["data", "synth", "--kind", "rl", "--n", "3", "--out", str(tmp_path / "x.csv")]) == 2
    assert "use a .jsonl or .parquet file" in capsys.readouterr().err


def test_the_project_loaders_read_both_formats(tmp_path):
    """The synthetic files go through the same loaders as real AM-DeepSeek / Skywork files."""
    from npu_retu.data import schemas

    problems = generate_problems(12, "uniform", seed=21)
    rng = random.Random(0)
    sft = [sft_row(p, rng) for p in problems]
    rl = [rl_row(p) for p in problems]
    for suffix in ("jsonl", "parquet"):
        sft_path = synthetic.write_rows(tmp_path / f"sft.{suffix}", sft)
        rl_path = synthetic.write_rows(tmp_path / f"rl.{suffix}", rl)
        sft_examples = schemas.load_sft([sft_path])
        rl_examples = schemas.load_rl([rl_path])
        assert [e.reference_answer for e in sft_examples] == [str(p.answer) for p in problems]
        assert [e.messages[1]["content"] for e in sft_examples] == [r["messages"][1]["content"] for r in sft]
        assert [e.ground_truth for e in rl_examples] == [[str(p.answer)] for p in problems]
        assert [e.prompt[0]["content"] for e in rl_examples] == [p.text for p in problems]


def test_wording_of_names_each_problems_template():
    problems = synthetic.generate_problems(200, "uniform", seed=5)
    counts = [0] * synthetic.WORDINGS
    for p in problems:
        w = synthetic.wording_of(p)
        assert p.text == synthetic.problem_text(p.start, p.ops, w)  # that template renders this very text
        counts[w] += 1
    assert min(counts) > 25  # each of the 4 wordings is drawn (expected 50 each)
    with pytest.raises(ValueError, match="not a synthetic problem text"):
        synthetic.wording_of(synthetic.Problem(start=1, ops=(), answer=1, steps=0, text="What is 1?"))


def test_reworded_keeps_the_problem_and_changes_only_its_wording():
    p = synthetic.generate_problems(1, "uniform", seed=5)[0]
    other = (synthetic.wording_of(p) + 1) % synthetic.WORDINGS
    q = synthetic.reworded(p, other)
    assert synthetic.wording_of(q) == other and q.text != p.text
    assert (q.key, q.answer, q.steps) == (p.key, p.answer, p.steps)
    assert synthetic.reworded(q, synthetic.wording_of(p)) == p
