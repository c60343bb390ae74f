"""``npu-retu doctor``: which backend this machine gets, the versions of its whole stack, whether the
device computes correctly (a small matmul and the fused kernels checked against a CPU float64
reference), whether the collectives work (a real all-reduce across the visible devices), and
whether a Ray cluster is reachable.

Exit status: 0 when every check passes, 1 when one fails, 2 when the requested device cannot load.
A Ray cluster that is not running is information, not a failure, unless ``--ray-address`` asked for
one. The checks are :mod:`npu_retu.doctor` and their text :mod:`npu_retu.report.doctor_text`; this
module parses the options, calls them and prints.
"""

from __future__ import annotations

import argparse
import json

from npu_retu.device import DEVICE_CHOICES
from npu_retu.doctor import COLLECTIVE_TIMEOUT_S, CPU_WORLD_SIZE, RAY_TIMEOUT_S

HELP = ("show the device backend, chip and stack versions; check a matmul, the kernels and an all-reduce "
        "on the device, and the Ray cluster")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="backend to check (default: auto-detect)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    collectives = parser.add_argument_group("collectives")
    collectives.add_argument("--skip-collectives", action="store_true", help="do not run the all-reduce check")
    collectives.add_argument("--world-size", type=_positive_int, default=None, metavar="N",
                             help=f"ranks of the all-reduce (default: every visible device; {CPU_WORLD_SIZE} on CPU); "
                                  "at most the device count on an accelerator")
    collectives.add_argument("--collective-timeout", type=_positive_float, default=COLLECTIVE_TIMEOUT_S, metavar="S",
                             help=f"seconds before a hung rendezvous or all-reduce fails the check (default {COLLECTIVE_TIMEOUT_S:g})")
    ray = parser.add_argument_group("ray")
    ray.add_argument("--ray-address", default=None, metavar="ADDR",
                     help="Ray cluster to connect to (default: $RAY_ADDRESS, else 'auto'); given here, an "
                          "unreachable cluster fails the doctor")
    ray.add_argument("--ray-timeout", type=_positive_float, default=RAY_TIMEOUT_S, metavar="S",
                     help=f"seconds the Ray probe may take (default {RAY_TIMEOUT_S:g})")
    ray.add_argument("--skip-ray", action="store_true", help="do not look for a Ray cluster")


def run(args: argparse.Namespace) -> int:
    from npu_retu.doctor import diagnose
    from npu_retu.report.doctor_text import doctor_text

    args = _with_defaults(args)
    report = diagnose(
        args.device, collectives=not args.skip_collectives, world_size=args.world_size,
        collective_timeout_s=args.collective_timeout, ray_address=args.ray_address, ray_timeout_s=args.ray_timeout,
        skip_ray=args.skip_ray,
    )
    print(json.dumps(report, indent=2) if args.json else doctor_text(report))
    return 0 if report["ok"] else 1


def _with_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """The parser's defaults under the given values: a caller may build a Namespace by hand."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    return argparse.Namespace(**{**vars(parser.parse_args([])), **vars(args)})


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value
