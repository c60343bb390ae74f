"""The two example types (SFT conversations, RL prompts with ground truth) and their loaders.

Accepted row shapes, all normalised to the same dataclasses:

* SFT: ``messages`` (role/content; the AM-DeepSeek-R1-Distilled shape with per-message ``info``,
  sometimes null, and ``messages[0].info.reference_answer``), ShareGPT ``conversations``
  (``from``/``value``, human/gpt), or ``prompt`` + ``response``.
* RL: a prompt (string or chat messages) under ``prompt`` / ``question`` / ``problem`` and a ground
  truth under ``ground_truth`` / ``answer`` / ``reward_model.ground_truth`` (Skywork-OR1, a
  JSON-encoded list string) / ``final_answer``; ground truth always becomes ``list[str]``.
* Math benchmarks in the Qwen2.5-Math evaluation layout (gsm8k, minerva_math, olympiadbench, aime24,
  amc23) through :func:`load_benchmark`, which knows where each keeps its gold answer.

Every problem is a :class:`DataError` naming file, row and field, or a counted skip with
``skip_bad_rows``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from npu_retu.data.errors import BadRowCounter, DataError, format_source
from npu_retu.data.readers import json_type_name, read_rows

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
PROMPT_KEYS = ("prompt", "question", "problem")
GROUND_TRUTH_KEYS = ("ground_truth", "answer", "reward_model.ground_truth", "final_answer")


@dataclass(frozen=True)
class SFTExample:
    """One expert trajectory: chat messages ending with the assistant's turn.

    ``source`` is ``"<file>:<row>"`` (see :func:`npu_retu.data.errors.parse_source`);
    ``reference_answer`` is the final answer when the data carries one (AM-DeepSeek:
    ``messages[0].info.reference_answer``).
    """

    messages: list[dict[str, str]]
    reference_answer: str | None
    source: str


@dataclass(frozen=True)
class RLExample:
    """One RL prompt: chat messages for the policy and the accepted answers for the rule reward.

    ``data_source`` is the dataset's own tag (Skywork-OR1 ``data_source``, or the benchmark name).
    """

    prompt: list[dict[str, str]]
    ground_truth: list[str]
    source: str
    data_source: str | None = None


# --------------------------------------------------------------------------------------------
# loaders

Example = TypeVar("Example")


def load_sft(
    paths: str | Path | Iterable[str | Path],
    *,
    skip_bad_rows: bool = False,
    counter: BadRowCounter | None = None,
) -> list[SFTExample]:
    """Read SFT conversations from JSONL / JSON / Parquet files (any mix of the accepted shapes)."""
    return _load(paths, sft_example_from_row, skip_bad_rows, counter)


def load_rl(
    paths: str | Path | Iterable[str | Path],
    *,
    skip_bad_rows: bool = False,
    counter: BadRowCounter | None = None,
) -> list[RLExample]:
    """Read RL prompts with their ground truth from JSONL / JSON / Parquet files."""
    return _load(paths, rl_example_from_row, skip_bad_rows, counter)


def _load(
    paths: str | Path | Iterable[str | Path],
    parse_row: Callable[[dict[str, Any], str, int], Example],
    skip_bad_rows: bool,
    counter: BadRowCounter | None,
) -> list[Example]:
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise DataError("(no files)", "no data files given")
    report_at_end = counter is None  # a caller that passes a counter reports it when it is done
    counter = BadRowCounter() if counter is None else counter
    examples: list[Example] = []
    for path in paths:
        file = str(path)
        before = len(examples)
        for row, record in read_rows(path, skip_bad_rows=skip_bad_rows, counter=counter):
            try:
                examples.append(parse_row(record, file, row))
            except DataError as error:
                if not skip_bad_rows:
                    raise
                counter.skip(error)
        if len(examples) == before:
            raise DataError(file, f"no usable rows ({counter.summary() or 'all rows were bad'})")
    if report_at_end and skip_bad_rows:
        counter.report()
    return examples


# --------------------------------------------------------------------------------------------
# SFT rows


def sft_example_from_row(record: dict[str, Any], file: str, row: int) -> SFTExample:
    """One SFT row in any accepted shape -> :class:`SFTExample` (or a DataError naming the field)."""
    check = _Checker(file, row)
    reference = None
    if "messages" in record:
        messages = check.chat_messages(record["messages"], "messages")
        check.conversation_shape(messages, "messages", "role")
        reference = _am_deepseek_reference_answer(record, check)
    elif "conversations" in record:
        messages = check.chat_messages(
            record["conversations"], "conversations", role_key="from", content_key="value", role_names=SHAREGPT_ROLES
        )
        check.conversation_shape(messages, "conversations", "from")
        if record.get("system") is not None:  # some ShareGPT files keep the system prompt beside the turns
            messages.insert(0, {"role": "system", "content": check.text(record["system"], "system")})
    elif "prompt" in record and "response" in record:
        messages = check.prompt_messages(record["prompt"], "prompt")
        messages.append({"role": "assistant", "content": check.text(record["response"], "response")})
        check.conversation_shape(messages, "prompt", "role")
    else:
        raise check.missing(
            "messages", "missing field 'messages' (or ShareGPT 'conversations', or 'prompt' + 'response')"
        )
    if reference is None and record.get("reference_answer") is not None:
        reference = check.answer_text(record["reference_answer"], "reference_answer")
    return SFTExample(messages=messages, reference_answer=reference, source=format_source(file, row))


def _am_deepseek_reference_answer(record: dict[str, Any], check: _Checker) -> str | None:
    """``messages[0].info.reference_answer`` when present (``info`` is sometimes null); when a system
    turn was put first, the first user turn's ``info`` carries it instead."""
    messages = record["messages"]
    first_user = next(i for i, message in enumerate(messages) if message.get("role") == "user")
    for index in dict.fromkeys((0, first_user)):
        info = messages[index].get("info")
        if info is None:
            continue
        if not isinstance(info, dict):
            raise check.wrong_type(f"messages[{index}].info", "an object or null", info)
        reference = info.get("reference_answer")
        if reference is not None:
            return check.answer_text(reference, f"messages[{index}].info.reference_answer")
    return None


