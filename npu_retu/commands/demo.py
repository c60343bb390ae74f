"""``npu-retu demo``: the pipeline on the embedded default (configs/demo_cpu.yaml)."""

from __future__ import annotations

HELP = "Run SFT with the phase monitor on the embedded default (tiny model, synthetic math task) and report the sub-phases."


def add_arguments(parser) -> None:
    parser.add_argument("--config", default="demo_cpu", help="config to run (default: the shipped demo_cpu.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. run.output_dir=/tmp/runs")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted demo instead of starting again")


def run(args) -> int:
    import time

    from npu_retu.commands.sft import print_sft_summary, resolve_config_path
    from npu_retu.config import load_config
    from npu_retu.trainer.sft import train_sft

    cfg = load_config(resolve_config_path(args.config), list(args.overrides))
    t0 = time.perf_counter()
    print("demo: preparing the embedded default (built once, then cached) ...", flush=True)
    from npu_retu.modeling import resolve_path

    resolve_path(cfg.model.path)
    for name in [*cfg.data.train_files, *cfg.data.val_files]:
        resolve_path(name)
    print(f"demo: ready in {time.perf_counter() - t0:.0f} s; running SFT with the phase monitor", flush=True)
    result = train_sft(cfg, resume=args.resume, overwrite=not args.resume)
    print_sft_summary(result)
    print(f"demo: finished in {time.perf_counter() - t0:.0f} s")
    return 0
