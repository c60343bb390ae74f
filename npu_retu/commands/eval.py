"""``npu-retu eval``: avg@n and pass@k of a checkpoint on a problem set."""

from __future__ import annotations

HELP = "Evaluate a checkpoint on a problem set: avg@n and unbiased pass@k with math-verify (T=0.7, top-p 1.0 by default)."


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="a Hugging Face model folder (a checkpoint) or embedded:base")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run Python code the model folder ships (auto_map in its config.json); off by default: "
                             "such a folder is refused")
    parser.add_argument("--data", required=True, nargs="+",
                        help="problem files (RL rows: prompt + ground truth; JSONL / JSON / Parquet) or embedded:rl-test")
    parser.add_argument("--benchmark", default=None, choices=("gsm8k", "minerva_math", "olympiadbench", "aime24", "amc23"),
                        help="read --data as this math benchmark's original format (see data.schemas.load_benchmark)")
    parser.add_argument("-n", "--samples", type=int, default=4, help="samples per problem (default 4)")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature; 0 = greedy (default 0.7)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (default 1.0)")
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="response length limit (default 1024)")
    parser.add_argument("--k", type=int, nargs="*", default=[1], help="pass@k values to report (each <= samples)")
    parser.add_argument("--max-problems", type=int, default=0, help="only the first N problems (0: all)")
    parser.add_argument("--batch-size", type=int, default=256, help="sequences per generation batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="math-verify worker processes")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per verification before the worker is killed")
    parser.add_argument("--out", default=None, help="also write the result (with per-problem scores) to this JSON file")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args) -> int:
    import json
    from pathlib import Path

    from npu_retu.data.schemas import load_benchmark, load_rl
    from npu_retu.errors import UserError
    from npu_retu.eval.runner import evaluate
    from npu_retu.models.modeling import load_model, load_tokenizer, resolve_path
    from npu_retu.reward import make_reward
    from npu_retu.rollout import TransformersRollout

    if any(k < 1 or k > args.samples for k in args.k):
        raise UserError(f"--k values must be in 1..{args.samples} (the number of samples), got {args.k}")
    files = [resolve_path(f) for f in args.data]
    if args.benchmark:
        examples = [ex for f in files for ex in load_benchmark(f, args.benchmark)]
    else:
        examples = load_rl(files)
    if args.max_problems:
        examples = examples[: args.max_problems]
    tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    model = load_model(args.model, trust_remote_code=args.trust_remote_code)
    rollout = TransformersRollout(model, tokenizer, batch_size=args.batch_size)
    with make_reward("math_verify", num_workers=args.workers, timeout_s=args.timeout) as reward:
        result = evaluate(
            rollout, tokenizer, examples, reward.score, n=args.samples, temperature=args.temperature, top_p=args.top_p,
            max_new_tokens=args.max_new_tokens, seed=args.seed, ks=tuple(args.k),
        )
        stats = reward.stats()
    payload = {"model": str(args.model), "data": [str(f) for f in files], **result.to_dict(), "reward_stats": stats}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(payload, indent=2), encoding="utf-8")
    if args.json:
        print(json.dumps({k: v for k, v in payload.items() if k != "scores"}, indent=2))
    else:
        print(result.summary())
        if stats.get("timeouts") or stats.get("gold_unparsable"):
            print(f"reward: {stats.get('timeouts', 0)} verifications timed out, {stats.get('gold_unparsable', 0)} gold answers could not be parsed")
    return 0
