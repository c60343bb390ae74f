"""The math-verify reward: what is scored, exact scores and statuses, the hard timeout, threads.

One module-scope pool (2 workers, 2 s per item) serves most tests, since starting a worker costs
about a second (spawn + importing math-verify).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time

import pytest

from npu_retu.errors import UserError
from npu_retu.reward import (
    REWARDS,
    MathReward,
    RewardPool,
    RewardResult,
    evaluate,
    final_answer_text,
    make_reward,
    score_one,
    truncate_for_log,
)

TIMEOUT_S = 2.0
# Runs for minutes in math-verify 0.9.0 with its timeouts disabled (verify() of the parsed tower).
HANG = r"\boxed{\dfrac{5^{(5^{(5^{5^5})} - 4)} - 5}{16}}"


@pytest.fixture(scope="module")
def pool():
    with RewardPool(num_workers=2, timeout_s=TIMEOUT_S) as p:
        p.wait_ready()
        yield p


def r1(answer: str, thinking: str = "Let me compute.") -> str:
    """A response in the R1 format of the synthetic expert trajectories."""
    return f"<think>\n{thinking}\n</think>\n\nThe result is \\boxed{{{answer}}}."


# --------------------------------------------------------------------------------------------
# extraction (pure strings)


@pytest.mark.parametrize(
    "response, expected",
    [
        (r1("7"), "7"),
        ("<think>\\boxed{3}</think>\n\\boxed{4}", "4"),  # only after the last </think>
        ("<think>a</think><think>b</think> \\boxed{5}", "5"),
        ("<think>\\boxed{3}</think> no box after", None),  # the boxed guess while thinking does not count
        ("<think>cut off while reasoning \\boxed{3}", None),  # never closed
        ("<think>a</think> \\boxed{2} <think> and again", None),  # a second block left open
        ("no thinking, answer \\boxed{9}", "9"),  # a base model answers without <think>
        ("\\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # last box, nested braces
        ("\\boxed{12", None),  # the last box is cut off
        ("\\boxed{}", None),
        ("\\boxed{  }", None),
        ("", None),
        ("plain text", None),
        ("\\boxed 7.", "7"),
        ("\\boxed {7}", "7"),
        ("\\boxed{1} and \\boxed 8", "8"),
        ("\\fbox{6}", "6"),
    ],
)
def test_final_answer_text(response, expected):
    assert final_answer_text(response) == expected


def test_truncate_for_log_keeps_head_and_tail():
    assert truncate_for_log("short") == "short"
    text = "A" * 500 + "Z" * 500
    cut = truncate_for_log(text, limit=100)
    assert cut.startswith("A" * 50) and cut.endswith("Z" * 50)
    assert "[900 chars cut]" in cut
    assert len(cut) < 130
    assert truncate_for_log("x\udcffy") == "x?y"  # lone surrogates cannot be written as UTF-8


# --------------------------------------------------------------------------------------------
# exact scores through the pool


CASES = [
    # response, golds, score, status
    (r1("7"), ["7"], 1.0, "ok"),
    (r1("7"), ["8"], 0.0, "ok"),
    (r1("\\frac{1}{2}"), ["0.5"], 1.0, "ok"),
    (r1("\\dfrac{1}{2}"), ["\\frac12"], 1.0, "ok"),
    (r1("0.5"), ["\\frac{1}{2}"], 1.0, "ok"),
    (r1("\\frac{1}{3}"), ["0.5"], 0.0, "ok"),
    (r1("3"), ["1", "2", "3"], 1.0, "ok"),  # any accepted answer counts
    (r1("4"), ["1", "2", "3"], 0.0, "ok"),
    (r1("x=3"), ["3"], 1.0, "ok"),
    (r1("\\sqrt{2}"), ["\\sqrt 2"], 1.0, "ok"),
    (r1("2\\sqrt{2}"), ["\\sqrt{8}"], 1.0, "ok"),
    ("$\\boxed{7}$", ["$7$"], 1.0, "ok"),
    ("<think>so \\boxed{5}</think>\n\nThe result is \\boxed{6}.", ["5"], 0.0, "ok"),  # only after </think>
    ("<think>so \\boxed{5}</think>\n\nThe result is \\boxed{6}.", ["6"], 1.0, "ok"),
    ("<think>the answer is \\boxed{5} but I keep", ["5"], 0.0, "no_answer"),  # never closed
    ("<think>ok</think> The answer is 5.", ["5"], 0.0, "no_answer"),  # no box
    ("", ["5"], 0.0, "no_answer"),
    ("<think>ok</think> \\boxed{12", ["12"], 0.0, "no_answer"),  # cut off inside the box
]


@pytest.mark.parametrize("response, golds, score, status", CASES)
def test_pool_scores(pool, response, golds, score, status):
    [result] = pool.score([(response, golds)])
    assert (result.score, result.status) == (score, status)
    assert isinstance(result.score, float)


def test_batch_order_and_in_process_agreement(pool):
    """One call with every case: order kept, and the same as scoring in this process."""
    results = pool.score([(response, golds) for response, golds, _, _ in CASES])
    assert [(r.score, r.status) for r in results] == [(s, st) for _, _, s, st in CASES]
    assert [score_one(response, golds) for response, golds, _, _ in CASES] == [s for _, _, s, _ in CASES]


def test_gold_given_as_a_string(pool):
    assert [r.score for r in pool.score([(r1("7"), "7"), (r1("7"), "8")])] == [1.0, 0.0]


# --------------------------------------------------------------------------------------------
# golds math-verify cannot parse are reported


@pytest.mark.parametrize("gold", ["", "   ", "}"])
def test_gold_unparsable_is_reported(pool, gold, caplog):
    before = pool.stats()["gold_unparsable"]
    with caplog.at_level(logging.WARNING, logger="npu_retu.reward.math_reward"):
        [result] = pool.score([(r1("7"), [gold])])
    assert (result.score, result.status) == (0.0, "gold_unparsable")
    assert "cannot parse gold" in result.detail
    assert pool.stats()["gold_unparsable"] == before + 1
    assert "cannot parse gold" in caplog.text


def test_one_bad_gold_among_good_ones(pool):
    match, miss = pool.score([(r1("7"), ["", "7"]), (r1("7"), ["", "8"])])
    assert (match.score, match.status) == (1.0, "ok")  # a parsable gold matched: the bad one is moot
    assert (miss.score, miss.status) == (0.0, "gold_unparsable")  # the 0 might be wrong: say so


def test_empty_gold_list(pool):
    [result] = pool.score([(r1("7"), [])])
    assert (result.score, result.status) == (0.0, "gold_unparsable")


# --------------------------------------------------------------------------------------------
# awkward responses


def test_one_megabyte_response(pool):
    thinking = "step " * 200_000  # 1 MB of reasoning
    start = time.monotonic()
    right, wrong, unanswered = pool.score([
        (r1("42", thinking), ["42"]),
        (r1("41", thinking), ["42"]),
        ("<think>" + thinking, ["42"]),
    ])
    assert time.monotonic() - start < TIMEOUT_S
    assert [(r.score, r.status) for r in (right, wrong, unanswered)] == [(1.0, "ok"), (0.0, "ok"), (0.0, "no_answer")]


def test_huge_boxed_answer_is_truncated_in_the_result(pool):
    [result] = pool.score([(r1("1+" * 300 + "1"), ["301"])])
    assert result.status in ("ok", "timeout")
    assert len(result.prediction) < 400


@pytest.mark.parametrize("errors", ["replace", "surrogateescape"])
def test_non_utf8_bytes(pool, errors):
    raw = b"<think>caf\xe9 \xff\xfe</think> The result is \\boxed{7}. \xff"
    text = raw.decode("utf-8", errors=errors)
    bad_box = b"<think>x</think> \\boxed{7\xff}".decode("utf-8", errors=errors)
    good, garbled = pool.score([(text, ["7"]), (bad_box, ["7"])])
    assert (good.score, good.status) == (1.0, "ok")
    assert (garbled.score, garbled.status) == (0.0, "ok")  # "7\ufffd" / "7\udcff" is not 7
    json.dumps(garbled.prediction, ensure_ascii=False).encode("utf-8")  # safe to log


def test_evaluate_never_raises_on_odd_input():
    assert evaluate("\\boxed{\\frac{}{}}", ["1"]).score == 0.0
    assert evaluate("\\boxed{\\left(}", ["1"]).score == 0.0
    assert evaluate("\\boxed{\udcff}", ["\udcff"]).status in ("ok", "gold_unparsable")


# --------------------------------------------------------------------------------------------
# the hard timeout


def test_hanging_input_is_killed_and_the_pool_recovers(pool):
    pool.wait_ready()
    before = pool.stats()
    start = time.monotonic()
    [result] = pool.score([(r1(HANG[len("\\boxed{") : -1]), ["1"])])
    elapsed = time.monotonic() - start
    assert elapsed < TIMEOUT_S + 1.0
    assert elapsed >= TIMEOUT_S * 0.95
    assert (result.score, result.status) == (0.0, "timeout")
    assert result.prediction.startswith("\\dfrac{5^")
    after = pool.stats()
    assert after["timeouts"] == before["timeouts"] + 1
    assert after["worker_restarts"] == before["worker_restarts"] + 1
    # still works, the replacement included (score enough items to need both workers)
    results = pool.score([(r1(str(k)), [str(k % 7)]) for k in range(10)])
    assert [r.score for r in results] == [1.0 if k == k % 7 else 0.0 for k in range(10)]


def test_hang_among_normal_items_keeps_order(pool):
    pool.wait_ready()
    items = [(r1("1"), ["1"]), (HANG, ["1"]), (r1("2"), ["2"]), (r1("3"), ["4"])]
    start = time.monotonic()
    results = pool.score(items)
    assert time.monotonic() - start < TIMEOUT_S + 1.0
    assert [(r.score, r.status) for r in results] == [(1.0, "ok"), (0.0, "timeout"), (1.0, "ok"), (0.0, "ok")]


def test_worker_killed_from_outside_is_replaced(pool):
    pool.wait_ready()
    before = pool.stats()["worker_restarts"]
    for worker in pool._workers:  # e.g. the OOM killer
        os.kill(worker.process.pid, signal.SIGKILL)
        worker.process.join()
    results = pool.score([(r1("5"), ["5"]), (r1("6"), ["5"])])
    assert [(r.score, r.status) for r in results] == [(1.0, "ok"), (0.0, "ok")]
    assert pool.stats()["worker_restarts"] >= before + 2


# --------------------------------------------------------------------------------------------
# threads, the Reward interface, the registry, closing


def test_score_from_four_threads(pool):
    out: dict[int, list[RewardResult]] = {}
    errors: list[BaseException] = []

    def work(thread: int) -> None:
        try:
            items = [(r1(str(thread * 10 + i)), [str(thread * 10 + i + (i % 2))]) for i in range(8)]
            out[thread] = pool.score(items)
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    for thread in range(4):
        assert [r.score for r in out[thread]] == [1.0, 0.0] * 4


def test_math_reward_interface_and_registry(pool):
    assert "math_verify" in REWARDS
    reward = make_reward("math_verify", pool=pool)
    assert isinstance(reward, MathReward)
    assert reward.score([(r1("7"), ["7"]), (r1("7"), "8"), ("", ["7"])]) == [1.0, 0.0, 0.0]
    reward.close()  # a shared pool stays open
    assert pool.score([(r1("1"), ["1"])])[0].score == 1.0
    with pytest.raises(UserError, match="math_verify"):
        make_reward("nope")


def test_stats_add_up(pool):
    stats = pool.stats()
    statuses = stats["ok"] + stats["no_answer"] + stats["timeouts"] + stats["errors"] + stats["gold_unparsable"]
    assert stats["scored"] == statuses > 0
    assert stats["correct"] <= stats["ok"]


def test_close_stops_workers_and_bad_arguments():
    with pytest.raises(ValueError):
        RewardPool(num_workers=0)
    small = RewardPool(num_workers=1, timeout_s=TIMEOUT_S)
    assert small.score([(r1("3"), ["3"])])[0].score == 1.0
    processes = [w.process for w in small._workers]
    small.close()
    small.close()  # idempotent
    assert not any(p.is_alive() for p in processes)
    with pytest.raises(RuntimeError, match="closed"):
        small.score([(r1("3"), ["3"])])
    with pytest.raises(TypeError):
        RewardPool.score(small, [("only a response",)])
