"""Curation: decontaminate training sets against evaluation problems, and label problems' difficulty
by win rate (the paper's Table 3 procedure, Appendix B.1).

    report = decontaminate(["train.jsonl"], ["gsm8k.jsonl", "aime24.jsonl"], "train.clean.jsonl")
    print(report.summary())
    sample_answers("rl.jsonl", ["embedded:base"], "answers.jsonl", k=2)   # npu_retu.eval.answers
    with make_reward("math_verify") as reward:
        labels = label_difficulty("rl.jsonl", "answers.jsonl", "labelled.jsonl", reward=reward)

**Decontamination** compares problem texts: a training row's problem is its user turn(s) (SFT rows
in any shape :func:`~npu_retu.data.schemas.sft_example_from_row` reads, e.g. AM-DeepSeek
``messages``) or its prompt (RL rows, :func:`~npu_retu.data.schemas.rl_example_from_row`); an
evaluation problem is what :func:`~npu_retu.data.schemas.load_benchmark` reads as the prompt for a
file named after a benchmark (or given as ``NAME=FILE``), else the problem of any row as above. Both
are normalised by :func:`normalize_words`. A training row is removed when its words share an n-gram
(default 13) with an evaluation problem, or when its whole normalised text equals one (an evaluation
problem shorter than n words has no n-gram, so only this exact match can catch it). The evaluation
n-grams are kept in a hash table (each hit re-checked word by word); training rows are streamed.

**Difficulty**: a problem's win rate is the share of sampled answers that the math-verify reward
scores correct, WR = S / N (Appendix B.1); ``hard`` when WR <= a, ``easy`` when WR >= b, else
``medium``. The defaults a, b = 0.25, 1.0 are the paper's (4 attempts of DeepSeek-R1-Distill-1.5B:
Easy WR = 1, Hard WR = 0 or 0.25). The paper's Uniform102K is a uniform sample of the whole pool, not a
band of win rates, so it has no label here: draw it from the unlabelled rows.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npu_retu.data.errors import DataError, parse_source
from npu_retu.data.readers import data_files, read_rows
from npu_retu.data.schemas import (
    BENCHMARKS,
    BENCHMARK_ALIASES,
    has_rl_keys,
    has_sft_keys,
    load_benchmark,
    named_entry,
    rl_example_from_row,
    sft_example_from_row,
)
from npu_retu.errors import UserError

NGRAM = 13
NORMALISATION = (
    "Unicode NFKC, lower-case, every character that is not a letter, digit or whitespace (underscore "
    "included) replaced by a space, split on whitespace"
)
_NOT_WORD = re.compile(r"[\W_]+")
OUTPUT_SUFFIXES = (".jsonl", ".parquet")
DEFAULT_THRESHOLDS = (0.25, 1.0)
WRITE_BATCH_ROWS = 4096


def normalize_words(text: str) -> list[str]:
    """The words n-grams are taken over (see :data:`NORMALISATION`): ``"Find $x^2$, if x=3."`` ->
    ``["find", "x", "2", "if", "x", "3"]``."""
    return _NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).split()


def problem_text(record: dict[str, Any], file: str, row: int) -> str:
    """The problem of one training or evaluation row: the user turns of an SFT row (the trajectory is
    not compared), the user turns of an RL row's prompt; joined by newlines."""
    if not has_rl_keys(record) and has_sft_keys(record):
        messages = sft_example_from_row(record, file, row).messages[:-1]
    else:
        messages = rl_example_from_row(record, file, row).prompt
    return "\n".join(message["content"] for message in messages if message["role"] == "user")


# --------------------------------------------------------------------------------------------
# decontamination


@dataclass(frozen=True)
class EvalProblem:
    eval_set: str
    file: str
    row: int
    words: tuple[str, ...]


def load_eval_problems(entry: str) -> list[EvalProblem]:
    """The problems of one ``--eval`` entry: ``FILE`` or ``NAME=FILE``. A benchmark name (the
    file's stem by default: ``gsm8k.jsonl``) reads the file with that benchmark's loader; any other
    name reads rows as training rows are read."""
    name, path = named_entry(entry)
    problems = []
    for file in data_files(path):
        set_name = name or Path(file).stem
        benchmark = BENCHMARK_ALIASES.get(set_name, set_name)
        if benchmark in BENCHMARKS:
            for example in load_benchmark(file, benchmark):
                source_file, row = parse_source(example.source)
                problems.append(EvalProblem(set_name, source_file, row, tuple(normalize_words(example.prompt[-1]["content"]))))
        else:
            for row, record in read_rows(file):
                problems.append(EvalProblem(set_name, file, row, tuple(normalize_words(problem_text(record, file, row)))))
    return problems


