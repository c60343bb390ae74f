"""Score a policy on a benchmark: n samples per problem, a reward per sample, avg@n and pass@k.

Every reported number travels with the settings that produced it (n, temperature, top-p, the
response budget, the number of problems), because avg@n moves with each of them::

    examples = load_rl(embedded.resolve("embedded:rl-test"))
    result = evaluate(rollout, tokenizer, examples, reward_fn, n=4, max_new_tokens=160)
    print(result.summary())   # avg@4 = 31.2% ± 1.4 (n=4, T=0.7, top-p=1.0, max 160 tokens, 500 problems)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from npu_retu.data.schemas import RLExample
from npu_retu.data.tokenize import tokenize_prompt
from npu_retu.eval.metrics import avg_at_k, avg_at_k_stderr, mean_pass_at_k
from npu_retu.report.progress import Progress
from npu_retu.rollout.base import RolloutEngine, SamplingParams

# reward_fn([(response_text, ground_truths), ...]) -> one score per response
RewardFn = Callable[[list[tuple[str, list[str]]]], Sequence[float]]


@dataclass(frozen=True)
class EvalResult:
    """Scores of one evaluation and the settings they hold for.

    ``scores[i][j]`` is the reward of sample ``j`` of problem ``i``. ``avg_at_n`` is their avg@n
    (:func:`~npu_retu.eval.metrics.avg_at_k`) and ``avg_at_n_stderr`` its standard error over problems.
    ``pass_at_k[k]`` is the unbiased pass@k, a sample counting as correct when its score is positive.
    ``truncated_fraction`` is the share of samples cut by ``max_new_tokens`` (a budget that is too
    small shows up here before it shows up as a low score).
    """

    scores: list[list[float]]
    avg_at_n: float
    avg_at_n_stderr: float
    pass_at_k: dict[int, float]
    n: int
    temperature: float
    top_p: float
    max_new_tokens: int
    num_problems: int
    seed: int | None
    mean_response_tokens: float
    truncated_fraction: float

    @property
    def metric_name(self) -> str:
        return f"avg@{self.n}"

    def summary(self) -> str:
        """One line: ``avg@4 = 31.2% ± 1.4 (n=4, T=0.7, top-p=1.0, max 160 tokens, 500 problems)``;
        pass@k for every requested k > 1 follows avg@n (pass@1 equals avg@n for 0/1 rewards)."""
        parts = [f"{self.metric_name} = {100 * self.avg_at_n:.1f}% ± {100 * self.avg_at_n_stderr:.1f}"]
        parts += [f"pass@{k} = {100 * value:.1f}%" for k, value in sorted(self.pass_at_k.items()) if k > 1]
        return (
            ", ".join(parts)
            + f" (n={self.n}, T={self.temperature}, top-p={self.top_p}, max {self.max_new_tokens} tokens, "
            + f"{self.num_problems} problems)"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (pass@k keys as strings), with the metric name and the summary line."""
        data = asdict(self)
        data["pass_at_k"] = {str(k): v for k, v in sorted(self.pass_at_k.items())}
        data["metric"] = self.metric_name
        data["summary"] = self.summary()
        return data


def evaluate(
    rollout: RolloutEngine,
    tokenizer: Any,
    examples: list[RLExample],
    reward_fn: RewardFn,
    *,
    n: int = 4,
    temperature: float = 0.7,
    top_p: float = 1.0,
    max_new_tokens: int = 1024,
    seed: int | None = 0,
    ks: Sequence[int] = (1,),
    samples: list[dict[str, Any]] | None = None,
    progress: str | None = None,
) -> EvalResult:
    """Sample ``n`` responses per example, score them with ``reward_fn``, and report avg@n and pass@k.

    Prompts are rendered with the tokenizer's chat template and the generation prompt
    (:func:`~npu_retu.data.tokenize.tokenize_prompt`). ``reward_fn`` gets every (response text,
    accepted answers) pair in one call and returns one score per pair. A ``samples`` list is filled
    with one record per sample (``problem`` index, ``sample`` index, ``response`` text, ``score``,
    ``response_tokens``, ``finish_reason``), for saving the generations. ``progress`` names the
    stage for a progress bar (or line) over the samples (:class:`npu_retu.report.progress.Progress`),
    counted per decoded batch where the engine reports batches (``on_batch``).
    """
    if not examples:
        raise ValueError("evaluate: no examples")
    bad_ks = [k for k in ks if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n]
    if bad_ks:
        raise ValueError(f"evaluate: every k of pass@k must be an integer in 1..n={n}, got {bad_ks}")
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
    prompts = [tokenize_prompt(example.prompt, tokenizer) for example in examples]
    with Progress(len(prompts) * n, progress or "eval", unit="sample", enabled=progress is not None) as bar:
        hooked = progress is not None and hasattr(rollout, "on_batch")
        if hooked:
            rollout.on_batch = bar.update
        try:
            trajectories = rollout.generate(prompts, params)
        finally:
            if hooked:
                rollout.on_batch = None
        if not hooked:
            bar.update(len(trajectories))

    raw_scores = list(reward_fn([(t.text, examples[t.prompt_index].ground_truth) for t in trajectories]))
    if len(raw_scores) != len(trajectories):
        raise ValueError(f"evaluate: reward_fn returned {len(raw_scores)} scores for {len(trajectories)} responses")
    scores: list[list[float]] = [[] for _ in examples]
    for trajectory, score in zip(trajectories, raw_scores):
        if samples is not None:
            samples.append({"problem": trajectory.prompt_index, "sample": len(scores[trajectory.prompt_index]),
                            "response": trajectory.text, "score": float(score),
                            "response_tokens": trajectory.num_response_tokens, "finish_reason": trajectory.finish_reason})
        scores[trajectory.prompt_index].append(float(score))

    correct = [[score > 0 for score in row] for row in scores]
    return EvalResult(
        scores=scores,
        avg_at_n=avg_at_k(scores),
        avg_at_n_stderr=avg_at_k_stderr(scores),
        pass_at_k={k: mean_pass_at_k(correct, k) for k in sorted(set(ks))},
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        num_problems=len(examples),
        seed=seed,
        mean_response_tokens=sum(t.num_response_tokens for t in trajectories) / len(trajectories),
        truncated_fraction=sum(t.finish_reason == "length" for t in trajectories) / len(trajectories),
    )


def merge_results(parts: list[EvalResult], ks: Sequence[int] = (1,)) -> EvalResult:
    """One result from the results of round-robin shards of the problems (shard r held problems
    r, r + W, ...; ``parts`` in shard order), with the metrics computed over all problems."""
    from npu_retu.distributed.process_group import interleave

    if not parts:
        raise ValueError("merge_results: no results")
    first = parts[0]
    scores = interleave([p.scores for p in parts])
    correct = [[score > 0 for score in row] for row in scores]
    samples = [p.num_problems * p.n for p in parts]
    return EvalResult(
        scores=scores,
        avg_at_n=avg_at_k(scores),
        avg_at_n_stderr=avg_at_k_stderr(scores),
        pass_at_k={k: mean_pass_at_k(correct, k) for k in sorted(set(ks))},
        n=first.n,
        temperature=first.temperature,
        top_p=first.top_p,
        max_new_tokens=first.max_new_tokens,
        num_problems=len(scores),
        seed=first.seed,
        mean_response_tokens=sum(p.mean_response_tokens * w for p, w in zip(parts, samples)) / sum(samples),
        truncated_fraction=sum(p.truncated_fraction * w for p, w in zip(parts, samples)) / sum(samples),
    )
