"""``npu-retu flops``: FLOPs of a training step (paper Appendix C), cumulative compute at checkpoints,
MFU, and the reproduction of the x_sft column of the paper's Table 4. The arithmetic is
:mod:`npu_retu.flops` and its text :mod:`npu_retu.report.flops_text`; this module parses the
options, calls them and prints."""

from __future__ import annotations

import argparse
import dataclasses
import json

from npu_retu import flops as fl
from npu_retu.errors import UserError
from npu_retu.models.presets import preset_names

HELP = "FLOPs per token / per step (paper Appendix C), compute at checkpoints, MFU, and the paper's Table 4 x_sft"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", metavar="PRESET_OR_PATH",
        help=f"a preset ({', '.join(preset_names())}) or a model folder / config.json "
        f"(default for --table4: {fl.TABLE4_MODEL})",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--phase", choices=list(fl.STEP_FORMULAS), help="which step formula to use")
    mode.add_argument("--table4", action="store_true", help="reproduce the x_sft column of the paper's Table 4")

    sft = parser.add_argument_group("sft (Eq. 21)")
    sft.add_argument("--dataset", choices=list(fl.RETU_SFT_DATASETS),
                     help="take --batch-size and --mean-len from one of RETU's SFT datasets")
    sft.add_argument("--batch-size", type=int, help="sequences per SFT step")
    sft.add_argument("--mean-len", type=float, help="mean prompt+response tokens per sequence")

    rl = parser.add_argument_group("dapo (Eq. 22), grpo (Eq. 23), hybrid = LUFFY/SRFT (Eq. 24), upt (Eq. 25-27)")
    rl.add_argument("--gen-batch", type=int, help="dapo: prompts per generation round (B_gen)")
    rl.add_argument("--rounds", type=float, help="dapo: generation rounds in the step (K)")
    rl.add_argument("--train-batch", type=int, help="dapo: kept prompts trained on (B_train)")
    rl.add_argument("--batch", type=int, help="grpo, hybrid: prompts per step (B)")
    rl.add_argument("--group-size", type=int,
                    help="responses per prompt (G); upt: sequences generated in the step")
    rl.add_argument("--seq-len", type=float, help="dapo, grpo: mean prompt+response tokens (S)")
    rl.add_argument("--n-expert", type=int, help="hybrid: expert trajectories per prompt (N)")
    rl.add_argument("--seq-len-on", type=float, help="hybrid, upt: mean on-policy sequence length (S_on)")
    rl.add_argument("--seq-len-off", type=float, help="hybrid, upt: mean expert sequence length (S_off)")
    rl.add_argument("--n-on", type=int, help="upt: on-policy rollouts trained on (N_on)")
    rl.add_argument("--n-off", type=int, help="upt: expert trajectories trained on (N_off)")

    totals = parser.add_argument_group("totals and MFU")
    totals.add_argument("--steps", type=int, default=1, help="steps to total (default 1)")
    totals.add_argument("--checkpoints", metavar="STEP,STEP,...",
                        help="also print cumulative compute at these steps, e.g. 360,720,1080")
    totals.add_argument("--chip", metavar="NAME", help="chip for MFU, e.g. H100-SXM, H200, A100, Ascend910B2, Ascend910B3 (see npu_retu/device/chips.py)")
    totals.add_argument("--num-chips", type=int, default=1, help="chips that run one step (default 1)")
    totals.add_argument("--step-seconds", type=float, metavar="T", help="measured wall seconds of one step, for MFU")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from npu_retu.report.flops_text import step_text, table4_text

    if args.table4:
        if args.chip or args.step_seconds is not None:
            raise UserError("--chip / --step-seconds (MFU) go with --phase, not with --table4")
        result = fl.table4_report(args.model or fl.TABLE4_MODEL)
        print(json.dumps(result, indent=2) if args.json else table4_text(result))
        return 0
    if not args.model:
        raise UserError(f"--phase {args.phase} needs --model (a preset: {', '.join(preset_names())}; or a model folder)")
    request = fl.StepRequest(**{f.name: getattr(args, f.name) for f in dataclasses.fields(fl.StepRequest)})
    result = fl.step_report(request)
    print(json.dumps(result, indent=2) if args.json else step_text(result))
    return 0
