"""``npu-retu bench``: benchmarks that print and save their figures."""

from __future__ import annotations

HELP = "Benchmarks that print and save figures: `bench sft` (training tokens/s and peak memory of the SFT step)."


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    sft = sub.add_parser("sft", help="tokens/s and peak memory of the SFT step for a config (default: demo_cpu)",
                         description="Time SFT optimizer steps (forward, backward, AdamW) on the current device for a config and save the figures as JSON.")
    sft.add_argument("--config", default="demo_cpu", help="config whose model, data and batch sizes are measured")
    sft.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    sft.add_argument("--steps", type=int, default=20, help="timed optimizer steps (after --warmup)")
    sft.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    sft.add_argument("--out", default="runs/bench/sft.json", help="where to save the JSON figures")


def run(args) -> int:
    if args.bench == "sft":
        from npu_retu.bench_sft import bench_sft

        bench_sft(args)
    return 0
