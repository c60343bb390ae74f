"""avg@k, unbiased pass@k and their standard errors against hand values; the evaluation runner."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import pytest

from npu_retu.models import embedded
from npu_retu.data.schemas import RLExample, load_rl
from npu_retu.data.synthetic import is_correct
from npu_retu.data.tokenize import tokenize_prompt
from npu_retu.eval.metrics import (
    avg_at_k,
    avg_at_k_stderr,
    mean_pass_at_k,
    paired_difference,
    pass_at_k,
    problem_means,
)
from npu_retu.eval.runner import EvalResult, evaluate
from npu_retu.rollout import SamplingParams, Trajectory


def exact_match_reward(batch):
    return [float(any(is_correct(text, answer) for answer in answers)) for text, answers in batch]


# ------------------------------------------------------------------------------------------------
# pass@k


def test_pass_at_k_hand_values():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 4, 2) == 1.0  # n - c = 1 < k: every pair holds a correct sample
    assert pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(1, 0, 1) == 0.0


def test_pass_at_k_equals_the_binomial_formula():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
                assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12)


def test_pass_at_k_is_stable_for_large_n():
    # C(1000, 500) overflows a float; the product form does not need it
    exact = 1 - Fraction(math.comb(997, 500), math.comb(1000, 500))
    assert pass_at_k(1000, 3, 500) == pytest.approx(float(exact), rel=1e-12)


@pytest.mark.parametrize("n, c, k", [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6), (0, 0, 1)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_mean_pass_at_k_over_problems():
    correct = [[True, False, True, False], [False] * 4, [True] * 4]
    # problem 0: 1 - C(2,2)/C(4,2) = 5/6; problem 1: 0; problem 2: 1
    assert mean_pass_at_k(correct, 2) == pytest.approx((5 / 6 + 0 + 1) / 3)
    assert mean_pass_at_k(correct, 1) == pytest.approx(avg_at_k(correct))


# ------------------------------------------------------------------------------------------------
# avg@k and standard errors


SCORES = [[1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]]  # problem means 0.75, 0, 1


def test_avg_at_k_and_stderr_hand_values():
    assert problem_means(SCORES) == [0.75, 0.0, 1.0]
    assert avg_at_k(SCORES) == pytest.approx(1.75 / 3)
    # sample variance of (0.75, 0, 1) = 0.5416667 / 2; stderr = sqrt(0.2708333 / 3)
    assert avg_at_k_stderr(SCORES) == pytest.approx(math.sqrt(0.5416666666666666 / 2 / 3))
    assert avg_at_k_stderr(SCORES) == pytest.approx(0.3004626, abs=1e-7)


def test_avg_at_k_allows_a_different_number_of_samples_per_problem():
    assert avg_at_k([[1, 0], [1, 1, 1, 0]]) == pytest.approx((0.5 + 0.75) / 2)


def test_stderr_of_one_problem_is_nan_and_empty_input_is_an_error():
    assert math.isnan(avg_at_k_stderr([[1, 0, 1]]))
    with pytest.raises(ValueError, match="no problems"):
        avg_at_k([])
    with pytest.raises(ValueError, match="problem 1 has no samples"):
        avg_at_k([[1], []])


def test_paired_difference_hand_values():
    a = [[1, 1], [0, 1], [1, 0]]  # means 1, 0.5, 0.5
    b = [[1, 0], [0, 0], [1, 0]]  # means 0.5, 0, 0.5
    mean, stderr = paired_difference(a, b)
    # differences 0.5, 0.5, 0: mean 1/3, sample variance 1/12, stderr sqrt(1/12 / 3) = 1/6
    assert mean == pytest.approx(1 / 3)
    assert stderr == pytest.approx(1 / 6)
    # the pairing removes the spread of problem difficulty: much smaller than either score's error
    hard_and_easy = [[0, 0, 0, 0]] * 5 + [[1, 1, 1, 1]] * 5
    better = [[0, 0, 0, 1]] * 5 + [[1, 1, 1, 1]] * 5
    mean, stderr = paired_difference(better, hard_and_easy)
    assert mean == pytest.approx(0.125)
    assert stderr < avg_at_k_stderr(hard_and_easy) / 2
    with pytest.raises(ValueError, match="same problems"):
        paired_difference(a, b[:2])


# ------------------------------------------------------------------------------------------------
# the runner


class ScriptedRollout:
    """A rollout engine that answers with fixed texts and records what it was asked."""

    supports_sleep = False
    last_stats = None

    def __init__(self, texts_per_prompt):
        self.texts_per_prompt = texts_per_prompt
        self.calls = []

    def generate(self, prompts, params):
        self.calls.append((prompts, params))
        out = []
        for p, prompt in enumerate(prompts):
            for s in range(params.n):
                text = self.texts_per_prompt[p][s]
                finish = "length" if text == "..." else "stop"
                out.append(Trajectory(p, s, prompt, [7] * (s + 1), text, [-1.0] * (s + 1), finish))
        return out

    def sync_weights(self, model_or_state_dict):
        pass

    def sleep(self):
        pass

    def wake(self):
        pass


@pytest.fixture(scope="module")
def tokenizer():
    from npu_retu.models.modeling import load_tokenizer

    return load_tokenizer(str(embedded.resolve("embedded:base")))


def test_evaluate_scores_and_summary_against_hand_values(tokenizer):
    examples = [
        RLExample(prompt=[{"role": "user", "content": f"question {i}"}], ground_truth=[answer], source=f"t:{i}")
        for i, answer in enumerate(["3", "5", "7"])
    ]
    texts = [
        ["\\boxed{3}", "\\boxed{4}", "so \\boxed{3}", "..."],  # 2 of 4 correct
        ["\\boxed{6}", "no answer", "\\boxed{7}", "..."],  # none correct
        ["\\boxed{7}"] * 4,  # all correct
    ]
    rollout = ScriptedRollout(texts)
    result = evaluate(rollout, tokenizer, examples, exact_match_reward, n=4, max_new_tokens=160, seed=0, ks=(1, 2))

    prompts, params = rollout.calls[0]
    assert prompts == [tokenize_prompt(example.prompt, tokenizer) for example in examples]
    assert params == SamplingParams(n=4, temperature=0.7, top_p=1.0, max_new_tokens=160, seed=0)
    assert result.scores == [[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]
    assert result.avg_at_n == pytest.approx(0.5)
    assert result.avg_at_n_stderr == pytest.approx(0.5 / math.sqrt(3))  # std of (0.5, 0, 1) is 0.5
    assert result.pass_at_k == pytest.approx({1: 0.5, 2: (5 / 6 + 0 + 1) / 3})
    assert (result.n, result.temperature, result.top_p, result.max_new_tokens, result.num_problems) == (4, 0.7, 1.0, 160, 3)
    assert result.truncated_fraction == pytest.approx(2 / 12)
    assert result.mean_response_tokens == pytest.approx(2.5)
    assert result.summary() == "avg@4 = 50.0% ± 28.9, pass@2 = 61.1% (n=4, T=0.7, top-p=1.0, max 160 tokens, 3 problems)"

    data = json.loads(json.dumps(result.to_dict()))
    assert data["metric"] == "avg@4" and data["pass_at_k"]["2"] == pytest.approx(11 / 18)
    assert data["summary"] == result.summary() and data["num_problems"] == 3 and data["scores"] == result.scores


def test_evaluate_summary_without_pass_at_k(tokenizer):
    examples = [RLExample(prompt=[{"role": "user", "content": "q"}], ground_truth=["1"], source="t:0")] * 2
    rollout = ScriptedRollout([["\\boxed{1}", "x"], ["x", "x"]])
    result = evaluate(rollout, tokenizer, examples, exact_match_reward, n=2, temperature=1.0, top_p=0.95, max_new_tokens=64)
    assert result.summary() == "avg@2 = 25.0% ± 25.0 (n=2, T=1.0, top-p=0.95, max 64 tokens, 2 problems)"


def test_evaluate_rejects_bad_arguments(tokenizer):
    examples = [RLExample(prompt=[{"role": "user", "content": "q"}], ground_truth=["1"], source="t:0")]
    rollout = ScriptedRollout([["x"] * 4])
    with pytest.raises(ValueError, match="1..n=4"):
        evaluate(rollout, tokenizer, examples, exact_match_reward, n=4, ks=(1, 8))
    with pytest.raises(ValueError, match="no examples"):
        evaluate(rollout, tokenizer, [], exact_match_reward)
    with pytest.raises(ValueError, match="returned 1 scores for 4 responses"):
        evaluate(rollout, tokenizer, examples, lambda batch: [0.0], n=4)


def test_evaluate_with_the_transformers_rollout(tokenizer):
    from npu_retu.models.modeling import load_model
    from npu_retu.rollout import TransformersRollout

    model = load_model(str(embedded.resolve("embedded:base")))
    examples = load_rl(embedded.resolve("embedded:rl-test"))[:4]
    rollout = TransformersRollout(model, tokenizer, batch_size=8)
    result = evaluate(rollout, tokenizer, examples, exact_match_reward, n=2, max_new_tokens=16, seed=1, ks=(1, 2))
    assert isinstance(result, EvalResult)
    assert len(result.scores) == 4 and all(len(row) == 2 for row in result.scores)

    # the same samples, scored by hand
    prompts = [tokenize_prompt(example.prompt, tokenizer) for example in examples]
    again = rollout.generate(prompts, SamplingParams(n=2, temperature=0.7, max_new_tokens=16, seed=1))
    expected = [[0.0, 0.0] for _ in examples]
    for t in again:
        expected[t.prompt_index][t.sample_index] = float(is_correct(t.text, examples[t.prompt_index].ground_truth[0]))
    assert result.scores == expected
    assert result.avg_at_n == pytest.approx(avg_at_k(expected))
    assert result.mean_response_tokens == pytest.approx(sum(len(t.response_ids) for t in again) / 8)
    assert result.summary().endswith("(n=2, T=0.7, top-p=1.0, max 16 tokens, 4 problems)")
