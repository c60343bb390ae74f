"""The synthetic task of the embedded default: chains of modular arithmetic.

A problem starts from a digit ``s`` and applies ``k`` operations ("add a", "subtract a",
"multiply by a"), reducing modulo 10 after every step; the answer is the final digit. The number of
steps is the difficulty (``DIFFICULTY_STEPS``). A problem's identity is ``(start, ops)``; its wording
is one of a few templates.

The rows this module writes have the shapes of the real data sets the paper trains on, so the same
loaders read both:

* SFT rows: AM-DeepSeek-R1-Distilled (``messages`` with ``info.reference_answer`` on the user turn),
  with an R1-style expert trajectory ``<think>\\n...steps...\\n</think>\\n\\nThe result is \\boxed{d}.``
  whose phrasing is drawn at random per line. That randomness gives the validation loss a floor above
  zero and something to memorise, so many epochs on a small set overfit (the paper's Mild / Severe
  sub-phases, §6.2.1).
* RL rows: Skywork-OR1 (``prompt`` + ``reward_model.ground_truth`` as a JSON-encoded list string).
* Pretraining text for the base model: problems with bare answers, no step-by-step.

Pure Python (no torch): the CLI and the data tests import it cheaply.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from npu_retu.data.schemas import last_boxed
from npu_retu.errors import UserError

SOURCE = "npu-retu-synthetic"
MODULUS = 10

# difficulty -> (fewest, most) steps, inclusive
DIFFICULTY_STEPS: dict[str, tuple[int, int]] = {
    "easy": (1, 3),
    "uniform": (1, 6),
    "hard": (4, 6),
}

# operation -> (smallest operand, largest operand); multiplying by 1 would be a no-op step. The
# multipliers stop at 3 so that the whole table of one-step facts (200 of them) is small enough for
# the tiny base model to learn in a one-minute pretraining on 2 CPU cores.
OPERAND_RANGE: dict[str, tuple[int, int]] = {"add": (1, 9), "sub": (1, 9), "mul": (2, 3)}
OPERATIONS = tuple(OPERAND_RANGE)
CHOICES_PER_STEP = sum(hi - lo + 1 for lo, hi in OPERAND_RANGE.values())  # 9 + 9 + 2 = 20

Op = tuple[str, int]  # ("add" | "sub" | "mul", operand)


@dataclass(frozen=True)
class Problem:
    """One chain: ``answer`` is the value after every op, reduced modulo 10 at each step."""

    start: int
    ops: tuple[Op, ...]
    answer: int
    steps: int
    text: str

    @property
    def key(self) -> tuple[int, tuple[Op, ...]]:
        """The identity used for de-duplication and held-out exclusion (the wording is not part of it)."""
        return (self.start, self.ops)


def apply_op(value: int, op: Op) -> tuple[int, int]:
    """Return (the exact result, the result modulo 10) of one step."""
    name, a = op
    if name == "add":
        raw = value + a
    elif name == "sub":
        raw = value - a
    elif name == "mul":
        raw = value * a
    else:
        raise ValueError(f"unknown operation {name!r}")
    return raw, raw % MODULUS


def solve(start: int, ops: Iterable[Op]) -> int:
    """The final value of a chain."""
    value = start
    for op in ops:
        value = apply_op(value, op)[1]
    return value


def space_size(steps: int) -> int:
    """How many distinct problems have exactly ``steps`` operations."""
    return MODULUS * CHOICES_PER_STEP**steps


# --------------------------------------------------------------------------------------------
# problem wording

_PROBLEM_TEMPLATES = (
    "Start with {s}. {Ops}, working modulo 10 after each step. What is the result?",
    "Begin at {s} and apply these operations in order, reducing modulo 10 after every step: {ops}. What number do you end with?",
    "Take the number {s}. Working modulo 10, {ops}. What do you get?",
    "A counter shows {s}. {Ops}; after each step keep only the remainder modulo 10. What does the counter show at the end?",
)


WORDINGS = len(_PROBLEM_TEMPLATES)


def wording_of(problem: Problem) -> int:
    """Which of the ``WORDINGS`` problem templates a problem's text uses (0-based)."""
    for index, template in enumerate(_PROBLEM_TEMPLATES):
        if problem.text.startswith(template.split("{s}")[0]):
            return index
    raise ValueError(f"not a synthetic problem text: {problem.text[:60]!r}")


