"""``npu-retu data``: write synthetic data files, or build and list the embedded default."""

from __future__ import annotations

import argparse
import json
import random
import sys

HELP = ("Generate synthetic task data (synth), build and show the embedded default (embedded), or curate: "
        "decontaminate, answers, difficulty.")


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

    decontaminate = actions.add_parser(
        "decontaminate",
        help="remove training rows that overlap evaluation problems (13-gram rule)",
        description="Remove training rows whose problem (SFT: the user turns; RL: the prompt) shares an n-gram "
        "of normalised words (NFKC, lower-case, non-alphanumerics -> spaces, whitespace split) with an evaluation "
        "problem, or equals one as a whole (short problems have no n-gram). Kept rows go to --out in file order; "
        "a JSON report lists every removed row, the evaluation row it matched and the shared words.",
    )
    decontaminate.add_argument("--train", nargs="+", required=True, metavar="FILE",
                               help="training data: files, folders, globs, datasets folders or embedded: names, "
                               "in any layout the SFT / RL loaders read")
    decontaminate.add_argument("--eval", nargs="+", required=True, metavar="FILE",
                               help="evaluation problems: FILE or NAME=FILE; a benchmark name (gsm8k, minerva_math, "
                               "olympiadbench, aime24, aime25, amc23, math500; the file's stem by default) uses that benchmark's loader")
    decontaminate.add_argument("--out", required=True, help="kept rows, .jsonl or .parquet (never an input file)")
    decontaminate.add_argument("--ngram", type=int, default=13, help="n-gram length in words (default 13)")
    decontaminate.add_argument("--report", default=None, help="write the JSON report here")

    answers = actions.add_parser(
        "answers",
        help="sample answers from model folders for difficulty labelling",
        description="Sample K answers per problem from each model folder (e.g. embedded:base and an SFT checkpoint) "
        "with the transformers rollout engine and write an answers file for 'data difficulty': one JSON object "
        "per answer, {problem, model, response}.",
    )
    answers.add_argument("--in", dest="source", required=True, help="problems (RL or SFT rows), or an embedded: name")
    answers.add_argument("--model", nargs="+", required=True, help="model folders or embedded: names")
    answers.add_argument("--k", type=int, default=4, help="answers per problem and model (default 4, as the paper)")
    answers.add_argument("--limit", type=int, default=None, help="only the first N problems")
    answers.add_argument("--max-new-tokens", type=int, default=256, help="response length limit (default 256)")
    answers.add_argument("--temperature", type=float, default=0.7)
    answers.add_argument("--seed", type=int, default=0)
    answers.add_argument("--out", required=True, help="answers file, .jsonl")

    difficulty = actions.add_parser(
        "difficulty",
        help="label problems easy / medium / hard by the win rate of sampled answers",
        description="Score each answer in ANSWERS (one JSON object per answer: {problem, model, response}; problem = "
        "the row's user turn text) against the row's ground truth with the math-verify reward, and write the rows "
        "of --in with win_rate (correct / answers) and difficulty: hard when win_rate <= a, easy when >= b, else "
        "medium (paper Table 3: a,b = 0.25,1.0 over 4 answers).",
    )
    difficulty.add_argument("--in", dest="source", required=True, help="rows with ground truth (RL or SFT with a reference answer)")
    difficulty.add_argument("--answers", required=True, help="answers file (.jsonl), e.g. from 'data answers'")
    difficulty.add_argument("--out", required=True, help="labelled rows, .jsonl or .parquet (never an input file)")
    difficulty.add_argument("--thresholds", default="0.25,1.0", help="a,b (default 0.25,1.0)")
    difficulty.add_argument("--model", nargs="+", default=None,
                            help="use only these models' answers (the paper labels by the 1.5B model); default: all")


def run(args: argparse.Namespace) -> int:
    if args.action == "synth":
        return _synth(args)
    if args.action in ("decontaminate", "answers", "difficulty"):
        return _curate(args)
    return _embedded(args)


def _curate(args: argparse.Namespace) -> int:
    from npu_retu.data import curate
    from npu_retu.data.schemas import named_entry
    from npu_retu.trainer.setup import data_path

    if args.action == "decontaminate":
        evals = []
        for entry in args.eval:
            name, path = named_entry(entry)
            evals.append(data_path(path) if name is None else f"{name}={data_path(path)}")
        report = curate.decontaminate([data_path(t) for t in args.train], evals, args.out, ngram=args.ngram, report=args.report)
        print(report.summary())
        if args.report:
            print(f"report: {args.report}")
    elif args.action == "answers":
        from npu_retu.eval.answers import sample_answers

        count = sample_answers(args.source, args.model, args.out, k=args.k, limit=args.limit,
                               max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
        print(f"wrote {count} answers ({args.k} per problem and model) to {args.out}")
    else:
        from npu_retu.reward import make_reward

        thresholds = curate.parse_thresholds(args.thresholds)
        with make_reward("math_verify") as reward:
            report = curate.label_difficulty(data_path(args.source), args.answers, args.out, thresholds=thresholds,
                                             models=args.model, reward=reward)
        print(report.summary())
    return 0


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