class EvalIndex:
    """Every n-gram of the evaluation problems in a hash table, and their whole normalised texts."""

    def __init__(self, problems: list[EvalProblem], n: int = NGRAM) -> None:
        if n < 1:
            raise UserError(f"--ngram must be >= 1, got {n}")
        self.problems, self.n = problems, n
        self.ngrams: dict[int, tuple[int, int]] = {}  # hash of the joined n-gram -> (problem, start)
        self.exact: dict[str, int] = {}
        for index, problem in enumerate(problems):
            if not problem.words:
                continue
            self.exact.setdefault(" ".join(problem.words), index)
            for start in range(len(problem.words) - n + 1):
                self.ngrams.setdefault(hash(" ".join(problem.words[start : start + n])), (index, start))

    def match(self, words: list[str]) -> tuple[EvalProblem, str] | None:
        """The first evaluation problem these words overlap, and the shared text (or "exact match")."""
        if not words:
            return None
        hit = self.exact.get(" ".join(words))
        if hit is not None:
            return self.problems[hit], "exact match"
        n, ngrams = self.n, self.ngrams
        for start in range(len(words) - n + 1):
            gram = words[start : start + n]
            found = ngrams.get(hash(" ".join(gram)))
            if found is not None:
                problem = self.problems[found[0]]
                if list(problem.words[found[1] : found[1] + n]) == gram:  # a hash collision is no overlap
                    return problem, " ".join(gram)
        return None


@dataclass
class DecontaminationReport:
    ngram: int
    train_files: list[str]
    eval_sets: dict[str, dict[str, Any]]
    out: str
    rows_read: int = 0
    rows_kept: int = 0
    removed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def removed_by_eval_set(self) -> dict[str, int]:
        counts = Counter(entry["eval_set"] for entry in self.removed)
        return {name: counts.get(name, 0) for name in self.eval_sets}

    def to_dict(self) -> dict[str, Any]:
        return {
            "ngram": self.ngram,
            "normalisation": NORMALISATION,
            "train_files": self.train_files,
            "eval_sets": self.eval_sets,
            "out": self.out,
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "rows_removed": len(self.removed),
            "removed_by_eval_set": self.removed_by_eval_set,
            "removed": self.removed,
        }

    def summary(self, shown: int = 8) -> str:
        """A screenful: counts, per evaluation set, and the first removed rows."""
        lines = [
            f"decontaminate ({self.ngram}-gram overlap or exact match): {self.rows_read} rows read, "
            f"{len(self.removed)} removed, {self.rows_kept} kept -> {self.out}"
        ]
        for name, count in self.removed_by_eval_set.items():
            lines.append(f"  {name:<16} {self.eval_sets[name]['problems']:>6} problems  {count:>6} training rows removed")
        for entry in self.removed[:shown]:
            lines.append(
                f"  removed {entry['file']} row {entry['row']}: {entry['eval_set']} {entry['eval_file']} row "
                f"{entry['eval_row']}: {_clip(entry['shared'])}"
            )
        if len(self.removed) > shown:
            lines.append(f"  ... and {len(self.removed) - shown} more (see the report)")
        return "\n".join(lines)