def reworded(problem: Problem, wording: int) -> Problem:
    """The same problem (same key, answer and steps) in problem wording ``wording`` (0-based)."""
    return replace(problem, text=problem_text(problem.start, problem.ops, wording))


def _op_phrase(op: Op) -> str:
    name, a = op
    return {"add": f"add {a}", "sub": f"subtract {a}", "mul": f"multiply by {a}"}[name]


def _join_ops(ops: tuple[Op, ...]) -> str:
    # Operations are numbered, "(1) add 5, (2) multiply by 3, then (3) subtract 4": a solution
    # line "(2) ..." finds its operation by its number, which a tiny model learns far sooner than
    # counting positions in a list.
    phrases = [f"({i}) {_op_phrase(op)}" for i, op in enumerate(ops, start=1)]
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + ", then " + phrases[-1]


def problem_text(start: int, ops: tuple[Op, ...], template: int) -> str:
    ops_text = _join_ops(ops)
    return _PROBLEM_TEMPLATES[template].format(s=start, ops=ops_text, Ops=ops_text[0].upper() + ops_text[1:])


# --------------------------------------------------------------------------------------------
# generation


def _check_difficulty(difficulty: str) -> tuple[int, int]:
    if difficulty not in DIFFICULTY_STEPS:
        raise UserError(f"difficulty {difficulty!r} is not known; choose one of {', '.join(DIFFICULTY_STEPS)}")
    return DIFFICULTY_STEPS[difficulty]


def _draw_ops(rng: random.Random, steps: int) -> tuple[Op, ...]:
    ops = []
    for _ in range(steps):
        name = rng.choice(OPERATIONS)
        lo, hi = OPERAND_RANGE[name]
        ops.append((name, rng.randint(lo, hi)))
    return tuple(ops)


def generate_problems(
    n: int,
    difficulty: str,
    seed: int,
    exclude: frozenset | set = frozenset(),
) -> list[Problem]:
    """``n`` distinct problems of a difficulty, none of whose keys is in ``exclude``.

    The step count is drawn uniformly from the difficulty's range; a step count whose space is used
    up (1 step has only 200 problems) drops out of the draw, so a large set leans to longer chains.
    The draw is one stream per seed: the first ``m`` problems of ``n > m`` are the ``m`` problems.
    """
    lo, hi = _check_difficulty(difficulty)
    if not isinstance(n, int) or n < 0:
        raise UserError(f"n must be a non-negative integer, got {n!r}")
    excluded_per_steps = {k: 0 for k in range(lo, hi + 1)}
    for start, ops in exclude:
        if len(ops) in excluded_per_steps:
            excluded_per_steps[len(ops)] += 1
    room = {k: space_size(k) - excluded_per_steps[k] for k in excluded_per_steps}
    if n > sum(room.values()):
        raise UserError(
            f"cannot draw {n} distinct {difficulty!r} problems ({lo}..{hi} steps): only {sum(room.values())} "
            f"exist after excluding {sum(excluded_per_steps.values())} held-out ones"
        )
    rng = random.Random(seed)
    open_steps = [k for k in sorted(room) if room[k] > 0]
    seen: set = set()
    problems: list[Problem] = []
    while len(problems) < n:
        steps = rng.choice(open_steps)
        start = rng.randint(0, MODULUS - 1)
        ops = _draw_ops(rng, steps)
        key = (start, ops)
        if key in seen or key in exclude:
            continue
        seen.add(key)
        text = problem_text(start, ops, rng.randrange(len(_PROBLEM_TEMPLATES)))
        problems.append(Problem(start=start, ops=ops, answer=solve(start, ops), steps=steps, text=text))
        room[steps] -= 1
        if room[steps] == 0:
            open_steps.remove(steps)
    return problems


# --------------------------------------------------------------------------------------------
# the expert trajectory (R1 style)

_SYMBOL = {"add": "+", "sub": "-", "mul": "×"}

_OPENINGS = (  # every opening states the start value, which step (1) then works on
    "Start: {s}.",
    "We start from {s}.",
    "Let me go one operation at a time, starting from {s}.",
    "The starting value is {s}.",
)
_CLOSINGS = (
    "So the final value is {m}.",
    "After the last step we have {m}.",
    "That leaves {m}.",
    "The final number is {m}.",
)


