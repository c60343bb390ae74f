"""The two example types (SFT conversations, RL prompts with ground truth) and their loaders.

Accepted row shapes, all normalised to the same dataclasses:

* SFT: ``messages`` (role/content; the AM-DeepSeek-R1-Distilled shape with per-message ``info``,
  sometimes null, and ``messages[0].info.reference_answer``), ShareGPT ``conversations``
  (``from``/``value``, human/gpt), or ``prompt`` + ``response``.
* RL: a prompt (string or chat messages) under ``prompt`` / ``question`` / ``problem`` and a ground
  truth under ``ground_truth`` / ``answer`` / ``reward_model.ground_truth`` (Skywork-OR1, a
  JSON-encoded list string) / ``final_answer``; ground truth always becomes ``list[str]``. An RL
  row may carry expert trajectories (``expert``: a string, or ``experts``: a list of strings) for
  the synchronized SFT-RL algorithms (LUFFY / SRFT / UPT). An SFT row read as RL data is a prompt
  (the turns before the final assistant turn), its reference answer as ground truth and the final
  assistant turn as its expert (:func:`rl_example_from_row`); :func:`attach_experts` joins SFT files
  to RL prompts by prompt text, :func:`require_experts` checks that every prompt has its experts.
* Math benchmarks in the Qwen2.5-Math evaluation layout (gsm8k, minerva_math, olympiadbench, aime24,
  amc23) through :func:`load_benchmark`, which knows where each keeps its gold answer.

Every problem is a :class:`DataError` naming file, row and field, or a counted skip with
``skip_bad_rows``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from npu_retu.data.errors import BadRowCounter, DataError, format_source, parse_source
from npu_retu.data.readers import data_files, json_type_name, read_rows
from npu_retu.errors import UserError

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
PROMPT_KEYS = ("prompt", "question", "problem")
GROUND_TRUTH_KEYS = ("ground_truth", "answer", "reward_model.ground_truth", "final_answer")
AM_REFERENCE_FIELD = "messages[0].info.reference_answer"


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
    ``experts`` are expert trajectories for this prompt (assistant turn contents, in file order),
    which LUFFY / SRFT / UPT train on beside the rollouts; empty for plain RL.
    """

    prompt: list[dict[str, str]]
    ground_truth: list[str]
    source: str
    data_source: str | None = None
    experts: tuple[str, ...] = ()


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
    paths = [file for path in paths for file in data_files(path)]  # folders, globs, datasets folders -> their files
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
        reference = _am_deepseek_reference_answer(record, check)[0]
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


def _am_deepseek_reference_answer(record: dict[str, Any], check: _Checker) -> tuple[str | None, str | None]:
    """``messages[0].info.reference_answer`` when present (``info`` is sometimes null); when a system
    turn was put first, the first user turn's ``info`` carries it instead. Returns (the answer, the
    field it came from), or (None, None)."""
    for index, info in _am_deepseek_infos(record, check):
        reference = info.get("reference_answer")
        if reference is not None:
            field = f"messages[{index}].info.reference_answer"
            return check.answer_text(reference, field), field
    return None, None


def _am_deepseek_infos(record: dict[str, Any], check: _Checker) -> list[tuple[int, dict[str, Any]]]:
    """The non-null ``info`` objects of ``messages[0]`` and of the first user turn, with their index
    (call after the messages were checked: there is a user turn)."""
    messages = record["messages"]
    first_user = next(i for i, message in enumerate(messages) if message.get("role") == "user")
    infos = []
    for index in dict.fromkeys((0, first_user)):
        info = messages[index].get("info")
        if info is None:
            continue
        if not isinstance(info, dict):
            raise check.wrong_type(f"messages[{index}].info", "an object or null", info)
        infos.append((index, info))
    return infos


# --------------------------------------------------------------------------------------------
# RL rows


