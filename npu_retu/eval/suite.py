"""Evaluation suites: several benchmarks, each read by its own loader and sampled with its own
settings, scored together as the paper reports them (§5, "Evaluation": T = 0.7, top-p 1.0, 8,192
response tokens, avg@16 on AIME24/25, the average over all problems).

One code path serves ``npu-retu eval`` and the evaluation points inside RL (and so the pipeline and
the experiments): :func:`evaluate_suite` generates and scores every benchmark with
:func:`npu_retu.eval.runner.evaluate`, and :func:`suite_point` turns the results into one point::

    specs = load_suite("retu_math", defaults, data_dir="/data/benchmarks")   # or suite_from_entries(cfg.eval.files, ...)
    problems = load_problems(specs, resolve)
    results = evaluate_suite(rollout, tokenizer, specs, problems, reward.score, seed=0, samples=samples)
    point = suite_point(results)      # avg_at_n over all problems, macro_avg_at_n, benchmarks: {name: ...}

A suite file (YAML) names its benchmarks and their settings; what a benchmark leaves out comes
from ``defaults:`` in the file, then from the caller (``eval.*`` of the config, or the command's flags)::

    defaults: {n: 4, temperature: 0.7, max_new_tokens: 8192,
               prompt_template: "{problem}\\nPlease reason step by step, and put your final answer within \\\\boxed{}."}
    benchmarks:
      - {name: aime24, n: 16}                    # file aime24.jsonl under the data folder, its own loader
      - {name: gsm8k, file: gsm8k/test.jsonl}
      - {name: my_set, file: my.parquet, loader: rl}   # RL rows (prompt + answer)

The shipped suites live in ``npu_retu/configs/eval/`` (:data:`SUITE_DIR`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npu_retu.data.schemas import BENCHMARK_ALIASES, BENCHMARKS, RLExample, load_benchmark, load_rl, split_eval_entry
from npu_retu.errors import UserError
from npu_retu.eval.metrics import avg_at_k, avg_at_k_stderr, mean_pass_at_k
from npu_retu.eval.runner import EvalResult, RewardFn, evaluate

from npu_retu.configs import CONFIG_DIR

SUITE_DIR = CONFIG_DIR / "eval"
PROBLEM_PLACEHOLDER = "{problem}"
RL_ROWS = "rl"  # the loader name of a file of RL rows (prompt + answer)
SETTINGS = ("n", "temperature", "top_p", "max_new_tokens", "prompt_template", "max_problems", "ks")
_SPEC_KEYS = ("name", "file", "loader", *SETTINGS)


@dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark of a suite: where its problems are, how they are read, and how they are sampled.

    ``loader`` is a math benchmark format (:data:`npu_retu.data.schemas.BENCHMARKS`) or ``"rl"`` for
    RL rows. ``prompt_template`` wraps each problem (``{problem}`` is replaced by it); empty: the
    problem as it is. ``max_problems`` 0 means all.
    """

    name: str
    file: str
    loader: str = RL_ROWS
    n: int = 4
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 1024
    prompt_template: str = ""
    max_problems: int = 0
    ks: tuple[int, ...] = (1,)

    def settings(self) -> dict[str, Any]:
        return {"n": self.n, "temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": self.max_new_tokens,
                "prompt_template": self.prompt_template, "max_problems": self.max_problems, "ks": list(self.ks)}


# --------------------------------------------------------------------------------------------
# building a suite