# --------------------------------------------------------------------------------------------
# RL rows


def rl_example_from_row(record: dict[str, Any], file: str, row: int) -> RLExample:
    """One RL row -> :class:`RLExample`; the ground truth is normalised to ``list[str]``."""
    check = _Checker(file, row)
    prompt_key = next((key for key in PROMPT_KEYS if key in record), None)
    if prompt_key is None:
        raise check.missing("prompt", "missing field 'prompt' (or 'question', or 'problem')")
    prompt = check.prompt_messages(record[prompt_key], prompt_key)
    if prompt[-1]["role"] != "user":
        raise check.bad_value(f"{prompt_key}[{len(prompt) - 1}].role", f"the last prompt message must be from the user, got {prompt[-1]['role']!r}")

    ground_truth = None
    for key in GROUND_TRUTH_KEYS:
        value, found = _lookup(record, key, check)
        if found:
            ground_truth = normalize_ground_truth(value, check, key)
            break
    if ground_truth is None:
        raise check.missing("ground_truth", "missing field 'ground_truth' (or 'answer', 'reward_model.ground_truth', 'final_answer')")

    data_source = record.get("data_source")
    if data_source is not None and not isinstance(data_source, str):
        raise check.wrong_type("data_source", "a string or null", data_source)
    return RLExample(prompt=prompt, ground_truth=ground_truth, source=format_source(file, row), data_source=data_source)


def _lookup(record: dict[str, Any], dotted_key: str, check: _Checker) -> tuple[Any, bool]:
    """``record["a"]["b"]`` for ``"a.b"``, and whether it was there."""
    value: Any = record
    walked: list[str] = []
    for part in dotted_key.split("."):
        if walked and not isinstance(value, dict):
            raise check.wrong_type(".".join(walked), "an object", value)
        if part not in value:
            return None, False
        value = value[part]
        walked.append(part)
    return value, True