def rl_example_from_row(record: dict[str, Any], file: str, row: int) -> RLExample:
    """One RL row -> :class:`RLExample`; the ground truth is normalised to ``list[str]``.

    Two shapes, told apart by their keys:

    * **RL row**: a prompt key (``prompt`` / ``question`` / ``problem``) *and* a ground-truth key
      (``ground_truth`` / ``answer`` / ``reward_model`` / ``final_answer``), read exactly as before
      whatever else the row holds; optional ``expert`` (one trajectory, a string) or ``experts`` (a
      list of strings) become :attr:`RLExample.experts` (null is the same as absent).
    * **SFT row**, otherwise, when it has ``messages`` (AM-DeepSeek), ``conversations`` (ShareGPT)
      or ``prompt`` + ``response``, any shape :func:`sft_example_from_row` accepts: the prompt is the
      turns before the final assistant turn (the last of them must be a user turn), the ground truth
      is the reference answer (``messages[0].info.reference_answer``, or the first user turn's
      ``info`` when a system turn comes first; else a top-level ``reference_answer``; else a
      ground-truth key as above), and ``experts`` is the final assistant turn's content. Without a
      reference answer the row is a :class:`DataError` on ``messages[0].info.reference_answer``
      (``reference_answer`` for the other shapes): the reward needs an answer. ``data_source`` is the
      top-level one, else the AM-DeepSeek ``info.source``.

    Any other row is read as an RL row, whose error names the missing prompt or ground truth.
    """
    check = _Checker(file, row)
    if not has_rl_keys(record) and has_sft_keys(record):
        return _rl_example_from_sft_row(record, file, row, check)
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

    data_source = _data_source(record, check)
    return RLExample(
        prompt=prompt,
        ground_truth=ground_truth,
        source=format_source(file, row),
        data_source=data_source,
        experts=_row_experts(record, check),
    )


def has_rl_keys(record: dict[str, Any]) -> bool:
    """Whether a row looks like an RL row: a prompt key and a ground-truth key (:data:`PROMPT_KEYS`, :data:`GROUND_TRUTH_KEYS`)."""
    has_ground_truth = any(key.split(".", 1)[0] in record for key in GROUND_TRUTH_KEYS)
    return has_ground_truth and any(key in record for key in PROMPT_KEYS)


def has_sft_keys(record: dict[str, Any]) -> bool:
    """Whether a row looks like an SFT row: chat messages / conversations, or a prompt and a response."""
    return "messages" in record or "conversations" in record or ("prompt" in record and "response" in record)


def _data_source(record: dict[str, Any], check: _Checker) -> str | None:
    data_source = record.get("data_source")
    if data_source is not None and not isinstance(data_source, str):
        raise check.wrong_type("data_source", "a string or null", data_source)
    return data_source


def _row_experts(record: dict[str, Any], check: _Checker) -> tuple[str, ...]:
    """An RL row's ``expert`` (a string) or ``experts`` (a list of strings); null counts as absent."""
    expert, experts = record.get("expert"), record.get("experts")
    if expert is not None and experts is not None:
        raise check.bad_value("experts", "give 'expert' (one trajectory) or 'experts' (a list of them), not both")
    if expert is not None:
        return (check.text(expert, "expert"),)
    if experts is None:
        return ()
    if not isinstance(experts, list):
        raise check.wrong_type("experts", "a list of strings (expert trajectories)", experts)
    return tuple(check.text(text, f"experts[{i}]") for i, text in enumerate(experts))


def _rl_example_from_sft_row(record: dict[str, Any], file: str, row: int, check: _Checker) -> RLExample:
    """An SFT row (any shape) as an RL prompt with its reference answer and its expert trajectory."""
    sft = sft_example_from_row(record, file, row)
    prompt, final = sft.messages[:-1], sft.messages[-1]
    if prompt[-1]["role"] != "user":
        raise check.bad_value(
            _sft_role_field(record, len(prompt) - 1),
            f"the last message before the final assistant turn must be from the user (it is the RL prompt), "
            f"got {prompt[-1]['role']!r}",
        )

    ground_truth = None
    if "messages" in record:
        reference, field = _am_deepseek_reference_answer(record, check)
        if reference is not None:
            ground_truth = normalize_ground_truth(reference, check, field)
    if ground_truth is None and record.get("reference_answer") is not None:
        ground_truth = normalize_ground_truth(check.answer_text(record["reference_answer"], "reference_answer"), check, "reference_answer")
    if ground_truth is None:
        for key in GROUND_TRUTH_KEYS:
            value, found = _lookup(record, key, check)
            if found:
                ground_truth = normalize_ground_truth(value, check, key)
                break
    if ground_truth is None:
        field = AM_REFERENCE_FIELD if "messages" in record else "reference_answer"
        raise check.missing(
            field,
            "no reference answer; an RL prompt needs an answer for the reward (AM-DeepSeek "
            "messages[0].info.reference_answer, or a top-level 'reference_answer')",
        )

    data_source = _data_source(record, check)
    if data_source is None and "messages" in record:
        data_source = next(
            (info["source"] for _, info in _am_deepseek_infos(record, check) if isinstance(info.get("source"), str)), None
        )
    return RLExample(
        prompt=prompt,
        ground_truth=ground_truth,
        source=sft.source,
        data_source=data_source,
        experts=(final["content"],),
    )


