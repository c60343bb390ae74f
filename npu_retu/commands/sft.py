"""``npu-retu sft``: supervised fine-tuning with the phase monitor."""

from __future__ import annotations

HELP = "Supervised fine-tuning with the validation-loss phase monitor (checkpoints, exact --resume)."


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="YAML config (a path, or the name of a shipped config such as demo_cpu)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. sft.max_steps=100 sft.optim.lr=3e-4")
    parser.add_argument("--resume", action="store_true", help="continue the run folder from its newest complete checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="delete an existing run folder of the same name first")
    parser.add_argument("--skip-bad-rows", action="store_true", help="count and skip malformed data rows instead of stopping (same as data.skip_bad_rows=true)")


def run(args) -> int:
    from npu_retu.config import load_config
    from npu_retu.configs import resolve_config_path
    from npu_retu.report.summary import print_sft_summary
    from npu_retu.trainer.sft import train_sft

    overrides = list(args.overrides) + (["data.skip_bad_rows=true"] if args.skip_bad_rows else [])
    cfg = load_config(resolve_config_path(args.config), overrides)
    if cfg.cluster.launcher == "ray":
        from npu_retu.distributed.ray_driver import run_on_ray

        summary = run_on_ray("sft", cfg, resume=args.resume, overwrite=args.overwrite)
        print(f"\nrun folder: {summary['run_dir']}")
        print(f"steps: {summary['steps']}, training compute: {summary['flops']:.4g} FLOPs")
        print(f"picked checkpoint: {summary['picked_checkpoint'] or 'none'} (phases.json in the run folder)")
        return 0
    result = train_sft(cfg, resume=args.resume, overwrite=args.overwrite)
    print_sft_summary(result)
    return 0
