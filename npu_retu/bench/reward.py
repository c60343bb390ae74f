"""``npu-retu bench reward``: math-verify verifications per second, in-process and through the pool.

The items are typical RL responses: synthetic R1-style trajectories (``<think>`` steps, then
``\\boxed{d}``) with digit answers, some wrong, some with LaTeX fractions against decimal golds, and
some cut off without a final answer. Three ways are timed on the same items:

* in-process: ``evaluate`` called directly (no timeout; the ceiling of one core),
* the pool with 1 worker (adds the pipe round trip per item),
* the pool with N workers (default: the CPU count).

Worker start-up (spawn + importing math-verify) is timed apart, not counted in the rates.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import random
import time
from pathlib import Path

from npu_retu.data.synthetic import expert_trajectory, generate_problems
from npu_retu.reward.math_reward import RewardPool, evaluate


def bench_items(num_items: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """``num_items`` (response, golds) pairs: ~60 % right digits, 15 % wrong, 15 % fractions, 10 % cut off."""
    rng = random.Random(seed)
    problems = generate_problems(min(num_items, 2000), "uniform", seed)
    items = []
    for i in range(num_items):
        problem = problems[i % len(problems)]
        response = expert_trajectory(problem, rng)
        gold = str(problem.answer)
        kind = rng.random()
        if kind < 0.15:  # a wrong final digit
            response = response.replace(f"\\boxed{{{gold}}}", f"\\boxed{{{(problem.answer + 1) % 10}}}")
        elif kind < 0.30:  # a LaTeX fraction against a decimal gold, equal or not
            num, den = rng.choice([(1, 2), (3, 4), (1, 8), (5, 4)])
            gold = str(num / den)
            shown = (num, den) if rng.random() < 0.7 else (num + 1, den)
            response = response.replace(f"\\boxed{{{problem.answer}}}", f"\\boxed{{\\dfrac{{{shown[0]}}}{{{shown[1]}}}}}")
        elif kind < 0.40:  # cut off at the length limit while thinking
            response = response[: response.index("</think>")]
        items.append((response, [gold]))
    return items


def run_reward_bench(
    num_items: int = 2000,
    num_workers: int | None = None,
    timeout_s: float = 5.0,
    out_json: str | Path | None = "runs/bench/reward.json",
    seed: int = 0,
) -> dict:
    """Time the three ways of scoring ``num_items`` items; print a table, save JSON, return the figures.

    ``num_workers`` defaults to the CPU count; ``out_json=None`` saves nothing.
    """
    if num_items < 1:
        raise ValueError(f"num_items must be >= 1, got {num_items}")
    workers_n = num_workers or os.cpu_count() or 1
    items = bench_items(num_items, seed)

    evaluate(*items[0])  # warm up: import math-verify and load its LaTeX grammar
    start = time.perf_counter()
    reference = [evaluate(response, golds).score for response, golds in items]
    rows = [_row("in-process", None, time.perf_counter() - start, num_items, None)]

    mismatches = 0
    for n in sorted({1, workers_n}):
        start = time.perf_counter()
        with RewardPool(num_workers=n, timeout_s=timeout_s) as pool:
            pool.wait_ready()
            startup = time.perf_counter() - start
            start = time.perf_counter()
            results = pool.score(items)
            elapsed = time.perf_counter() - start
            stats = pool.stats()
        mismatches += sum(r.score != s for r, s in zip(results, reference))
        rows.append(_row("pool", n, elapsed, num_items, startup, timeouts=stats["timeouts"]))

    figures = {
        "benchmark": "reward_math_verify",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "math_verify": importlib.metadata.version("math-verify"),
        "sympy": importlib.metadata.version("sympy"),
        "num_items": num_items,
        "timeout_s": timeout_s,
        "seed": seed,
        "fraction_correct": sum(reference) / num_items,
        "pool_vs_in_process_mismatches": mismatches,
        "rows": rows,
    }
    _print_table(figures)
    if out_json is not None:
        out = Path(out_json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(figures, indent=2), encoding="utf-8")
        print(f"  saved to {out}")
    return figures


def _row(mode: str, workers: int | None, elapsed: float, n: int, startup: float | None, **extra) -> dict:
    return {
        "mode": mode,
        "workers": workers,
        "seconds": elapsed,
        "items_per_s": n / elapsed,
        "ms_per_item": 1e3 * elapsed / n,
        "startup_s": startup,
        **extra,
    }


def _print_table(figures: dict) -> None:
    print(
        f"math-verify reward: {figures['num_items']} items ({figures['fraction_correct']:.0%} correct), "
        f"math-verify {figures['math_verify']}, Python {figures['python']}, {figures['cpu_count']} CPUs"
    )
    print(f"  {'mode':<11} {'workers':>7} {'items/s':>9} {'ms/item':>8} {'start-up s':>10}")
    for row in figures["rows"]:
        workers = "-" if row["workers"] is None else str(row["workers"])
        startup = "-" if row["startup_s"] is None else f"{row['startup_s']:.2f}"
        print(f"  {row['mode']:<11} {workers:>7} {row['items_per_s']:>9.0f} {row['ms_per_item']:>8.2f} {startup:>10}")
    if figures["pool_vs_in_process_mismatches"]:
        print(f"  WARNING: {figures['pool_vs_in_process_mismatches']} pool scores differ from in-process ones")
