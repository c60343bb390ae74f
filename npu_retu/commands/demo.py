"""``npu-retu demo``: the SFT-then-RL pipeline on the embedded default (configs/demo_cpu.yaml)."""

from __future__ import annotations

HELP = ("Run the whole pipeline on the embedded default (tiny model, synthetic math task): SFT with the phase monitor, "
        "RL (DAPO_dc) from the checkpoint it picks, evaluation, report.md.")


def add_arguments(parser) -> None:
    parser.add_argument("--config", default="demo_cpu", help="config to run (default: the shipped demo_cpu.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. run.output_dir=/tmp/runs")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted demo instead of starting again")


def run(args) -> int:
    import time

    from npu_retu.config import load_config
    from npu_retu.configs import resolve_config_path
    from npu_retu.models.modeling import resolve_path
    from npu_retu.report.summary import print_pipeline_summary
    from npu_retu.trainer.pipeline import run_pipeline

    cfg = load_config(resolve_config_path(args.config), list(args.overrides))
    t0 = time.perf_counter()
    print("demo: preparing the embedded default (built once, then cached) ...", flush=True)
    for name in [cfg.model.path, *cfg.data.train_files, *cfg.data.val_files, *cfg.rl.train_files, *cfg.eval.files]:
        resolve_path(name)
    print(f"demo: ready in {time.perf_counter() - t0:.0f} s", flush=True)
    t1 = time.perf_counter()
    result = run_pipeline(cfg, resume=args.resume, overwrite=not args.resume)
    print_pipeline_summary(result)
    print(f"demo: pipeline finished in {time.perf_counter() - t1:.0f} s ({time.perf_counter() - t0:.0f} s with preparation)")
    return 0
