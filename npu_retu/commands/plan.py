"""``npu-retu plan``: before booking a cluster, size a config on it: memory per device for every ZeRO
stage, FLOPs per step / checkpoint interval / phase (paper Appendix C), and wall time at an assumed
MFU. The planning is :mod:`npu_retu.plan` and its text :mod:`npu_retu.report.plan_text`; this
module parses the options, calls them and prints."""

from __future__ import annotations

import argparse
import dataclasses
import json

from npu_retu import flops as fl
from npu_retu import plan as pl
from npu_retu.models.presets import preset_names

HELP = "memory per device (ZeRO 0-3), FLOPs (Appendix C) and wall time of a config on N nodes x D chips"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config (a path, or the name of a shipped config)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. sft.micro_batch_size=2")
    parser.add_argument("--phase", choices=["sft", "rl"], default="sft", help="plan the config's SFT or its RL (default sft)")
    parser.add_argument("--nodes", type=int, required=True, help="nodes in the cluster")
    parser.add_argument("--devices-per-node", type=int, required=True, metavar="D", help="accelerators per node")
    parser.add_argument("--chip", required=True, metavar="NAME",
                        help="chip, e.g. Ascend910B2, Ascend910B3, H100-SXM, H200, A100, A100-40GB (npu_retu/device/chips.py)")
    parser.add_argument("--mfu", type=float, default=pl.DEFAULT_MFU,
                        help=f"assumed model FLOPs utilisation for wall time (default {pl.DEFAULT_MFU}; use a measured one)")
    parser.add_argument("--headroom", type=float, default=pl.DEFAULT_HEADROOM,
                        help=f"fraction of device memory kept free for the runtime and fragmentation (default {pl.DEFAULT_HEADROOM})")
    parser.add_argument("--model", metavar="PRESET_OR_PATH",
                        help=f"model shape: a preset ({', '.join(preset_names())}) or a model folder; "
                        "default: model.path's folder, or a preset its path names")
    sft = parser.add_argument_group("sft (Eq. 21)")
    length = sft.add_mutually_exclusive_group()
    length.add_argument("--mean-len", type=float, metavar="S", help="mean prompt+response tokens per example")
    length.add_argument("--dataset", choices=list(fl.RETU_SFT_DATASETS),
                        help="one of RETU's SFT datasets: its mean length and row count (default: the one data.train_files names)")
    sft.add_argument("--rows", type=int, help="training examples (for steps = epochs x rows / batch)")
    rl = parser.add_argument_group("rl (Eq. 22 / 23)")
    rl.add_argument("--seq-len", type=float, metavar="S",
                    help="mean prompt+response tokens of a rollout (default: the maximum, rl.max_prompt_length + "
                    "rl.max_response_length, an upper bound)")
    rl.add_argument("--rounds", type=float, metavar="K",
                    help="generation rounds per step (default: both 1 and rl.algo.max_draws)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def run(args: argparse.Namespace) -> int:
    from npu_retu.report.plan_text import plan_text

    request = pl.PlanRequest(**{f.name: getattr(args, f.name) for f in dataclasses.fields(pl.PlanRequest)})
    result = pl.build_plan(request)
    print(json.dumps(result, indent=2) if args.json else plan_text(result))
    return 0
