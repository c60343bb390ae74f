"""Benchmark metrics: avg@k, the unbiased pass@k, and the standard errors that go with them.

RETU reports avg@k: each problem is answered k times and the score is the mean over problems of the
mean over its k samples. A difference between two checkpoints means little without its noise, so
standard errors are computed over *problems* (the samples of one problem are not independent
draws of the benchmark), and two checkpoints scored on the same problems are compared with a paired
difference, whose error is much smaller than that of either score.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct (Chen et al. 2021, Eq. 1):
    ``1 - C(n-c, k) / C(n, k)``, the chance that k of the n samples drawn without replacement hold a
    correct one. Computed as ``1 - prod_{i=n-c+1}^{n} (1 - k / i)``, which never forms the large
    binomials."""
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (n, c, k)):
        raise TypeError(f"pass_at_k takes integers, got n={n!r}, c={c!r}, k={k!r}")
    if n < 1 or not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs n >= 1, 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    n, c, k = int(n), int(c), int(k)
    if n - c < k:  # every draw of k samples holds a correct one
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def mean_pass_at_k(correct_per_problem: Sequence[Sequence[bool]], k: int) -> float:
    """Mean over problems of :func:`pass_at_k` (each problem's own n and number correct)."""
    _check_scores(correct_per_problem)
    return sum(pass_at_k(len(row), sum(bool(x) for x in row), k) for row in correct_per_problem) / len(correct_per_problem)


def problem_means(scores_per_problem: Sequence[Sequence[float]]) -> list[float]:
    """The mean score of each problem over its samples."""
    _check_scores(scores_per_problem)
    return [sum(row) / len(row) for row in scores_per_problem]


def avg_at_k(scores_per_problem: Sequence[Sequence[float]]) -> float:
    """avg@k: the mean over problems of the mean over each problem's k samples."""
    means = problem_means(scores_per_problem)
    return sum(means) / len(means)


def avg_at_k_stderr(scores_per_problem: Sequence[Sequence[float]]) -> float:
    """Standard error of :func:`avg_at_k` over problems: the sample standard deviation (ddof=1) of the
    per-problem means divided by sqrt(number of problems). NaN for a single problem."""
    return _stderr(problem_means(scores_per_problem))


def paired_difference(
    scores_a: Sequence[Sequence[float]], scores_b: Sequence[Sequence[float]]
) -> tuple[float, float]:
    """(mean difference, its standard error) of avg@k between checkpoints a and b on the same problems.

    The difference is taken per problem (``mean(a_i) - mean(b_i)``), so the problems' own difficulty
    cancels; the standard error is that of the mean of those differences (ddof=1; NaN for one problem).
    Problem ``i`` of both lists must be the same problem; their numbers of samples may differ.
    """
    if len(scores_a) != len(scores_b):
        raise ValueError(f"paired_difference needs the same problems: got {len(scores_a)} and {len(scores_b)} problems")
    differences = [a - b for a, b in zip(problem_means(scores_a), problem_means(scores_b))]
    return sum(differences) / len(differences), _stderr(differences)


def _stderr(values: list[float]) -> float:
    count = len(values)
    if count < 2:
        return float("nan")
    mean = sum(values) / count
    variance = sum((v - mean) ** 2 for v in values) / (count - 1)
    return math.sqrt(variance / count)


def _check_scores(scores_per_problem: Sequence[Sequence[float]]) -> None:
    if len(scores_per_problem) == 0:
        raise ValueError("no problems to score")
    for index, row in enumerate(scores_per_problem):
        if len(row) == 0:
            raise ValueError(f"problem {index} has no samples")
