"""``npu-retu bench``: benchmarks that print and save their figures (the benchmarks are :mod:`npu_retu.bench`)."""

from __future__ import annotations

HELP = ("Benchmarks that print and save figures: `bench sft`, `bench rl` (step time split, tokens/s), "
        "`bench rollout` (tokens/s of each rollout engine, interleaved), `bench reward` (verifications/s), `bench kernels` (fused log-probs and policy loss vs PyTorch / torch.compile / Liger / Cut Cross-Entropy), "
        "`bench data` (rows/s and peak memory of reading + tokenizing, 1 and 2 workers, cold and warm cache).")


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    sft = sub.add_parser("sft", help="tokens/s and peak memory of the SFT step for a config (default: demo_cpu)",
                         description="Time SFT optimizer steps (forward, backward, AdamW) on the current device for a config and save the figures as JSON.")
    sft.add_argument("--config", default="demo_cpu", help="config whose model, data and batch sizes are measured")
    sft.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    sft.add_argument("--steps", type=int, default=20, help="timed optimizer steps (after --warmup)")
    sft.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    sft.add_argument("--out", default="runs/bench/sft.json", help="where to save the JSON figures")


    rl = sub.add_parser("rl", help="time split (rollout / reward / log-probs / update) and tokens/s of the RL step",
                        description="Run real RL steps of a config (no evaluation, no checkpoints) and save the median time split and throughput as JSON.")
    rl.add_argument("--config", default="demo_cpu", help="config whose model, data, batch sizes and algorithm are measured")
    rl.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    rl.add_argument("--model", default=None, help="start from this checkpoint (default: the config's model.path)")
    rl.add_argument("--steps", type=int, default=5, help="timed RL steps (after --warmup)")
    rl.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    rl.add_argument("--out", default="runs/bench/rl.json", help="where to save the JSON figures")
    rollout = sub.add_parser(
        "rollout", help="generated tokens/s of each installed rollout engine (transformers, vllm) on the same prompts",
        description=("Generate with each engine on the same prompts and settings, in interleaved rounds (each engine in "
                     "its own process, started once), and save the median and spread of tokens/s as JSON."))
    rollout.add_argument("--config", default="demo_cpu", help="config whose model, RL prompts and sampling settings are used")
    rollout.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    rollout.add_argument("--engines", default="transformers,vllm", help="engines to compare (vllm is left out where not installed)")
    rollout.add_argument("--prompts", type=int, default=64, help="prompts per round")
    rollout.add_argument("--n", type=int, default=8, help="samples per prompt")
    rollout.add_argument("--max-new-tokens", type=int, default=200, help="response length limit")
    rollout.add_argument("--rounds", type=int, default=3, help="timed rounds per engine (after --warmup)")
    rollout.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    rollout.add_argument("--seed", type=int, default=0, help="sampling seed (the same for every round and engine)")
    rollout.add_argument("--out", default="runs/bench/rollout.json", help="where to save the JSON figures")
    reward = sub.add_parser("reward", help="math-verify verifications per second, in one process and through the worker pool",
                            description="Score synthetic responses with math-verify in-process and through the killable worker pool; save the figures as JSON.")
    reward.add_argument("--items", type=int, default=2000, help="responses to score per measurement")
    reward.add_argument("--workers", type=int, default=None, help="pool size to measure besides 1 (default: the CPU count)")
    reward.add_argument("--timeout", type=float, default=5.0, help="per-item timeout of the pool (seconds)")
    reward.add_argument("--out", default="runs/bench/reward.json", help="where to save the JSON figures")
    kernels = sub.add_parser(
        "kernels", help="fused log-probs and policy loss vs plain PyTorch, torch.compile, Liger and Cut Cross-Entropy: time, TFLOP/s, memory, error",
        description=("Time the log-prob path (forward, and forward+backward) and the clipped policy loss from hidden states "
                     "(forward+backward) of every implementation available on this device at LM-head shapes, with the share of "
                     "the chip's peak, peak memory above the inputs and the error vs float64; save a CSV (a skipped "
                     "implementation's row says why). Defaults: (H, V) in (3584, 152064), (3072, 128256) and T in 4k..32k in "
                     "bf16 and fp32 on an accelerator; H=256, V=32000, T in 1k..8k in fp32 on CPU."),
    )
    kernels.add_argument("--ops", default="logprobs,policy-loss", metavar="OP,...", help="logprobs, policy-loss or both (default both)")
    kernels.add_argument("--shapes", default=None, metavar="H:V,...", help="LM-head shapes, e.g. 3584:152064,3072:128256")
    kernels.add_argument("--tokens", default=None, metavar="T,...", help="token counts, e.g. 4096,8192")
    kernels.add_argument("--dtype", default=None, metavar="DTYPE,...",
                         help="float32, bfloat16 or both comma-separated (default: both on accelerators, fp32 on CPU)")
    kernels.add_argument("--impls", default=None, metavar="NAME,...",
                         help="subset of fused-reference, fused-triton, fused-ascend, plain, plain-compiled, liger, "
                              "cut-cross-entropy (log-probs), liger-grpo (policy loss)")
    kernels.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (default: 10 on accelerators, 3 on CPU)")
    kernels.add_argument("--max-seconds", type=float, default=None,
                         help="stop measuring after this many seconds; the rest are rows marked 'not run' (the CSV is written)")
    kernels.add_argument("--out", default="runs/bench/kernels.csv", help="where to save the CSV")
    data = sub.add_parser(
        "data", help="rows/s and peak memory of reading + tokenizing a synthetic SFT set, by worker count, cold and warm cache",
        description=("Write a synthetic SFT set in Parquet shards to a temporary folder, then read and tokenize it (npu_retu.data.prepare) "
                     "with each worker count, with an empty and then a filled tokenized-data cache, each run in a fresh process, in "
                     "interleaved rounds; save the median and spread of rows/s and the peak RSS as JSON."))
    data.add_argument("--rows", type=int, default=100_000, help="rows of the synthetic set")
    data.add_argument("--shards", type=int, default=10, help="Parquet shards it is written in")
    data.add_argument("--workers", default="1,2", help="worker counts to measure, e.g. 1,2,8 (1 = in the measuring process)")
    data.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each: every worker count, cold then warm)")
    data.add_argument("--tokenizer", default="embedded:tokenizer", help="tokenizer folder (default: the embedded default's)")
    data.add_argument("--max-length", type=int, default=1024, help="data.max_length (longer rows are skipped)")
    data.add_argument("--seed", type=int, default=0, help="seed of the synthetic set")
    data.add_argument("--tmp-dir", default=None, help="where the temporary data and caches go (default: the system's temp folder)")
    data.add_argument("--out", default="runs/bench/data.json", help="where to save the JSON figures")


