"""``npu-retu pipeline``: SFT with the phase monitor -> RL from the picked checkpoint -> report."""

from __future__ import annotations

HELP = "The sequential SFT-then-RL pipeline: SFT with the phase monitor, RL from the checkpoint it picks, evaluation, report.md."


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="YAML config (a path, or the name of a shipped config such as demo_cpu)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. rl.max_steps=50 monitor.pick=mild")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted pipeline (a finished SFT stage is not rerun)")
    parser.add_argument("--overwrite", action="store_true", help="delete an existing run folder of the same name first")


def run(args) -> int:
    from npu_retu.config import load_config
    from npu_retu.configs import resolve_config_path
    from npu_retu.report.summary import print_pipeline_summary
    from npu_retu.trainer.pipeline import run_pipeline

    cfg = load_config(resolve_config_path(args.config), list(args.overrides))
    result = run_pipeline(cfg, resume=args.resume, overwrite=args.overwrite)
    print_pipeline_summary(result)
    return 0
