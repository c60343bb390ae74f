"""``npu-retu pipeline``: SFT with the phase monitor -> RL from the picked checkpoint -> report."""

from __future__ import annotations

HELP = "The sequential SFT-then-RL pipeline: SFT with the phase monitor, RL from the checkpoint it picks, evaluation, report.md."


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="YAML config (a path, or the name of a shipped config such as demo_cpu)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. rl.max_steps=50 monitor.pick=mild")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted pipeline (a finished SFT stage is not rerun)")
    parser.add_argument("--overwrite", action="store_true", help="delete an existing run folder of the same name first")


def run(args) -> int:
    from npu_retu.commands.sft import resolve_config_path
    from npu_retu.config import load_config
    from npu_retu.trainer.pipeline import run_pipeline

    cfg = load_config(resolve_config_path(args.config), list(args.overrides))
    result = run_pipeline(cfg, resume=args.resume, overwrite=args.overwrite)
    print_pipeline_summary(result)
    return 0


def print_pipeline_summary(result) -> None:
    print(f"\nrun folder: {result.run_dir}")
    print(f"SFT: {result.sft_flops:.4g} FLOPs; the monitor picked step {result.picked_step} ({result.picked_checkpoint})")
    print(f"RL: {result.rl_flops:.4g} FLOPs")
    c = result.comparison
    if c:
        s, e = c["start"], c["end"]
        print(f"held-out accuracy, SFT checkpoint (RL step {c['start_step']}): {s['summary']}")
        print(f"held-out accuracy, after RL (RL step {c['end_step']}):  {e['summary']}")
        print(
            f"RL improvement: {100 * c['difference']:+.2f} points, standard error of the paired difference "
            f"{100 * c['stderr']:.2f} ({'n/a' if c['z'] is None else format(c['z'], '.1f')} s.e.; n={e['n']}, T={e['temperature']}, top-p={e['top_p']}, "
            f"{e['num_problems']} problems)"
        )
    print(f"report: {result.report}")