def _clip(text: str, limit: int = 70) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def decontaminate(
    train: list[str], evals: list[str], out: str | Path, *, ngram: int = NGRAM, report: str | Path | None = None
) -> DecontaminationReport:
    """Write the training rows that share no ``ngram``-gram (and no whole text) with any evaluation
    problem to ``out`` (.jsonl or .parquet), in file order; return (and write to ``report``) what was
    removed and why."""
    train_files = [file for entry in train for file in data_files(entry)]
    problems = [problem for entry in evals for problem in load_eval_problems(entry)]
    eval_files = sorted({problem.file for problem in problems})
    check_outputs(out, report, train_files + eval_files)
    index = EvalIndex(problems, ngram)
    eval_sets: dict[str, dict[str, Any]] = {}
    for problem in problems:
        info = eval_sets.setdefault(problem.eval_set, {"files": [], "problems": 0})
        info["problems"] += 1
        if problem.file not in info["files"]:
            info["files"].append(problem.file)
    result = DecontaminationReport(ngram=ngram, train_files=train_files, eval_sets=eval_sets, out=str(out))

    def kept_rows() -> Iterator[dict[str, Any]]:
        for file in train_files:
            for row, record in read_rows(file):
                result.rows_read += 1
                match = index.match(normalize_words(problem_text(record, file, row)))
                if match is None:
                    result.rows_kept += 1
                    yield record
                    continue
                problem, shared = match
                result.removed.append({
                    "file": file, "row": row, "eval_set": problem.eval_set, "eval_file": problem.file,
                    "eval_row": problem.row, "match": "exact" if shared == "exact match" else f"{ngram}-gram",
                    "shared": shared,
                })

    write_rows_streaming(out, kept_rows(), schema_from=train_files)
    if report is not None:
        _atomic_text(Path(report), json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return result


def check_outputs(out: str | Path, report: str | Path | None, inputs: list[str]) -> None:
    """Refuse an output that is an input (or the other output), or an output type we cannot write."""
    if Path(out).suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError(f"--out {out}: use a .jsonl or .parquet file")
    outputs = [("--out", Path(out))] + ([("--report", Path(report))] if report is not None else [])
    if report is not None and Path(report).resolve() == Path(out).resolve():
        raise UserError(f"--report {report} is the same file as --out")
    for flag, path in outputs:
        for file in inputs:
            if path.resolve() == Path(file).resolve():
                raise UserError(f"{flag} {path} is an input file; refusing to overwrite it: write to another path")


# --------------------------------------------------------------------------------------------
# writing rows: a temp file beside the output, renamed into place


def _temp_path(path: Path) -> Path:
    return path.with_name(f".tmp-{path.name}-{os.getpid()}")


def _atomic_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_rows_streaming(path: str | Path, rows: Iterator[dict[str, Any]], *, schema_from: list[str] = ()) -> int:
    """Write rows to ``.jsonl`` (a line each) or ``.parquet`` atomically; returns the row count.

    Parquet output streams in batches with the input's schema when every input is Parquet with one
    schema (so the rows come back as they were); otherwise the rows are gathered and the schema inferred.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    count = 0
    try:
        if path.suffix.lower() == ".jsonl":
            with open(tmp, "w", encoding="utf-8") as handle:
                for row in rows:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                    count += 1
        else:
            schema = _common_parquet_schema(list(schema_from))
            if schema is None:
                table = pa.Table.from_pylist(list(rows))
                count = table.num_rows
                pq.write_table(table, tmp)
            else:
                with pq.ParquetWriter(tmp, schema) as writer:
                    batch: list[dict[str, Any]] = []
                    for row in rows:
                        batch.append(row)
                        if len(batch) == WRITE_BATCH_ROWS:
                            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                            count, batch = count + len(batch), []
                    writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                    count += len(batch)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count


def _common_parquet_schema(files: list[str]) -> Any:
    import pyarrow.parquet as pq

    if not files or any(Path(f).suffix.lower() != ".parquet" for f in files):
        return None
    schemas = [pq.read_schema(f) for f in files]
    return schemas[0] if all(s.equals(schemas[0]) for s in schemas) else None


# --------------------------------------------------------------------------------------------
# difficulty by win rate


ANSWER_FIELDS = ("problem", "model", "response")


@dataclass
class DifficultyReport:
    out: str
    thresholds: tuple[float, float]
    models: list[str]
    rows: int = 0
    answers_scored: int = 0
    answers_ignored: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    mean_win_rate_by_steps: dict[int, float] = field(default_factory=dict)

    def summary(self) -> str:
        a, b = self.thresholds
        lines = [
            f"difficulty: {self.rows} rows labelled from {self.answers_scored} answers of {', '.join(self.models)} "
            f"(hard: WR <= {a}, easy: WR >= {b}) -> {self.out}",
            "  " + ", ".join(f"{label} {self.labels.get(label, 0)}" for label in ("easy", "medium", "hard")),
        ]
        if self.answers_ignored:
            lines.append(f"  {self.answers_ignored} answers were for problems not in the input: ignored")
        if self.mean_win_rate_by_steps:
            by_steps = ", ".join(f"{s} ops {wr:.2f}" for s, wr in sorted(self.mean_win_rate_by_steps.items()))
            lines.append(f"  mean win rate by number of operations: {by_steps}")
        return "\n".join(lines)


def parse_thresholds(text: str) -> tuple[float, float]:
    """``"0.25,1.0"`` -> (0.25, 1.0), with 0 <= a < b <= 1."""
    try:
        a, b = (float(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"--thresholds {text!r}: expected two numbers a,b (hard: WR <= a, easy: WR >= b)") from None
    if not 0 <= a < b <= 1:
        raise UserError(f"--thresholds {text!r}: need 0 <= a < b <= 1")
    return a, b


def difficulty_label(win_rate: float, thresholds: tuple[float, float] = DEFAULT_THRESHOLDS) -> str:
    """``hard`` when WR <= a, ``easy`` when WR >= b, else ``medium``."""
    a, b = thresholds
    return "hard" if win_rate <= a else "easy" if win_rate >= b else "medium"


def read_answers(path: str | Path) -> Iterator[tuple[int, str, str, str]]:
    """``(row, problem, model, response)`` for each row of an answers file: one JSON object per sampled
    answer with string fields ``problem`` (the problem text, as :func:`problem_text` gives it),
    ``model`` (any name) and ``response`` (the answer text)."""
    file = str(path)
    for row, record in read_rows(file):
        values = []
        for key in ANSWER_FIELDS:
            if key not in record:
                raise DataError(file, f"missing (an answer row is {{{', '.join(ANSWER_FIELDS)}}})", row=row, field=key)
            if not isinstance(record[key], str):
                raise DataError(file, f"expected a string, got {type(record[key]).__name__}", row=row, field=key)
            values.append(record[key])
        yield row, *values


def label_difficulty(
    source: str,
    answers: str | Path,
    out: str | Path,
    *,
    thresholds: tuple[float, float] = DEFAULT_THRESHOLDS,
    models: list[str] | None = None,
    reward: Any,
) -> DifficultyReport:
    """Add ``win_rate`` and ``difficulty`` to every row of ``source`` (its answers scored against the
    row's ground truth with the math-verify reward) and write them to ``out``.

    ``models`` keeps only those models' answers (the paper labels by the 1.5B model alone); every
    row needs at least one answer. ``reward`` is a scorer with ``score([(response, answers), ...])
    -> scores``, the RL reward: ``npu_retu.reward.make_reward("math_verify")``.
    """
    files = data_files(source)
    check_outputs(out, None, files + [str(answers)])
    records: list[dict[str, Any]] = []
    where: list[tuple[str, int]] = []
    problems: list[str] = []
    truths: dict[str, list[str]] = {}
    for file in files:
        for row, record in read_rows(file):
            problem = problem_text(record, file, row)
            truths.setdefault(problem, rl_example_from_row(record, file, row).ground_truth)
            records.append(record)
            where.append((file, row))
            problems.append(problem)

    items, keys, used_models, ignored = [], [], [], 0
    for _, problem, model, response in read_answers(answers):
        if models and model not in models:
            continue
        if problem not in truths:
            ignored += 1
            continue
        items.append((response, truths[problem]))
        keys.append(problem)
        if model not in used_models:
            used_models.append(model)
    for model in models or []:
        if model not in used_models:
            raise UserError(f"{answers}: no answers from model {model!r} for the problems of {source}")
    scores = _score(items, reward)
    correct: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for problem, score in zip(keys, scores):
        correct[problem][0] += score > 0
        correct[problem][1] += 1

    report = DifficultyReport(out=str(out), thresholds=thresholds, models=used_models, answers_scored=len(items), answers_ignored=ignored)
    by_steps: dict[int, list[float]] = defaultdict(list)

    def labelled() -> Iterator[dict[str, Any]]:
        for record, (file, row), problem in zip(records, where, problems):
            if problem not in correct:
                raise DataError(file, f"no answers for this problem in {answers}", row=row)
            wins, total = correct[problem]
            win_rate = wins / total
            label = difficulty_label(win_rate, thresholds)
            report.rows += 1
            report.labels[label] = report.labels.get(label, 0) + 1
            steps = _steps(record)
            if steps is not None:
                by_steps[steps].append(win_rate)
            yield {**record, "win_rate": win_rate, "difficulty": label}

    write_rows_streaming(out, labelled())
    report.mean_win_rate_by_steps = {s: sum(v) / len(v) for s, v in by_steps.items()}
    return report


def _score(items: list[tuple[str, list[str]]], reward: Any) -> list[float]:
    return list(reward.score(items)) if items else []


def _steps(record: dict[str, Any]) -> int | None:
    """The number of operations of an embedded problem (npu_retu.data.synthetic rows carry it)."""
    extra = record.get("extra_info")
    if isinstance(extra, dict) and isinstance(extra.get("steps"), int):
        return extra["steps"]
    messages = record.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[0], dict):
        info = messages[0].get("info")
        if isinstance(info, dict) and isinstance(info.get("difficulty"), int):
            return info["difficulty"]
    return None
