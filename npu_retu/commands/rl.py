"""``npu-retu rl``: RL (GRPO / DAPO_d / DAPO_dc, LUFFY / SRFT / UPT) from a model, with held-out evaluation points."""

from __future__ import annotations

HELP = "RL with verifiable math rewards (GRPO, DAPO_d, DAPO_dc, and the synchronized LUFFY, SRFT, UPT) from model.path, with evaluation points and exact --resume."


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="YAML config (a path, or the name of a shipped config such as demo_cpu)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. rl.algorithm=grpo rl.max_steps=50 model.path=runs/x/sft/checkpoints/step-000150")
    parser.add_argument("--model", default=None, help="start from this checkpoint (same as model.path=...)")
    parser.add_argument("--resume", action="store_true", help="continue the run folder from its newest complete checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="delete an existing run folder of the same name first")
    parser.add_argument("--skip-bad-rows", action="store_true", help="count and skip malformed data rows instead of stopping")


def run(args) -> int:
    from npu_retu.config import load_config
    from npu_retu.configs import resolve_config_path
    from npu_retu.trainer.rl import train_rl

    overrides = list(args.overrides)
    if args.model:
        overrides.append(f"model.path={args.model}")
    if args.skip_bad_rows:
        overrides.append("data.skip_bad_rows=true")
    cfg = load_config(resolve_config_path(args.config), overrides)
    if cfg.cluster.launcher == "ray":
        from npu_retu.distributed.ray_driver import run_on_ray

        summary = run_on_ray("rl", cfg, resume=args.resume, overwrite=args.overwrite)
        print(f"\nrun folder: {summary['run_dir']}")
        print(f"steps: {summary['steps']}, RL compute: {summary['flops']:.4g} FLOPs (evaluations: evals.json in the run folder)")
        return 0
    result = train_rl(cfg, resume=args.resume, overwrite=args.overwrite)
    print(f"\nrun folder: {result.run_dir}")
    print(f"steps: {result.steps}, RL compute: {result.flops:.4g} FLOPs")
    for e in result.evals:
        print(f"  step {e['step']:>5}  {e['flops']:.4g} FLOPs  {e['summary']}")
    return 0
