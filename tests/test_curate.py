"""Curation: decontamination against benchmark problems (planted copies, overlaps, near-misses) and
difficulty labels from win rates (hand-computed fixture; end to end on an embedded set)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from npu_retu.cli import main
from npu_retu.data import curate, synthetic
from npu_retu.data.readers import read_rows
from npu_retu.eval.answers import sample_answers
from npu_retu.reward import make_reward

FIXTURES = Path(__file__).parent / "fixtures" / "curation"
EVALS = [str(FIXTURES / name) for name in ("gsm8k.jsonl", "aime24.jsonl", "minerva_math.jsonl")]
GSM8K = [json.loads(line)["question"] for line in (FIXTURES / "gsm8k.jsonl").read_text().splitlines()]
AIME_SHORT = "Find the remainder when $2^{100}$ is divided by 7."  # 9 words: no 13-gram


def sft(text: str) -> dict:
    return {"messages": [
        {"role": "user", "content": text, "info": {"source": "test", "reference_answer": "1"}},
        {"role": "assistant", "content": "Thinking. \\boxed{1}", "info": {"source": "test", "reference_answer": "1"}},
    ]}


def planted_rows() -> tuple[list[dict], dict[int, tuple[str, int, str]]]:
    """Synthetic SFT rows with benchmark items planted; returns the rows and, for each planted index
    that must go, (eval set, eval row, match kind)."""
    rng = random.Random(0)
    rows = [synthetic.sft_row(p, rng) for p in synthetic.generate_problems(30, "uniform", 0)]
    words = GSM8K[1].split()
    near = GSM8K[2].split()
    planted = {
        3: (sft(GSM8K[0]), ("gsm8k", 1, "exact")),  # a copy (JSONL rows are 1-based lines)
        8: (sft("Warm-up first. " + " ".join(words[2:15]) + " and then stop."), ("gsm8k", 2, "13-gram")),
        12: (sft("Zebra " + " ".join(near[:12]) + " zebra quokka."), None),  # 12 shared words: stays
        17: (sft(AIME_SHORT.upper().replace(".", "!")), ("aime24", 1, "exact")),  # short: exact match after normalising
        21: (sft("Please " + AIME_SHORT), None),  # short problem inside a longer one: no 13-gram, not exact
    }
    expected = {}
    for index, (row, outcome) in planted.items():
        rows.insert(index, row)
        if outcome is not None:
            expected[index] = outcome
    return rows, expected


def test_normalize_words():
    assert curate.normalize_words("Find $x^2$, if x=3.") == ["find", "x", "2", "if", "x", "3"]
    assert curate.normalize_words("ＡＢ  don’t_stop") == ["ab", "don", "t", "stop"]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_decontaminate_removes_planted_items(tmp_path, suffix):
    rows, expected = planted_rows()
    train = tmp_path / f"train{suffix}"
    synthetic.write_rows(train, rows)
    out, report_path = tmp_path / f"clean{suffix}", tmp_path / "report.json"

    report = curate.decontaminate([str(train)], EVALS, out, report=report_path)

    first = 1 if suffix == ".jsonl" else 0  # JSONL rows are line numbers, Parquet rows indices
    removed = {entry["row"] - first: entry for entry in report.removed}
    assert sorted(removed) == sorted(expected)
    for index, (eval_set, eval_row, kind) in expected.items():
        entry = removed[index]
        assert (entry["file"], entry["eval_set"], entry["eval_row"], entry["match"]) == (str(train), eval_set, eval_row, kind)
        assert entry["eval_file"] == str(FIXTURES / f"{eval_set}.jsonl")
    assert removed[8]["shared"] == " ".join(curate.normalize_words(" ".join(GSM8K[1].split()[2:15])))
    assert removed[3]["shared"] == "exact match"
    kept = [record for _, record in read_rows(out)]
    input_rows = [record for _, record in read_rows(train)]
    assert kept == [r for i, r in enumerate(input_rows) if i not in expected]
    data = json.loads(report_path.read_text())
    assert data["removed_by_eval_set"] == {"gsm8k": 2, "aime24": 1, "minerva_math": 0}
    assert (data["rows_read"], data["rows_kept"], data["rows_removed"]) == (35, 32, 3)
    assert data["eval_sets"]["gsm8k"]["problems"] == 3
    assert "2 removed" not in report.summary() and "3 removed" in report.summary()


def test_decontaminate_rl_rows_and_ngram_option(tmp_path):
    rows = [synthetic.rl_row(p) for p in synthetic.generate_problems(5, "easy", 1)]
    rows.append({"prompt": GSM8K[2], "answer": "14"})
    rows.append({"question": " ".join(GSM8K[0].split()[:8]), "answer": "6"})  # 8 shared words
    train = tmp_path / "rl.jsonl"
    synthetic.write_jsonl(train, rows)
    report = curate.decontaminate([str(train)], [f"bench={EVALS[0]}"], tmp_path / "a.jsonl")
    assert [(e["row"], e["eval_set"], e["match"]) for e in report.removed] == [(6, "bench", "exact")]
    report = curate.decontaminate([str(train)], [EVALS[0]], tmp_path / "b.jsonl", ngram=8)
    assert [(e["row"], e["match"]) for e in report.removed] == [(6, "exact"), (7, "8-gram")]


def test_decontaminate_cli_refuses_to_overwrite_an_input(tmp_path, capsys):
    train = tmp_path / "train.jsonl"
    synthetic.write_jsonl(train, [sft(GSM8K[0]), sft("something else entirely")])
    before = train.read_bytes()
    for outputs in (["--out", str(train)], ["--out", str(tmp_path / "o.jsonl"), "--report", str(train)]):
        assert main(["data", "decontaminate", "--train", str(train), "--eval", *EVALS, *outputs]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "refusing to overwrite" in err and str(train) in err
    assert train.read_bytes() == before
    assert main(["data", "decontaminate", "--train", str(train), "--eval", EVALS[0], "--out", str(tmp_path / "o.txt")]) == 2
    assert ".jsonl or .parquet" in capsys.readouterr().err
    assert main(["data", "decontaminate", "--train", str(train), "--eval", *EVALS, "--out", str(tmp_path / "o.jsonl")]) == 0
    assert "1 removed, 1 kept" in capsys.readouterr().out


def test_decontaminate_bad_row_is_one_line_naming_file_row_field(tmp_path, capsys):
    train = tmp_path / "train.jsonl"
    bad = sft("fine")
    bad["messages"][0]["content"] = None
    synthetic.write_jsonl(train, [sft("fine too"), bad])
    assert main(["data", "decontaminate", "--train", str(train), "--eval", *EVALS, "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert f"{train}: row 2, field 'messages[0].content'" in err
    assert not (tmp_path / "o.jsonl").exists() and not list(tmp_path.glob(".tmp-*"))


def test_decontaminate_against_the_shared_benchmarks(tmp_path, benchmarks_dir):
    files = sorted(str(f) for f in benchmarks_dir.glob("*.jsonl"))
    gsm8k = json.loads((benchmarks_dir / "gsm8k.jsonl").open().readline())["question"]
    aime = json.loads((benchmarks_dir / "aime24.jsonl").open().readline())["problem"]
    train = tmp_path / "train.jsonl"
    synthetic.write_jsonl(train, [sft("an unrelated problem"), sft(gsm8k), sft("Recall: " + aime + " Answer in a box.")])
    report = curate.decontaminate([str(train)], files, tmp_path / "clean.jsonl")
    assert [(e["row"], e["eval_set"]) for e in report.removed] == [(2, "gsm8k"), (3, "aime24")]
    assert report.eval_sets["gsm8k"]["problems"] > 1000


# --------------------------------------------------------------------------------------------
# difficulty


def test_difficulty_labels_on_the_hand_fixture(tmp_path, capsys):
    out = tmp_path / "labelled.jsonl"
    problems, answers = FIXTURES / "difficulty_problems.jsonl", FIXTURES / "difficulty_answers.jsonl"
    assert main(["data", "difficulty", "--in", str(problems), "--answers", str(answers), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    labelled = [record for _, record in read_rows(out)]
    # by hand: 2+3 4/4 correct; 7*8 1/4; 12*12-4 3/4
    assert [(r["win_rate"], r["difficulty"]) for r in labelled] == [(1.0, "easy"), (0.25, "hard"), (0.75, "medium")]
    originals = [record for _, record in read_rows(problems)]
    assert [{k: v for k, v in r.items() if k not in ("win_rate", "difficulty")} for r in labelled] == originals
    assert "easy 1, medium 1, hard 1" in printed and "1 answers were for problems not in the input" in printed
    assert "1 ops 0.62, 2 ops 0.75" in printed

    # one model only (the paper labels by the 1.5B model), other thresholds, a parquet output
    out = tmp_path / "small.parquet"
    with make_reward("math_verify", num_workers=1) as reward:
        report = curate.label_difficulty(str(problems), answers, out, thresholds=(0.0, 0.5), models=["small"], reward=reward)
    assert [(r["win_rate"], r["difficulty"]) for _, r in read_rows(out)] == [(1.0, "easy"), (0.0, "hard"), (0.5, "easy")]
    assert report.models == ["small"]


def test_difficulty_bad_inputs_are_one_line_errors(tmp_path, capsys):
    problems = FIXTURES / "difficulty_problems.jsonl"
    answers = tmp_path / "answers.jsonl"
    answers.write_text('{"problem": "What is 2 + 3?", "model": "m", "response": "5"}\n{"problem": "What is 2 + 3?", "model": "m"}\n')
    out = str(tmp_path / "o.jsonl")
    assert main(["data", "difficulty", "--in", str(problems), "--answers", str(answers), "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{answers}: row 2, field 'response': missing" in err
    answers.write_text('{"problem": "What is 2 + 3?", "model": "m", "response": "5"}\n')
    assert main(["data", "difficulty", "--in", str(problems), "--answers", str(answers), "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{problems}: row 2: no answers for this problem" in err
    assert main(["data", "difficulty", "--in", str(problems), "--answers", str(answers), "--out", out, "--thresholds", "1,0.5"]) == 2
    assert "0 <= a < b <= 1" in capsys.readouterr().err
    assert main(["data", "difficulty", "--in", str(problems), "--answers", str(answers), "--out", str(problems)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def test_embedded_set_labelled_end_to_end(tmp_path):
    """A few embedded problems, 2 answers each from the (quick) embedded base, scored and labelled."""
    from npu_retu.models import embedded

    rows = [record for _, record in read_rows(embedded.resolve("embedded:rl-uniform-20"))][:3]
    problems = tmp_path / "problems.jsonl"
    synthetic.write_jsonl(problems, rows)
    answers = tmp_path / "answers.jsonl"
    assert sample_answers(str(problems), ["embedded:base"], answers, k=2, max_new_tokens=48) == 6
    answer_rows = [record for _, record in read_rows(answers)]
    assert {r["model"] for r in answer_rows} == {"embedded:base"}
    assert [r["problem"] for r in answer_rows] == [p for r in rows for p in [r["prompt"][0]["content"]] * 2]
    with make_reward("math_verify", num_workers=1) as reward:
        report = curate.label_difficulty(str(problems), answers, tmp_path / "labelled.jsonl", reward=reward)
    labelled = [record for _, record in read_rows(tmp_path / "labelled.jsonl")]
    assert all(r["win_rate"] in (0.0, 0.5, 1.0) for r in labelled)
    assert all(r["difficulty"] == curate.difficulty_label(r["win_rate"]) for r in labelled)
    assert report.rows == 3 and report.answers_scored == 6 and report.mean_win_rate_by_steps


def test_eval_entries_may_name_their_set_and_a_path_may_hold_an_equals_sign(tmp_path):
    """``NAME=FILE`` names the set (a benchmark name picks its loader); ``/dir/a=b/gsm8k.jsonl`` is a path."""
    folder = tmp_path / "a=b"
    folder.mkdir()
    (folder / "gsm8k.jsonl").write_text((FIXTURES / "gsm8k.jsonl").read_text())
    by_path = curate.load_eval_problems(str(folder / "gsm8k.jsonl"))
    named = curate.load_eval_problems(f"mine={folder / 'gsm8k.jsonl'}")
    assert len(by_path) == len(named) == len(GSM8K)
    assert {p.eval_set for p in by_path} == {"gsm8k"} and {p.eval_set for p in named} == {"mine"}
    assert by_path[0].words == tuple(curate.normalize_words(GSM8K[0]))  # the question, through the GSM8K loader