def run(args) -> int:
    if args.bench == "sft":
        from npu_retu.bench.sft import bench_sft

        bench_sft(args)
    elif args.bench == "rl":
        from npu_retu.bench.rl import bench_rl

        bench_rl(args)
    elif args.bench == "rollout":
        from npu_retu.bench.rollout import run_rollout_bench

        run_rollout_bench(args)
    elif args.bench == "reward":
        from npu_retu.bench.reward import run_reward_bench

        run_reward_bench(num_items=args.items, num_workers=args.workers, timeout_s=args.timeout, out_json=args.out)
    elif args.bench == "data":
        from npu_retu.bench.data import run_data_bench

        run_data_bench(args)
    elif args.bench == "kernels":
        from npu_retu.bench.kernels import run_kernel_bench
        from npu_retu.errors import UserError

        try:
            shapes = [tuple(int(x) for x in item.split(":")) for item in args.shapes.split(",")] if args.shapes else None
            tokens = [int(x) for x in args.tokens.split(",")] if args.tokens else None
        except ValueError:
            raise UserError(f"--shapes takes H:V pairs and --tokens integers, got {args.shapes!r} and {args.tokens!r}") from None
        if shapes and any(len(s) != 2 for s in shapes):
            raise UserError(f"--shapes takes H:V pairs separated by commas, got {args.shapes!r}")
        impls = args.impls.split(",") if args.impls else None
        dtypes = args.dtype.split(",") if args.dtype else None
        if dtypes and any(d not in ("float32", "bfloat16") for d in dtypes):
            raise UserError(f"--dtype takes float32 and/or bfloat16 (comma-separated), got {args.dtype!r}")
        try:
            run_kernel_bench(shapes, tokens, dtypes, impls, args.repeats, out_csv=args.out,
                             ops=tuple(o.strip() for o in args.ops.split(",") if o.strip()), max_seconds=args.max_seconds)
        except ValueError as e:
            raise UserError(str(e)) from None
    return 0
