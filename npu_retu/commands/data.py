"""``npu-retu data``: write synthetic data files, or build and list the embedded default."""

from __future__ import annotations

import argparse
import json
import random
import sys

HELP = "Generate synthetic task data (synth) or build and show the embedded default (embedded)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    synth = actions.add_parser(
        "synth",
        help="write modular-arithmetic problems as SFT, RL or pretraining rows",
        description="Write N distinct modular-arithmetic problems in the shape of real data: "
        "sft (AM-DeepSeek-R1-Distilled messages), rl (Skywork-OR1 prompt + ground truth) or "
        "pretrain ({'text': ...} with bare answers).",
    )
    synth.add_argument("--kind", choices=["sft", "rl", "pretrain"], required=True)
    synth.add_argument("--difficulty", choices=["easy", "uniform", "hard"], default="uniform",
                       help="steps per problem: easy 1-3, uniform 1-8, hard 5-8 (default: uniform)")
    synth.add_argument("--n", type=int, required=True, help="number of distinct problems")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--out", required=True, help="output file, .jsonl or .parquet")
    synth.add_argument("--keep-held-out", action="store_true",
                       help="allow the embedded default's held-out problems (sft-val, rl-test); excluded by default")

    embedded = actions.add_parser(
        "embedded",
        help="build (if needed) and print the cache paths of the embedded default",
        description="Build the embedded default's artifacts on first use and print where they are.",
    )
    embedded.add_argument("--name", action="append", default=None, metavar="NAME",
                          help="an embedded name such as base, tokenizer, sft-val, rl-test, sft-uniform-2k "
                          "(with or without 'embedded:'); repeatable; default: everything the demo uses")
    embedded.add_argument("--json", action="store_true", help="print a JSON object name -> path")


def run(args: argparse.Namespace) -> int:
    if args.action == "synth":
        return _synth(args)
    return _embedded(args)


def _synth(args: argparse.Namespace) -> int:
    from pathlib import Path

    from npu_retu.data import synthetic
    from npu_retu.errors import UserError

    out = Path(args.out)
    if out.suffix.lower() not in (".jsonl", ".parquet"):
        raise UserError(f"--out {args.out}: use a .jsonl or .parquet file")
    exclude: frozenset = frozenset()
    if not args.keep_held_out:
        from npu_retu.models import embedded

        exclude = embedded.held_out_keys()
    problems = synthetic.generate_problems(args.n, args.difficulty, args.seed, exclude=exclude)
    rng = random.Random(args.seed)
    if args.kind == "sft":
        rows = [synthetic.sft_row(p, rng) for p in problems]
    elif args.kind == "rl":
        rows = [synthetic.rl_row(p) for p in problems]
    else:
        rows = [{"text": synthetic.pretrain_text(p, rng, _chat_renderer())} for p in problems]
    synthetic.write_rows(out, rows)
    print(f"wrote {len(rows)} {args.kind} rows ({args.difficulty}, seed {args.seed}) to {out}")
    return 0


def _chat_renderer():
    """The embedded tokenizer's chat template, so pretraining text matches what the base model saw."""
    from transformers import AutoTokenizer

    from npu_retu.models import embedded

    return embedded.chat_template_fn(AutoTokenizer.from_pretrained(embedded.resolve("embedded:tokenizer"), trust_remote_code=False))


def _embedded(args: argparse.Namespace) -> int:
    from npu_retu.models import embedded

    names = None
    if args.name:
        names = [n if embedded.is_embedded(n) else embedded.PREFIX + n for n in args.name]
    # progress goes to stderr: a first build takes a minute or two, and stdout stays machine-readable
    paths = embedded.resolve_all(names, log=lambda line: print(f"ready: {line}", file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps({name: str(path) for name, path in paths.items()}, indent=2))
        return 0
    width = max(len(n) for n in paths)
    print(f"embedded default v{embedded.EMBEDDED_VERSION} in {embedded.cache_root()}")
    for name, path in paths.items():
        print(f"  {name:<{width}}  {path}")
    return 0
