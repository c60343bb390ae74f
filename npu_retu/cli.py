"""``npu-retu <command>``: the command-line entry point.

Only the module of the command being run is imported, so ``npu-retu --help`` is fast and a broken
optional stack (say, torch_npu) cannot stop unrelated commands.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command name -> module in npu_retu.commands (each has HELP, add_arguments, run)
COMMANDS = {
    "demo": "demo",
    "sft": "sft",
    "rl": "rl",
    "pipeline": "pipeline",
    "eval": "eval",
    "phases": "phases",
    "fit": "fit",
    "flops": "flops",
    "plan": "plan",
    "data": "data",
    "doctor": "doctor",
    "bench": "bench",
    "experiment": "experiment",
}


def _load(name: str):
    return importlib.import_module(f"npu_retu.commands.{COMMANDS[name]}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npu-retu",
        description="SFT-then-RL post-training with a validation-loss phase monitor, for Ascend NPUs, CUDA GPUs and CPU.",
    )
    from npu_retu import __version__

    parser.add_argument("--version", action="version", version=f"npu-retu {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        if only is not None and name != only:
            sub.add_parser(name)
            continue
        module = _load(name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
    return parser


def _top_level_help() -> str:
    lines = ["usage: npu-retu [--version] COMMAND [options]", "", "commands:"]
    for name in COMMANDS:
        lines.append(f"  {name:<8} {_load(name).HELP}")
    lines += ["", "`npu-retu COMMAND --help` shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_level_help())
        return 0 if argv else 2
    command = argv[0] if argv[0] in COMMANDS else None
    if command is None and not argv[0].startswith("-"):
        print(f"npu-retu: unknown command {argv[0]!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    parser = build_parser(only=command)
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE overrides may come anywhere, also after options (`sft --config F --resume a.b=1`):
    # argparse stops filling a positional list at the first option, so collect the rest here
    stray = [item for item in extra if item.startswith("-") or "=" not in item]
    if extra and (stray or not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    from npu_retu.errors import EnvironmentFault, UserError

    try:
        return int(_load(command).run(args) or 0)
    except UserError as e:
        print(f"npu-retu {command}: error: {e}", file=sys.stderr)
        return 2
    except EnvironmentFault as e:
        print(f"npu-retu {command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"npu-retu {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
