"""``npu-retu experiment``: the paper's three questions in miniature on the embedded default.

    npu-retu experiment paradigms   Pure-SFT, Pure-RL, Syn-SFT-RL (LUFFY/SRFT/UPT), SFT-then-RL at matched compute (§6.1)
    npu-retu experiment transition  RL from Adaptive / Stable / Mild / Severe SFT checkpoints (§6.2.1)
    npu-retu experiment data        SFT data scale and difficulty, min-loss predictor (§6.2.2)

Each writes OUT/report.md (tables, plots, and whether each finding held), OUT/results.json,
OUT/plasticity.csv and PNGs; the runs go to OUT/runs. Rerunning the same command continues an
interrupted experiment (finished stages are kept) and rewrites the report.
"""

from __future__ import annotations

HELP = "Run one of the paper's experiments in miniature (paradigms, transition, data) and write its report."


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")

    def common(p, name: str) -> None:
        p.add_argument("--config", default="demo_cpu", help="base YAML config for model, SFT, RL and evaluation settings (default demo_cpu)")
        p.add_argument("--out", default=f"runs/experiments/{name}", help=f"output folder (default runs/experiments/{name})")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides of the base config, e.g. eval.max_problems=100")
        p.add_argument("--verbose", action="store_true", help="print every training step, not only the stage summaries")

    p = sub.add_parser("paradigms", help="Pure-SFT, Pure-RL, Syn-SFT-RL (LUFFY, SRFT, UPT) and SFT-then-RL at matched compute (paper §6.1)",
                       description="Pure-SFT, Pure-RL (dapo_d), Syn-SFT-RL (luffy, srft, upt; UPT at 5x the RL lr) and "
                                   "SFT-then-RL (the configured rl.algorithm) at the compute of one SFT run; Eq. 11/12 ceilings "
                                   "for each, and SRFT's score fluctuation against Pure-RL's.")
    common(p, "paradigms")
    p.add_argument("--sft-data", default="embedded:sft-uniform-500", help="SFT trajectories (default embedded:sft-uniform-500)")
    p.add_argument("--sft-steps", type=int, default=480, help="length of the SFT run = the compute budget of every paradigm (default 480)")
    p.add_argument("--save-every", type=int, default=40, help="SFT validation/checkpoint interval (default 40)")
    p.add_argument("--rl-eval-points", type=int, default=8, help="evaluations along each RL run (default 8)")
    p.add_argument("--switch-step", type=int, default=None,
                   help="SFT step where SFT-then-RL switches to RL (default: the phase monitor's pick)")
    p.add_argument("--paradigms", default="all", metavar="LIST",
                   help="comma-separated subset of pure-sft,pure-rl,luffy,srft,upt,sft-then-rl (default all); the SFT run "
                        "always runs (it sets the budget); its checkpoints are scored only for pure-sft; finished runs are "
                        "reused, so a later call can add paradigms")
    p.add_argument("--syn-data", default=None, metavar="FILE",
                   help="RL data of the luffy / srft / upt runs, SFT-format rows with an expert trajectory per prompt "
                        "(default: the mix set of rl.train_files, e.g. embedded:rl-easy-5k -> embedded:mix-easy-5k)")

    p = sub.add_parser("transition", help="RL from SFT checkpoints in the Adaptive, Stable, Mild and Severe sub-phases (paper §6.2.1)",
                       description="One SFT run past its validation minimum; one RL branch per sub-phase; the plasticity table.")
    common(p, "transition")
    p.add_argument("--sft-data", default="embedded:sft-uniform-500", help="SFT trajectories (default embedded:sft-uniform-500)")
    p.add_argument("--sft-steps", type=int, default=960, help="SFT steps; long enough to overfit (default 960)")
    p.add_argument("--save-every", type=int, default=40, help="SFT validation/checkpoint interval (default 40)")
    p.add_argument("--rl-steps", type=int, default=32, help="RL steps per branch (default 32)")
    p.add_argument("--rl-eval-every", type=int, default=4, help="RL evaluation interval (default 4)")

    p = sub.add_parser("data", help="SFT data scale and difficulty, and the min-validation-loss predictor (paper §6.2.2)",
                       description="SFT on each data set to its minimum validation loss, RL from there, ceilings, Pearson r.")
    common(p, "data")
    p.add_argument("--scale", nargs="+", default=["uniform-500", "uniform-2k"],
                   help="embedded SFT sets, smallest first (default uniform-500 uniform-2k)")
    p.add_argument("--difficulty", nargs="+", default=["uniform-2k", "hard-2k"],
                   help="embedded SFT sets, easiest first (default uniform-2k hard-2k)")
    p.add_argument("--sft-steps", type=int, default=240, help="SFT steps of every data set (default 240)")
    p.add_argument("--save-every", type=int, default=20, help="SFT validation/checkpoint interval (default 20)")
    p.add_argument("--rl-steps", type=int, default=20, help="RL steps per branch (default 20)")
    p.add_argument("--rl-eval-every", type=int, default=4, help="RL evaluation interval (default 4)")


def run(args) -> int:
    from pathlib import Path

    from npu_retu.config import load_config
    from npu_retu.configs import resolve_config_path

    if args.experiment == "paradigms":  # a wrong --paradigms fails before anything is loaded
        from npu_retu.experiments.paradigms import parse_paradigms

        paradigms = parse_paradigms(args.paradigms)
    cfg = load_config(resolve_config_path(args.config), list(args.overrides))
    out = Path(args.out)
    quiet = not args.verbose
    if args.experiment == "paradigms":
        from npu_retu.experiments.paradigms import ParadigmSettings, run_paradigms

        settings = ParadigmSettings(sft_data=args.sft_data, sft_steps=args.sft_steps, save_every=args.save_every,
                                    rl_eval_points=args.rl_eval_points, switch_step=args.switch_step,
                                    paradigms=paradigms, syn_data=args.syn_data)
        run_paradigms(cfg, out, settings, quiet=quiet)
    elif args.experiment == "transition":
        from npu_retu.experiments.transition import TransitionSettings, run_transition

        settings = TransitionSettings(sft_data=args.sft_data, sft_steps=args.sft_steps, save_every=args.save_every,
                                      rl_steps=args.rl_steps, eval_every=args.rl_eval_every)
        run_transition(cfg, out, settings, quiet=quiet)
    else:
        from npu_retu.experiments.data import DataSettings, run_data

        settings = DataSettings(scale=tuple(args.scale), difficulty=tuple(args.difficulty), sft_steps=args.sft_steps,
                                eval_every=args.save_every, rl_steps=args.rl_steps,
                                rl_eval_every=args.rl_eval_every)
        run_data(cfg, out, settings, quiet=quiet)
    return 0