# A step line is "<connector><operation>: <value> <sym> <a> = <raw>, keep <reduced>." The arithmetic
# core is always written the same way (a tiny model learns one form of each fact), while the
# connector varies: that randomness is what the validation loss cannot predict and what a model
# memorises when it overfits a small set.
_CONNECTORS = ("", "Next, ", "Then ", "Now ", "After that, ")


def fact_line(value: int, op: Op) -> str:
    """One step's arithmetic, always in the same form: ``4 + 8 = 12, keep 2.``"""
    name, a = op
    raw, reduced = apply_op(value, op)
    return f"{value} {_SYMBOL[name]} {a} = {raw}, keep {reduced}."


def _step_line(number: int, value: int, op: Op, rng: random.Random) -> str:
    connector = _CONNECTORS[rng.randrange(len(_CONNECTORS))]
    return f"{connector}({number}) {_op_phrase(op)}: {fact_line(value, op)}"


def all_facts() -> list[tuple[int, Op]]:
    """Every one-step fact of the task: (value, operation) for each value 0..9 and each operation."""
    return [(v, (name, a)) for v in range(MODULUS) for name, (lo, hi) in OPERAND_RANGE.items() for a in range(lo, hi + 1)]


def practice_text(rng: random.Random, lines: int = 16) -> str:
    """A pretraining document of arithmetic practice: ``lines`` random one-step facts.

    The base model learns the task's arithmetic from such text (as a real base model knows its
    times tables before any fine-tuning); what it does not see before SFT is a worked chain.
    """
    facts = all_facts()
    return "\n".join(fact_line(v, op) for v, op in (facts[rng.randrange(len(facts))] for _ in range(lines))) + "\n"


def expert_trajectory(problem: Problem, rng: random.Random, read_back: bool = True) -> str:
    """An R1-style solution: ``<think>`` + the problem read back + one line per step + ``</think>`` +
    the boxed answer.

    The read-back (``In short: start 7; (1) add 5; ...``, the form the base model copies in
    pretraining) comes first, as a reasoning model restates what it was asked; each step then copies
    its operation from that nearby line. Every other line's phrasing is drawn from ``rng`` (an
    opening that states the start, a connector per step line, four closings); the arithmetic is
    always the problem's and always written the same way. ``read_back=False`` leaves the read-back
    out (the tokenizer's corpus does, so that the tokenizer does not change with this format).
    """
    lines = [restatement(problem)] if read_back else []
    lines.append(_OPENINGS[rng.randrange(len(_OPENINGS))].format(s=problem.start))
    value = problem.start
    for number, op in enumerate(problem.ops, start=1):
        lines.append(_step_line(number, value, op, rng))
        value = apply_op(value, op)[1]
    lines.append(_CLOSINGS[rng.randrange(len(_CLOSINGS))].format(m=value))
    return "<think>\n" + "\n".join(lines) + "\n</think>\n\n" + final_answer_line(value)


def final_answer_line(answer: int | str) -> str:
    return f"The result is \\boxed{{{answer}}}."


# --------------------------------------------------------------------------------------------
# rows in the real data sets' shapes


def sft_row(problem: Problem, rng: random.Random) -> dict[str, Any]:
    """An AM-DeepSeek-R1-Distilled row: the user turn carries ``info.reference_answer``."""
    return {
        "messages": [
            {
                "role": "user",
                "content": problem.text,
                "info": {"source": SOURCE, "reference_answer": str(problem.answer), "difficulty": problem.steps},
            },
            {"role": "assistant", "content": expert_trajectory(problem, rng), "info": None},
        ]
    }


def rl_row(problem: Problem) -> dict[str, Any]:
    """A Skywork-OR1 row: ground truth is a JSON-encoded list of strings, as Skywork stores it."""
    return {
        "data_source": SOURCE,
        "prompt": [{"role": "user", "content": problem.text}],
        "reward_model": {"style": "rule", "ground_truth": json.dumps([str(problem.answer)])},
        "extra_info": {"steps": problem.steps},
    }


CHAT_SHARE = 0.3  # share of pretraining documents rendered with the chat template