def make_spec(values: dict[str, Any], where: str) -> BenchmarkSpec:
    """A :class:`BenchmarkSpec` from plain values, each checked; ``where`` starts every error
    (``suite.yaml benchmark 2``, ``eval``)."""
    unknown = sorted(set(values) - set(_SPEC_KEYS))
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(_SPEC_KEYS)}")
    for key in ("name", "file"):
        if not isinstance(values.get(key), str) or not values[key].strip():
            raise UserError(f"{where}: '{key}' must be a non-empty string, got {values.get(key)!r}")
    loader = str(values.get("loader") or RL_ROWS).lower()
    loader = BENCHMARK_ALIASES.get(loader, loader)
    if loader != RL_ROWS and loader not in BENCHMARKS:
        raise UserError(f"{where}: 'loader' {values.get('loader')!r} is no benchmark format; choose one of "
                        f"{', '.join(BENCHMARKS)}, or {RL_ROWS} for RL rows (prompt + answer)")

    def number(key: str, kind: type, low: float, allowed: str, *, above: bool = False) -> Any:
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            raise UserError(f"{where}: '{key}' must be {allowed}, got {value!r}")
        if value < low or (above and value == low):
            raise UserError(f"{where}: '{key}' must be {allowed}, got {value!r}")
        return kind(value)

    n = number("n", int, 1, "an integer >= 1")
    temperature = number("temperature", float, 0.0, "a number >= 0 (0 = greedy)")
    top_p = number("top_p", float, 0.0, "a number in (0, 1]", above=True)
    if top_p > 1:
        raise UserError(f"{where}: 'top_p' must be a number in (0, 1], got {values['top_p']!r}")
    max_new_tokens = number("max_new_tokens", int, 1, "an integer >= 1")
    max_problems = number("max_problems", int, 0, "an integer >= 0 (0 = all)")
    template = values["prompt_template"] or ""
    if not isinstance(template, str) or (template and PROBLEM_PLACEHOLDER not in template):
        raise UserError(f"{where}: 'prompt_template' must be a string holding {PROBLEM_PLACEHOLDER} "
                        f"(or empty for the problem as it is), got {template!r}")
    ks = values["ks"]
    ks = [ks] if isinstance(ks, int) and not isinstance(ks, bool) else ks
    if not isinstance(ks, (list, tuple)) or not ks or not all(isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= n for k in ks):
        raise UserError(f"{where}: 'ks' must be pass@k values in 1..n ({n}), got {values['ks']!r}")
    return BenchmarkSpec(name=values["name"].strip(), file=values["file"], loader=loader, n=n, temperature=temperature,
                         top_p=top_p, max_new_tokens=max_new_tokens, prompt_template=template,
                         max_problems=max_problems, ks=tuple(sorted(set(ks))))


def suite_path(source: str) -> Path:
    """A suite file as given, else a shipped suite by name (``retu_math``)."""
    given = Path(source).expanduser()
    if given.is_file():
        return given
    shipped = SUITE_DIR / (source if source.endswith((".yaml", ".yml")) else f"{source}.yaml")
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in SUITE_DIR.glob("*.yaml")))
    raise UserError(f"evaluation suite not found: {source} (a YAML file, or a shipped suite: {names})")


def load_suite(source: str, defaults: dict[str, Any], *, data_dir: str | None = None,
               only: Sequence[str] = (), overrides: dict[str, Any] | None = None) -> list[BenchmarkSpec]:
    """The benchmarks of a suite file (or shipped suite name), settings filled from its ``defaults:``
    and then ``defaults``; ``overrides`` (a command's explicit flags) win over both and over each
    benchmark's own; a relative ``file`` is read under ``data_dir`` (else the suite file's
    folder), and defaults to ``<name>.jsonl`` (or ``<name>/test.jsonl`` where that exists: the
    Qwen2.5-Math evaluation layout). ``only`` keeps those benchmarks, in the suite's order."""
    import yaml

    path = suite_path(source)
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(content, dict) or not isinstance(content.get("benchmarks"), list) or not content["benchmarks"]:
        raise UserError(f"{path}: expected a mapping with a non-empty 'benchmarks' list (and optional 'defaults')")
    unknown = sorted(set(content) - {"benchmarks", "defaults", "description"})
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r}; allowed: benchmarks, defaults, description")
    file_defaults = content.get("defaults") or {}
    if not isinstance(file_defaults, dict) or set(file_defaults) - set(SETTINGS):
        bad = sorted(set(file_defaults) - set(SETTINGS)) if isinstance(file_defaults, dict) else ["(not a mapping)"]
        raise UserError(f"{path}: 'defaults' key {bad[0]!r} is not a setting; allowed: {', '.join(SETTINGS)}")
    root = Path(data_dir).expanduser() if data_dir else path.parent
    specs = []
    for number, entry in enumerate(content["benchmarks"], start=1):
        where = f"{path} benchmark {number}"
        if not isinstance(entry, dict):
            raise UserError(f"{where}: expected a mapping with at least 'name', got {entry!r}")
        values = {**defaults, **file_defaults, **entry, **(overrides or {})}
        name = values.get("name")
        if isinstance(name, str) and name:
            values.setdefault("loader", BENCHMARK_ALIASES.get(name.lower(), name.lower())
                              if BENCHMARK_ALIASES.get(name.lower(), name.lower()) in BENCHMARKS else RL_ROWS)
            if "file" not in values:
                nested = root / name / "test.jsonl"
                values["file"] = str(nested if nested.is_file() else root / f"{name}.jsonl")
            elif not (values["file"].startswith("embedded:") or Path(values["file"]).expanduser().is_absolute()):
                values["file"] = str(root / values["file"])
        specs.append(make_spec(values, where))
    names = [s.name for s in specs]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise UserError(f"{path}: benchmark {duplicate!r} is listed twice")
    if only:
        missing = [n for n in only if n not in names]
        if missing:
            raise UserError(f"--only: {path} has no benchmark {missing[0]!r}; it has {', '.join(names)}")
        specs = [s for s in specs if s.name in only]
    return specs


