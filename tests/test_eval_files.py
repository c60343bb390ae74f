"""eval.files: ``NAME=FILE`` entries read a math benchmark in its original format through its loader
(GSM8K's gold = the number after ``####``), plain paths read RL rows; an RL run's evaluation points
score against those golds."""

from __future__ import annotations

from pathlib import Path

import pytest

from npu_retu.config import load_config
from npu_retu.data.schemas import load_eval_files, split_eval_entry
from npu_retu.errors import UserError
from test_rl_trainer import DigitReward, rl_overrides

BENCH = Path(__file__).parent / "fixtures" / "data" / "benchmarks"
RL_ROWS = Path(__file__).parent / "fixtures" / "data" / "rl_plain.jsonl"


def test_entries_name_a_benchmark_or_are_plain_paths():
    assert split_eval_entry("gsm8k=/data/test.jsonl") == ("gsm8k", "/data/test.jsonl")
    assert split_eval_entry("Minerva=/data/m.jsonl") == ("minerva_math", "/data/m.jsonl")  # alias, any case
    assert split_eval_entry("/data/a=b.jsonl") == (None, "/data/a=b.jsonl")  # a path with '=' stays a path
    assert split_eval_entry("embedded:rl-test") == (None, "embedded:rl-test")
    with pytest.raises(UserError, match=r"^eval.files: 'gsm9k=x.jsonl' names no benchmark 'gsm9k'; use NAME=FILE with NAME one of gsm8k, "):
        split_eval_entry("gsm9k=x.jsonl")


def test_gsm8k_through_its_loader_has_the_final_number_as_gold():
    examples = load_eval_files([f"gsm8k={BENCH / 'gsm8k.jsonl'}"], str)
    assert [ex.ground_truth for ex in examples[:2]] == [["12"], ["2125"]]  # "#### 2,125" -> 2125
    assert examples[0].prompt[-1]["content"] == "Tom has 3 boxes of 4 apples. How many apples?"
    assert all(ex.data_source == "gsm8k" for ex in examples)
    # the same file as plain RL rows takes the whole worked solution as the answer: the bug this fixes
    as_rl = load_eval_files([str(BENCH / "gsm8k.jsonl")], str)
    assert "####" in as_rl[0].ground_truth[0]


def test_benchmark_and_rl_entries_mix_in_order():
    examples = load_eval_files([f"aime24={BENCH / 'aime24.jsonl'}", str(RL_ROWS)], str)
    n_aime = len(load_eval_files([f"aime24={BENCH / 'aime24.jsonl'}"], str))
    n_rl = len(load_eval_files([str(RL_ROWS)], str))
    assert len(examples) == n_aime + n_rl and n_aime > 0 and n_rl > 0
    assert {ex.data_source for ex in examples[:n_aime]} == {"aime24"}


class RecordingReward(DigitReward):
    """DigitReward that keeps every ground truth it was asked to score against."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def score(self, items):
        self.seen.extend(tuple(gts) for _, gts in items)
        return super().score(items)


def test_an_rl_runs_evaluation_scores_gsm8k_against_the_final_number(tmp_path):
    """Two benchmarks in eval.files: every GSM8K problem is scored against its final number, and the
    evaluation point holds each benchmark's avg@n (recomputed here from the saved per-problem scores)
    and their macro average, logged against compute as eval/<benchmark>/avg_at_n."""
    import json

    from npu_retu.trainer.rl import train_rl

    files = [f"gsm8k={BENCH / 'gsm8k.jsonl'}", f"aime24={BENCH / 'aime24.jsonl'}"]
    gold = [tuple(ex.ground_truth) for ex in load_eval_files(files[:1], str)]
    n_gsm8k, n_aime = len(gold), len(load_eval_files(files[1:], str))
    cfg = load_config(None, rl_overrides(tmp_path, "bench-eval", **{
        "eval.files": f"[{','.join(files)}]", "rl.eval_at_start": "true", "rl.max_steps": 1,
        "eval.n": 2, "eval.max_new_tokens": 8}))
    reward = RecordingReward()
    result = train_rl(cfg, quiet=True, reward=reward)
    assert result.evals and result.evals[0]["step"] == 0
    eval_gts = [gts for gts in reward.seen if gts in gold]
    assert sorted(set(eval_gts)) == sorted(set(gold))  # every problem was scored against its final number
    assert len(eval_gts) == 2 * len(gold)  # eval.n samples each
    assert not any("####" in g for gts in reward.seen for g in gts)

    point = json.loads((result.run_dir / "eval" / "step-000000.json").read_text())
    scores = point["scores"]
    assert len(scores) == n_gsm8k + n_aime
    by_hand = {"gsm8k": scores[:n_gsm8k], "aime24": scores[n_gsm8k:]}
    for name, rows in by_hand.items():
        mean = sum(sum(r) / len(r) for r in rows) / len(rows)
        assert point["benchmarks"][name]["avg_at_n"] == pytest.approx(mean, abs=1e-12)
        assert point["benchmarks"][name]["num_problems"] == len(rows)
    macro = (point["benchmarks"]["gsm8k"]["avg_at_n"] + point["benchmarks"]["aime24"]["avg_at_n"]) / 2
    assert point["macro_avg_at_n"] == pytest.approx(macro, abs=1e-12)
    row = next(json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
               if json.loads(line)["step"] == 0)
    assert row["eval/gsm8k/avg_at_n"] == point["benchmarks"]["gsm8k"]["avg_at_n"]
    assert row["eval/macro_avg_at_n"] == point["macro_avg_at_n"]


def test_per_benchmark_by_hand():
    from npu_retu.eval.metrics import per_benchmark

    out = per_benchmark([[1, 0], [1, 1], [0, 0]], ["a", "b", "b"])
    assert out["benchmarks"]["a"]["avg_at_n"] == 0.5 and out["benchmarks"]["b"]["avg_at_n"] == 0.5
    assert out["benchmarks"]["b"]["num_problems"] == 2
    assert out["macro_avg_at_n"] == 0.5
    out = per_benchmark([[1, 1], [0, 0], [0, 0], [0, 0]], ["a", "b", "b", None])
    assert out["macro_avg_at_n"] == pytest.approx((1.0 + 0.0 + 0.0) / 3)  # unweighted over a, b, other
    assert set(out["benchmarks"]) == {"a", "b", "other"}