def _sft_role_field(record: dict[str, Any], index: int) -> str:
    """The field of message ``index`` of the normalised SFT messages in the row as written."""
    if "messages" in record:
        return f"messages[{index}].role"
    if "conversations" in record:
        offset = 1 if record.get("system") is not None else 0  # the system prompt beside the turns came first
        return f"conversations[{index - offset}].from" if index >= offset else "system"
    return f"prompt[{index}].role" if isinstance(record.get("prompt"), list) else "prompt"


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
# expert trajectories for the synchronized SFT-RL algorithms (LUFFY / SRFT / UPT)


def expert_join_key(messages: list[dict[str, str]]) -> str | None:
    """What joins an SFT row to an RL prompt: the content of the last user message, stripped."""
    return next((m["content"].strip() for m in reversed(messages) if m["role"] == "user"), None)


def attach_experts(
    examples: Iterable[RLExample],
    sft_paths: str | Path | Iterable[str | Path],
    *,
    skip_bad_rows: bool = False,
    counter: BadRowCounter | None = None,
) -> list[RLExample]:
    """The RL examples with the expert trajectories of the SFT files (``rl.expert_files``) joined on.

    The SFT files are read with :func:`load_sft` (any accepted shape; bad rows are errors, or counted
    skips with ``skip_bad_rows``). An SFT row matches an RL prompt when the content of their last
    user message is the same (after ``strip()``); the final assistant turn of every matching row is
    appended, in file order, to that prompt's :attr:`RLExample.experts` (after any it already had).
    Returns new examples, in the same order; an unmatched prompt is returned unchanged. How many
    prompts got at least one expert is logged (INFO; a WARNING when none did); a caller that wants
    the number counts ``sum(1 for e in result if e.experts)``.
    """
    examples = list(examples)
    paths = [sft_paths] if isinstance(sft_paths, (str, Path)) else list(sft_paths)
    sft_examples = load_sft(paths, skip_bad_rows=skip_bad_rows, counter=counter)
    by_prompt: dict[str, list[str]] = {}
    for sft in sft_examples:
        key = expert_join_key(sft.messages[:-1])
        if key is not None:
            by_prompt.setdefault(key, []).append(sft.messages[-1]["content"])
    joined, matched, matched_keys = [], 0, set()
    for example in examples:
        key = expert_join_key(example.prompt)
        found = by_prompt.get(key, []) if key is not None else []
        if found:
            matched += 1
            matched_keys.add(key)
            example = dataclasses.replace(example, experts=example.experts + tuple(found))
        joined.append(example)
    files = [str(path) for path in paths]
    unused = sum(len(texts) for key, texts in by_prompt.items() if key not in matched_keys)
    message = (
        f"expert trajectories: {matched} of {len(examples)} RL prompts matched at least one of the "
        f"{len(sft_examples)} SFT rows of {', '.join(files)} by prompt text ({unused} SFT rows matched no prompt)"
    )
    (logger.info if matched else logger.warning)(message)
    return joined


def require_experts(
    examples: Iterable[RLExample],
    needed: int,
    *,
    algorithm: str,
    skip_bad_rows: bool = False,
    counter: BadRowCounter | None = None,
) -> list[RLExample]:
    """The examples that have at least ``needed`` expert trajectories (``rl.algorithm`` trains on that
    many per prompt).

    An example with fewer is a :class:`DataError` on its file and row, field ``experts``; with
    ``skip_bad_rows`` it is left out and counted in ``counter`` (a new counter, reported at the end,
    when none is given). Every example skipped is a DataError too: nothing would be left to train on.
    """
    examples = list(examples)
    if needed < 1:
        return examples
    report_at_end = counter is None
    counter = BadRowCounter() if counter is None else counter
    kept = []
    for example in examples:
        if len(example.experts) >= needed:
            kept.append(example)
            continue
        error = _missing_experts_error(example, needed, algorithm)
        if not skip_bad_rows:
            raise error
        counter.skip(error)
    if report_at_end and skip_bad_rows:
        counter.report()
    if examples and not kept:
        files = ", ".join(dict.fromkeys(parse_source(example.source)[0] for example in examples))
        raise DataError(
            files,
            f"no RL prompt has the {needed} expert trajector{'y' if needed == 1 else 'ies'} that rl.algorithm="
            f"{algorithm} needs ({len(examples)} skipped): {_EXPERT_SOURCES}",
        )
    return kept


_EXPERT_SOURCES = (
    "give SFT-format rows (AM-DeepSeek messages with info.reference_answer) as rl.train_files, "
    "or join an SFT file by prompt text with rl.expert_files"
)