def suite_from_entries(entries: Sequence[str], defaults: dict[str, Any], *, key: str = "eval.files") -> list[BenchmarkSpec]:
    """One benchmark per ``eval.files`` entry: ``NAME=FILE`` through that benchmark's loader (named
    NAME), a plain path or ``embedded:`` set as RL rows (named by its file stem, ``rl-test``); every
    benchmark sampled with ``defaults``."""
    specs, names = [], []
    for entry in entries:
        loader, path = split_eval_entry(entry, key)
        name = loader or Path(path.split(":", 1)[-1] if path.startswith("embedded:") else path.rstrip("/")).stem
        base, count = name, 2
        while name in names:  # two files with one stem: a.jsonl, a-2
            name, count = f"{base}-{count}", count + 1
        names.append(name)
        specs.append(make_spec({**defaults, "name": name, "file": path, "loader": loader or RL_ROWS}, key))
    return specs


def apply_template(example: RLExample, template: str) -> RLExample:
    """``example`` with its last user turn wrapped in ``template`` (``{problem}`` replaced; no other
    brace is touched, so ``\\boxed{}`` stays as written)."""
    if not template:
        return example
    messages = [dict(m) for m in example.prompt]
    last_user = max(i for i, m in enumerate(messages) if m.get("role") == "user")
    messages[last_user]["content"] = template.replace(PROBLEM_PLACEHOLDER, messages[last_user]["content"])
    return dataclasses.replace(example, prompt=messages)


def load_problems(specs: Sequence[BenchmarkSpec], resolve: Callable[[str], str], *, skip_bad_rows: bool = False,
                  counter: Any = None) -> dict[str, list[RLExample]]:
    """Each benchmark's problems, read by its loader (``resolve`` turns a path or ``embedded:`` name into
    the path to read), cut to ``max_problems`` and wrapped in its prompt template."""
    problems = {}
    for spec in specs:
        path = resolve(spec.file)
        if spec.loader == RL_ROWS:
            examples = load_rl([path], skip_bad_rows=skip_bad_rows, counter=counter)
        else:
            examples = load_benchmark(path, spec.loader, skip_bad_rows=skip_bad_rows, counter=counter)
        if spec.max_problems:
            examples = examples[: spec.max_problems]
        if not examples:
            raise UserError(f"benchmark {spec.name}: no problems in {spec.file}")
        problems[spec.name] = [apply_template(ex, spec.prompt_template) for ex in examples]
    return problems


# --------------------------------------------------------------------------------------------
# running and reporting


EvaluateFn = Callable[..., EvalResult]


def evaluate_suite(
    rollout: Any, tokenizer: Any, specs: Sequence[BenchmarkSpec], problems: dict[str, list[RLExample]], reward_fn: RewardFn,
    *, seed: int | None, evaluate_fn: EvaluateFn = evaluate, samples: dict[str, list[dict]] | None = None,
    show_progress: bool = False,
) -> dict[str, EvalResult]:
    """Every benchmark's :class:`~npu_retu.eval.runner.EvalResult`, generated with its own settings
    and ``seed`` (each benchmark's samples do not depend on which others are in the suite).
    ``evaluate_fn`` is :func:`~npu_retu.eval.runner.evaluate` or a sharded equivalent taking the same
    arguments; with ``samples`` given, each benchmark's per-sample records are collected in it;
    ``show_progress`` draws a progress bar (or prints progress lines) per benchmark."""
    results = {}
    for spec in specs:
        kept: list[dict] | None = [] if samples is not None else None
        results[spec.name] = evaluate_fn(
            rollout, tokenizer, problems[spec.name], reward_fn, n=spec.n, temperature=spec.temperature, top_p=spec.top_p,
            max_new_tokens=spec.max_new_tokens, seed=seed, ks=spec.ks, samples=kept,
            progress=f"eval {spec.name}" if show_progress else None,
        )
        if samples is not None:
            samples[spec.name] = kept
    return results


def split_by_source(name: str, result: EvalResult, examples: Sequence[RLExample]) -> dict[str, EvalResult]:
    """An RL-rows benchmark whose rows carry several ``data_source`` tags (verl's combined test files)
    as one result per tag; any other as ``{name: result}``."""
    sources = [ex.data_source for ex in examples]
    if len(set(sources)) < 2:
        return {name: result}
    out = {}
    for source in dict.fromkeys(sources):
        keep = [i for i, s in enumerate(sources) if s == source]
        out[source or "other"] = subset(result, keep)
    return out