def normalize_ground_truth(value: Any, check: _Checker | None = None, field: str = "ground_truth") -> list[str]:
    """A ground truth in any accepted form -> a non-empty ``list[str]`` of accepted answers.

    Strings stay as they are (stripped), except the Skywork-OR1 encoding, a JSON list of strings in a
    string (``"[\\"3\\"]"``), which is decoded. Numbers lose a spurious ``.0`` (27.0 -> "27",
    2.5 -> "2.5"). A string that starts with ``[`` is read by this rule:

    * a JSON list whose items are all strings is the Skywork encoding: ``'["2", "-2"]'`` -> ``["2", "-2"]``;
    * a JSON list of numbers only, nested or not, is math, kept as written: the interval ``"[2,5]"``,
      the matrix ``"[[1,2],[3,4]]"``;
    * any other JSON list (strings mixed with numbers ``'["8", 9]'``, null, objects, an empty list) is a
      broken encoding: a :class:`DataError`. Real Skywork rows hold strings only, so a number beside
      strings is a writer's bug, not an answer;
    * text that is not JSON is math kept as written (``"[0, 1)"``, ``"[-1, \\infty)"``), unless it
      opens like a list of strings, ``["`` or ``['`` (``'["8"'`` cut short, Python's ``"['8']"``): a
      :class:`DataError` too. Scoring such a string as a literal answer would make every correct
      response score 0 with status ``ok``.
    """
    check = check or _Checker("(ground truth)", None)
    if isinstance(value, list):
        if not value:
            raise check.empty(field, "expected at least one answer, got an empty list")
        return [_one_answer(item, check, f"{field}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, str) and value.strip().startswith("["):
        decoded = _json_encoded_answers(value.strip(), check, field)
        if decoded is not None:
            return [_one_answer(item, check, f"{field}[{i}]") for i, item in enumerate(decoded)]
    return [_one_answer(value, check, field)]


_OPENS_LIKE_STRING_LIST = re.compile(r"\[\s*[\"']")


def _json_encoded_answers(text: str, check: _Checker, field: str) -> list[str] | None:
    """The answers of a JSON-encoded list of strings; None when ``text`` is math that starts with ``[``."""
    try:
        decoded = json.loads(text)  # a list: the text starts with "["
    except json.JSONDecodeError as e:
        if _OPENS_LIKE_STRING_LIST.match(text):
            raise check.bad_value(
                field,
                f"expected a JSON-encoded list of answers such as '[\"3\"]', got {_quote(text)}: "
                f"{e.msg} (column {e.colno})",
            ) from None
        return None  # "[0, 1)", "[a, b]": an interval or other math written with a bracket
    if not decoded:
        raise check.empty(field, "expected at least one answer, got an empty JSON list")
    if all(isinstance(item, str) for item in decoded):
        return decoded
    if _numbers_only(decoded):
        return None  # "[2,5]", "[[1,2],[3,4]]": an interval, a vector or a matrix, not a list of answers
    index, item = next((i, item) for i, item in enumerate(decoded) if not isinstance(item, str))
    raise check.bad_value(
        field, f"expected a JSON-encoded list of strings, got {json_type_name(item)} at index {index} of {_quote(text)}"
    )


def _numbers_only(value: Any) -> bool:
    if isinstance(value, list):
        return all(_numbers_only(item) for item in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _quote(text: str, limit: int = 80) -> str:
    """``repr(text)``, cut in the middle when long, for a message that quotes a bad value."""
    if len(text) > limit:
        text = text[: limit // 2] + " ... " + text[-limit // 2 :]
    return repr(text)


def _one_answer(value: Any, check: _Checker, field: str) -> str:
    if isinstance(value, str):
        if not value.strip():
            raise check.empty(field, "expected a non-empty answer, got an empty string")
        return value.strip()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format_number(value, check, field)
    raise check.wrong_type(field, "a string or a number", value)


def format_number(value: int | float, check: _Checker | None = None, field: str = "answer") -> str:
    """27.0 -> "27", 2.5 -> "2.5", 7 -> "7"; NaN and infinity are errors."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise (check or _Checker("(number)", None)).bad_value(field, f"expected a finite number, got {value}")
        if value.is_integer():
            return str(int(value))
        return repr(value)
    return str(value)


# --------------------------------------------------------------------------------------------
# math benchmarks (Qwen2.5-Math evaluation layout)

BENCHMARKS = ("gsm8k", "minerva_math", "olympiadbench", "aime24", "amc23")
_BENCHMARK_ALIASES = {"minerva": "minerva_math", "olympiad": "olympiadbench", "olympiadbench_en": "olympiadbench"}


def load_benchmark(
    path: str | Path,
    name: str | None = None,
    *,
    skip_bad_rows: bool = False,
    counter: BadRowCounter | None = None,
) -> list[RLExample]:
    """Load a math benchmark file as :class:`RLExample` rows with the gold answer extracted.

    ``name`` is one of :data:`BENCHMARKS` and defaults to the file name (``gsm8k.jsonl`` -> gsm8k).
    Gold answers: gsm8k the number after ``####`` (thousands commas dropped); minerva_math the
    last ``\\boxed{...}`` of ``solution``; olympiadbench the ``final_answer`` list (prompt =
    ``context`` + ``question``); aime24 / amc23 ``answer`` (a number: 27.0 -> "27").
    """
    name = name or Path(path).stem
    name = _BENCHMARK_ALIASES.get(name, name)
    if name not in BENCHMARKS:
        raise DataError(str(path), f"unknown benchmark {name!r}: expected one of {', '.join(BENCHMARKS)}")
    parse_row = _BENCHMARK_PARSERS[name]

    def example_from_row(record: dict[str, Any], file: str, row: int) -> RLExample:
        check = _Checker(file, row)
        prompt_text, ground_truth = parse_row(record, check)
        return RLExample(
            prompt=[{"role": "user", "content": prompt_text}],
            ground_truth=ground_truth,
            source=format_source(file, row),
            data_source=name,
        )

    return _load(path, example_from_row, skip_bad_rows, counter)


def _gsm8k(record: dict[str, Any], check: _Checker) -> tuple[str, list[str]]:
    solution = check.text(check.required(record, "answer"), "answer")
    if "####" not in solution:
        raise check.bad_value("answer", "expected the final number after '####', found no '####'")
    final = solution.rsplit("####", 1)[1].strip()
    final = re.sub(r"(?<=\d),(?=\d{3}\b)", "", final)  # "2,125" -> "2125"
    if not final:
        raise check.empty("answer", "nothing after '####'")
    return check.text(check.required(record, "question"), "question"), [final]


def _minerva(record: dict[str, Any], check: _Checker) -> tuple[str, list[str]]:
    solution = check.text(check.required(record, "solution"), "solution")
    gold = last_boxed(solution)
    if gold is None:
        raise check.bad_value("solution", "expected a \\boxed{...} answer, found none (or unbalanced braces)")
    return check.text(check.required(record, "problem"), "problem"), [gold]


def _olympiadbench(record: dict[str, Any], check: _Checker) -> tuple[str, list[str]]:
    question = check.text(check.required(record, "question"), "question")
    context = record.get("context")
    if context is not None:
        question = f"{check.text(context, 'context')}\n\n{question}"
    return question, normalize_ground_truth(check.required(record, "final_answer"), check, "final_answer")


def _aime24(record: dict[str, Any], check: _Checker) -> tuple[str, list[str]]:
    problem = check.text(check.required(record, "problem"), "problem")
    return problem, normalize_ground_truth(check.required(record, "answer"), check, "answer")


def _amc23(record: dict[str, Any], check: _Checker) -> tuple[str, list[str]]:
    key = "question" if "question" in record else "problem"
    question = check.text(check.required(record, key), key)
    return question, normalize_ground_truth(check.required(record, "answer"), check, "answer")


_BENCHMARK_PARSERS: dict[str, Callable[[dict[str, Any], _Checker], tuple[str, list[str]]]] = {
    "gsm8k": _gsm8k,
    "minerva_math": _minerva,
    "olympiadbench": _olympiadbench,
    "aime24": _aime24,
    "amc23": _amc23,
}


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced; None if absent."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    open_brace = text.index("{", start)
    depth = 0
    for position in range(open_brace, len(text)):
        if text[position] == "{":
            depth += 1
        elif text[position] == "}":
            depth -= 1
            if depth == 0:
                return text[open_brace + 1 : position].strip()
    return None


# --------------------------------------------------------------------------------------------
# field checks that raise DataErrors naming file, row and field


class _Checker:
    """Builds the DataErrors for one row; ``reason`` groups skipped rows in the summary."""

    def __init__(self, file: str, row: int | None) -> None:
        self.file, self.row = file, row

    def _error(self, field: str, message: str, reason: str) -> DataError:
        return DataError(self.file, message, row=self.row, field=field, reason=reason)

    def missing(self, field: str, message: str | None = None) -> DataError:
        return self._error(field, message or "missing", f"missing field '{_leaf(field)}'")

    def wrong_type(self, field: str, expected: str, value: Any) -> DataError:
        return self._error(field, f"expected {expected}, got {json_type_name(value)}", f"wrong type for '{_leaf(field)}'")

    def empty(self, field: str, message: str) -> DataError:
        return self._error(field, message, f"empty '{_leaf(field)}'")

    def bad_value(self, field: str, message: str) -> DataError:
        return self._error(field, message, f"bad '{_leaf(field)}'")

    def required(self, record: dict[str, Any], key: str) -> Any:
        if key not in record:
            raise self.missing(key)
        return record[key]

    def text(self, value: Any, field: str) -> str:
        """A non-empty string, kept exactly as it is."""
        if not isinstance(value, str):
            raise self.wrong_type(field, "a string", value)
        if not value.strip():
            raise self.empty(field, "expected non-empty text, got an empty string")
        return value

    def answer_text(self, value: Any, field: str) -> str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return format_number(value, self, field)
        return self.text(value, field).strip()

    def chat_messages(
        self,
        value: Any,
        field: str,
        *,
        role_key: str = "role",
        content_key: str = "content",
        role_names: dict[str, str] | None = None,
    ) -> list[dict[str, str]]:
        """A list of chat messages -> ``[{"role", "content"}]`` (extra keys such as ``info`` dropped)."""
        role_names = role_names or {role: role for role in ROLES}
        if not isinstance(value, list):
            raise self.wrong_type(field, "a list of messages", value)
        if not value:
            raise self.empty(field, "expected a list of messages, got an empty list")
        messages = []
        for i, message in enumerate(value):
            where = f"{field}[{i}]"
            if not isinstance(message, dict):
                raise self.wrong_type(where, f"an object with '{role_key}' and '{content_key}'", message)
            for key in (role_key, content_key):
                if key not in message:
                    raise self.missing(f"{where}.{key}")
            role = message[role_key]
            if not isinstance(role, str):
                raise self.wrong_type(f"{where}.{role_key}", "a string", role)
            if role not in role_names:
                allowed = ", ".join(repr(name) for name in role_names)
                raise self.bad_value(f"{where}.{role_key}", f"expected one of {allowed}, got {role!r}")
            messages.append({"role": role_names[role], "content": self.text(message[content_key], f"{where}.{content_key}")})
        return messages

    def prompt_messages(self, value: Any, field: str) -> list[dict[str, str]]:
        """A prompt: a string (one user turn) or a list of chat messages."""
        if isinstance(value, str):
            return [{"role": "user", "content": self.text(value, field)}]
        if isinstance(value, list):
            return self.chat_messages(value, field)
        raise self.wrong_type(field, "a string or a list of messages", value)

    def conversation_shape(self, messages: list[dict[str, str]], field: str, role_key: str) -> None:
        """At least one user turn, and the assistant speaks last (so there is something to learn)."""
        roles = [message["role"] for message in messages]
        if "user" not in roles:
            raise self.bad_value(field, "expected at least one user message, found none")
        if roles[-1] != "assistant":
            last = f"{field}[{len(roles) - 1}].{role_key}"
            raise self.bad_value(last, f"the last message must be from the assistant, got {roles[-1]!r}")


def _leaf(field: str) -> str:
    """``messages[1].content`` -> ``content``: the reason for the skip summary, without the index."""
    return re.sub(r"\[\d+\]", "", field).rsplit(".", 1)[-1]