def _missing_experts_error(example: RLExample, needed: int, algorithm: str) -> DataError:
    file, row = parse_source(example.source)
    if needed == 1:
        message = f"no expert trajectory for this prompt; rl.algorithm={algorithm} trains on one per prompt; {_EXPERT_SOURCES}"
    else:
        have = len(example.experts)
        message = (
            f"{'no' if have == 0 else f'only {have}'} expert trajector{'y' if have == 1 else 'ies'} for this "
            f"prompt; rl.algorithm={algorithm} trains on {needed} per prompt (rl.algo.experts_per_prompt); "
            f"{_EXPERT_SOURCES}"
        )
    return DataError(file, message, row=row, field="experts", reason="no expert trajectory")


# --------------------------------------------------------------------------------------------
# math benchmarks (Qwen2.5-Math evaluation layout)

BENCHMARKS = ("gsm8k", "minerva_math", "olympiadbench", "aime24", "aime25", "amc23", "math500")
BENCHMARK_ALIASES = {"minerva": "minerva_math", "olympiad": "olympiadbench", "olympiadbench_en": "olympiadbench",
                     "math_500": "math500", "math-500": "math500", "aime2024": "aime24", "aime2025": "aime25"}


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
    ``context`` + ``question``); aime24 / aime25 / amc23 ``answer`` (a number: 27.0 -> "27");
    math500 ``answer``, else the last ``\\boxed{...}`` of ``solution``. AIME25 is read in the layouts
    it is published in (``problem`` as in math-ai/aime25, ``question`` as in opencompass/AIME2025),
    MATH500 in HuggingFaceH4/MATH-500's (``problem``, ``solution``, ``answer``, ``subject``, ``level``).
    """
    name = name or Path(path).stem
    name = BENCHMARK_ALIASES.get(name, name)
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


_NAMED_ENTRY = re.compile(r"([A-Za-z][A-Za-z0-9_-]*)=(.+)")


def named_entry(entry: str) -> tuple[str | None, str]:
    """``("gsm8k", "/data/test.jsonl")`` for ``"gsm8k=/data/test.jsonl"``; ``(None, entry)`` when the
    entry has no ``NAME=`` prefix (a name is letters, digits, ``_`` and ``-``, so ``/data/a=b.jsonl`` is a path)."""
    match = _NAMED_ENTRY.fullmatch(entry)
    return (match.group(1), match.group(2)) if match else (None, entry)


def split_eval_entry(entry: str, key: str = "eval.files") -> tuple[str | None, str]:
    """``(benchmark, path)`` of one evaluation entry: ``"gsm8k=/data/gsm8k.jsonl"`` names the
    benchmark whose original format the file is in (:data:`BENCHMARKS`, or an alias such as
    ``minerva``), a plain path is a file of RL rows (prompt + answer). A ``NAME=`` prefix that is no
    benchmark is a one-line error naming ``key`` and the benchmarks."""
    given, path = named_entry(entry)
    if given is None:
        return None, entry
    name = BENCHMARK_ALIASES.get(given.lower(), given.lower())
    if name not in BENCHMARKS:
        raise UserError(f"{key}: {entry!r} names no benchmark {given!r}; use NAME=FILE with NAME one of "
                        f"{', '.join(BENCHMARKS)}, or a plain path for a file of RL rows (prompt + answer)")
    return name, path


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


def _aime25(record: dict[str, Any], check: _Checker) -> tuple[str, list[str]]:
    key = "problem" if "problem" in record else "question"
    problem = check.text(check.required(record, key), key)
    return problem, normalize_ground_truth(check.required(record, "answer"), check, "answer")


def _math500(record: dict[str, Any], check: _Checker) -> tuple[str, list[str]]:
    problem = check.text(check.required(record, "problem"), "problem")
    if record.get("answer") not in (None, ""):
        return problem, normalize_ground_truth(record["answer"], check, "answer")
    solution = check.text(check.required(record, "solution"), "solution")
    gold = last_boxed(solution)
    if gold is None:
        raise check.bad_value("solution", "no 'answer' and no \\boxed{...} answer in 'solution'")
    return problem, [gold]


_BENCHMARK_PARSERS: dict[str, Callable[[dict[str, Any], _Checker], tuple[str, list[str]]]] = {
    "gsm8k": _gsm8k,
    "minerva_math": _minerva,
    "olympiadbench": _olympiadbench,
    "aime24": _aime24,
    "aime25": _aime25,
    "amc23": _amc23,
    "math500": _math500,
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