def subset(result: EvalResult, indices: Sequence[int]) -> EvalResult:
    """``result`` over the problems at ``indices`` only (metrics recomputed; response lengths kept
    as the whole benchmark's)."""
    scores = [result.scores[i] for i in indices]
    correct = [[s > 0 for s in row] for row in scores]
    return dataclasses.replace(
        result, scores=scores, avg_at_n=avg_at_k(scores), avg_at_n_stderr=avg_at_k_stderr(scores),
        pass_at_k={k: mean_pass_at_k(correct, k) for k in result.pass_at_k}, num_problems=len(scores),
    )


def suite_point(results: dict[str, EvalResult], examples: dict[str, list[RLExample]] | None = None) -> dict[str, Any]:
    """One evaluation point from the benchmarks' results.

    One benchmark: its :meth:`EvalResult.to_dict` as it is. Several: ``avg_at_n`` / its s.e. over
    all problems (the paper's "average performance on these unique problems"), ``macro_avg_at_n``
    (the unweighted mean of the benchmarks), ``benchmarks`` (each one's result without its scores),
    ``scores`` (all problems, benchmark by benchmark) and ``n`` etc. where every benchmark shares them.
    """
    groups: dict[str, EvalResult] = {}
    for name, result in results.items():
        groups.update(split_by_source(name, result, examples[name]) if examples else {name: result})
    if len(groups) == 1:
        return next(iter(groups.values())).to_dict()
    scores = [row for r in groups.values() for row in r.scores]
    common_ks = sorted(set.intersection(*(set(r.pass_at_k) for r in groups.values())))
    correct = [[s > 0 for s in row] for row in scores]
    samples = sum(r.num_problems * r.n for r in groups.values())
    point: dict[str, Any] = {
        "scores": scores,
        "avg_at_n": avg_at_k(scores),
        "avg_at_n_stderr": avg_at_k_stderr(scores),
        "macro_avg_at_n": sum(r.avg_at_n for r in groups.values()) / len(groups),
        "pass_at_k": {str(k): mean_pass_at_k(correct, k) for k in common_ks},
        "num_problems": len(scores),
        "mean_response_tokens": sum(r.mean_response_tokens * r.num_problems * r.n for r in groups.values()) / samples,
        "truncated_fraction": sum(r.truncated_fraction * r.num_problems * r.n for r in groups.values()) / samples,
        "benchmarks": {name: {k: v for k, v in r.to_dict().items() if k != "scores"} for name, r in groups.items()},
    }
    for setting in ("n", "temperature", "top_p", "max_new_tokens", "seed"):
        values = {getattr(r, setting) for r in groups.values()}
        point[setting] = values.pop() if len(values) == 1 else None
    point["metric"] = f"avg@{point['n']}" if point["n"] else "avg@n"
    point["summary"] = (f"{point['metric']} = {100 * point['avg_at_n']:.1f}% ± {100 * point['avg_at_n_stderr']:.1f} over "
                        f"{point['num_problems']} problems of {len(groups)} benchmarks, macro average "
                        f"{100 * point['macro_avg_at_n']:.1f}%")
    return point