def pretrain_text(
    problem: Problem,
    rng: random.Random,
    chat_template_fn: Callable[[list[dict[str, str]]], str] | None = None,
    worked: bool = False,
) -> str:
    """One pretraining document: the problem and its bare answer, no steps.

    Most documents are plain text (``PROBLEM\\nIn short: ...\\nAnswer: \\boxed{d}\\n``, with a
    ``restatement`` of the problem before the answer); with ``chat_template_fn``
    about 30 % are a chat exchange whose assistant turn is only ``The result is \\boxed{d}.``, so the
    base model can answer chat-formatted prompts (P_0 > 0 under the prompt format SFT and RL use).
    ``worked=True`` gives the problem its :func:`textbook_solution` before the answer instead (in
    the chat variant, as the assistant's turn), the v5 calibration's pretraining documents.
    """
    if chat_template_fn is not None and rng.random() < CHAT_SHARE:
        answer = final_answer_line(problem.answer)
        messages = [
            {"role": "user", "content": problem.text},
            {"role": "assistant", "content": f"{textbook_solution(problem, rng)} {answer}" if worked else answer},
        ]
        return chat_template_fn(messages)
    if worked:
        return f"{problem.text}\n{textbook_solution(problem, rng)}\nAnswer: \\boxed{{{problem.answer}}}\n"
    return f"{problem.text}\n{restatement(problem)}\nAnswer: \\boxed{{{problem.answer}}}\n"


# the textbook form (embedded v5 calibration): its own words, no <think>, no read-back line
_TEXTBOOK_OPENINGS = ("Solution. Begin with {s}.", "Solution. We begin at {s}.", "Solution. Take {s}.")


def textbook_solution(problem: Problem, rng: random.Random) -> str:
    """A terse worked solution as a textbook prints one, for the base model's pretraining text
    (issue 18: a base that answers some problems before SFT, as Qwen2.5-7B does).

    ``Solution. Begin with 7. Step 1, add 5: 7 + 5 = 12, keep 2. Step 2, multiply by 3: ... So the
    answer is 6.`` It differs from the SFT trajectory (:func:`expert_trajectory`) in everything but
    the arithmetic: no ``<think>``, no ``In short: ...`` read-back, its own opening, step and closing
    words, one paragraph. The arithmetic core is :func:`fact_line`, the one form of each fact the
    practice text and the trajectories share.
    """
    parts = [_TEXTBOOK_OPENINGS[rng.randrange(len(_TEXTBOOK_OPENINGS))].format(s=problem.start)]
    value = problem.start
    for number, op in enumerate(problem.ops, start=1):
        parts.append(f"Step {number}, {_op_phrase(op)}: {fact_line(value, op)}")
        value = apply_op(value, op)[1]
    parts.append(f"So the answer is {value}.")
    return " ".join(parts)


def restatement(problem: Problem) -> str:
    """The problem's data read back, ``In short: start 7; (1) add 5; (2) multiply by 3.``

    Pretraining documents carry such summaries (as real text restates what it quotes), so the base
    model learns to look up "(k)" in its context and copy what follows, before any worked chain.
    """
    ops = "; ".join(f"({i}) {_op_phrase(op)}" for i, op in enumerate(problem.ops, start=1))
    return f"In short: start {problem.start}; {ops}."


# --------------------------------------------------------------------------------------------
# answers


def answer_of(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` after the last ``</think>``.

    Text without ``</think>`` is searched whole (a base model answers without thinking), but a
    ``<think>`` that is never closed means the reasoning was cut off: no answer. An exact-match
    checker for calibration and tests; the real reward is math-verify (npu_retu.reward).
    """
    close = text.rfind("</think>")
    if close >= 0:
        text = text[close + len("</think>") :]
    elif "<think>" in text:
        return None
    return last_boxed(text)


def is_correct(text: str, answer: int | str) -> bool:
    """Exact match of ``answer_of(text)`` against the reference digit."""
    got = answer_of(text)
    return got is not None and got == str(answer)


# --------------------------------------------------------------------------------------------
# files


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared cache must be readable by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write one JSON object per line (UTF-8, key order kept); a temp file renamed into place."""
    path = Path(path)

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

    _atomic_write(path, write)
    return path


def write_parquet(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows as a Parquet table (nested fields become structs / lists); atomic like write_jsonl."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    table = pa.Table.from_pylist(list(rows))
    _atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return path


def write_rows(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write ``.jsonl`` or ``.parquet`` by the file's suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".jsonl":
        return write_jsonl(path, rows)
    if suffix == ".parquet":
        return write_parquet(path, rows)
    raise UserError(f"{path}: unsupported output format {suffix!r}; use .jsonl or .parquet")