def format_table(point: dict[str, Any]) -> str:
    """The per-benchmark table of a point (Markdown): benchmark, problems, n, avg@n ± s.e., pass@k,
    mean response tokens, truncated share; then the average over all problems and the macro average."""
    rows = point.get("benchmarks") or {"all": point}
    ks = sorted({int(k) for r in rows.values() for k in r.get("pass_at_k", {}) if int(k) > 1})
    head = ["benchmark", "problems", "n", "avg@n (%)", "± s.e."] + [f"pass@{k} (%)" for k in ks] + ["mean tokens", "truncated (%)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        cells = [name, str(r["num_problems"]), str(r["n"]), f"{100 * r['avg_at_n']:.1f}", f"{100 * r['avg_at_n_stderr']:.1f}"]
        cells += [f"{100 * r['pass_at_k'][str(k)]:.1f}" if str(k) in r.get("pass_at_k", {}) else "-" for k in ks]
        cells += [f"{r['mean_response_tokens']:.0f}", f"{100 * r['truncated_fraction']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if point.get("benchmarks"):
        lines.append(f"\nall {point['num_problems']} problems: {100 * point['avg_at_n']:.1f}% ± {100 * point['avg_at_n_stderr']:.1f}; "
                     f"macro average over {len(rows)} benchmarks: {100 * point['macro_avg_at_n']:.1f}%")
    return "\n".join(lines)


def write_generations(folder: Path, specs: Sequence[BenchmarkSpec], problems: dict[str, list[RLExample]],
                      results: dict[str, EvalResult], samples: dict[str, list[dict]]) -> tuple[Path, Path]:
    """``generations.jsonl`` (one line per sample: benchmark, problem index, source row, prompt,
    gold answers, sample index, response, score, tokens, finish reason) and ``items.jsonl`` (one line
    per problem: its scores and their mean) in ``folder``, each written whole or not at all."""
    folder.mkdir(parents=True, exist_ok=True)

    def generation_lines():
        for spec in specs:
            examples = problems[spec.name]
            for record in samples[spec.name]:
                example = examples[record["problem"]]
                yield {"benchmark": spec.name, "problem": record["problem"], "source": example.source,
                       "prompt": example.prompt[-1]["content"], "ground_truth": example.ground_truth, **{k: v for k, v in record.items() if k != "problem"}}

    def item_lines():
        for spec in specs:
            for index, (example, row) in enumerate(zip(problems[spec.name], results[spec.name].scores)):
                yield {"benchmark": spec.name, "problem": index, "source": example.source,
                       "data_source": example.data_source, "ground_truth": example.ground_truth,
                       "scores": row, "mean": sum(row) / len(row)}

    return _write_jsonl(folder / "generations.jsonl", generation_lines()), _write_jsonl(folder / "items.jsonl", item_lines())


def _write_jsonl(path: Path, lines) -> Path:
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)
    return path


# --------------------------------------------------------------------------------------------
# the one entry point of the commands and trainers


@dataclass
class Suite:
    """Loaded benchmarks: their specs, in order, and each one's problems."""

    specs: list[BenchmarkSpec]
    problems: dict[str, list[RLExample]]

    @property
    def num_problems(self) -> int:
        return sum(len(p) for p in self.problems.values())

    def describe(self) -> str:
        """``200 problems`` for one benchmark, ``2,157 problems of 6 benchmarks (gsm8k 1317, ...)`` for several."""
        if len(self.specs) == 1:
            return f"{self.num_problems} problems"
        parts = ", ".join(f"{s.name} {len(self.problems[s.name])}" for s in self.specs)
        return f"{self.num_problems} problems of {len(self.specs)} benchmarks ({parts})"


def config_defaults(e: Any, max_response_length: int) -> dict[str, Any]:
    """The benchmark settings an ``eval:`` config section gives (``eval.max_new_tokens`` 0 = ``max_response_length``)."""
    return {"n": e.n, "temperature": e.temperature, "top_p": e.top_p, "max_new_tokens": e.max_new_tokens or max_response_length,
            "prompt_template": e.prompt_template, "max_problems": e.max_problems, "ks": list(e.ks)}


def suite_from_config(e: Any, max_response_length: int, resolve: Callable[[str], str], *, skip_bad_rows: bool = False,
                      counter: Any = None) -> Suite | None:
    """The evaluation of an ``eval:`` config section: ``eval.suite`` when set (its relative files under
    ``eval.suite_data_dir``), else one benchmark per ``eval.files`` entry; None when there is none."""
    defaults = config_defaults(e, max_response_length)
    if e.suite:
        specs = load_suite(e.suite, defaults, data_dir=e.suite_data_dir or None)
    elif e.files:
        specs = suite_from_entries(e.files, defaults)
    else:
        return None
    return Suite(specs, load_problems(specs, resolve, skip_bad_rows=skip_bad_rows, counter=counter))


def run_suite(rollout: Any, tokenizer: Any, suite: Suite, reward_fn: RewardFn, *, seed: int | None,
              evaluate_fn: EvaluateFn = evaluate, save_to: Path | None = None, write: bool = True,
              show_progress: bool = True) -> dict[str, Any]:
    """Evaluate every benchmark of ``suite`` (:func:`evaluate_suite`) and return the point
    (:func:`suite_point`); with ``save_to``, the generations and per-item scores are written there
    (:func:`write_generations`; only where ``write``, the main rank, while every rank collects) and
    the point names the two files."""
    samples: dict[str, list[dict]] | None = {} if save_to is not None else None
    results = evaluate_suite(rollout, tokenizer, suite.specs, suite.problems, reward_fn, seed=seed,
                             evaluate_fn=evaluate_fn, samples=samples, show_progress=show_progress and write)
    point = suite_point(results, suite.problems)
    point["suite"] = [{"name": s.name, "file": s.file, "loader": s.loader, **s.settings()} for s in suite.specs]
    if save_to is not None and samples is not None and write:
        generations, items = write_generations(save_to, suite.specs, suite.problems, results, samples)
        point["generations"], point["items"] = str(generations), str(items)
    return point
