"""``npu-retu flops``: FLOPs of a training step (paper Appendix C), cumulative compute at checkpoints,
MFU, and the reproduction of the x_sft column of the paper's Table 4."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from npu_retu import flops as fl
from npu_retu.errors import UserError
from npu_retu.model_presets import find_preset, preset_names

HELP = "FLOPs per token / per step (paper Appendix C), compute at checkpoints, MFU, and the paper's Table 4 x_sft"

# phase -> (the equation it implements, [(option dest, option flag)] it needs)
_PHASE_INPUTS = {
    "sft": ("Eq. 21", [("batch_size", "--batch-size"), ("mean_len", "--mean-len")]),
    "dapo": (
        "Eq. 22",
        [("gen_batch", "--gen-batch"), ("rounds", "--rounds"), ("group_size", "--group-size"),
         ("train_batch", "--train-batch"), ("seq_len", "--seq-len")],
    ),
    "grpo": ("Eq. 23", [("batch", "--batch"), ("group_size", "--group-size"), ("seq_len", "--seq-len")]),
    "hybrid": (
        "Eq. 24",
        [("batch", "--batch"), ("group_size", "--group-size"), ("n_expert", "--n-expert"),
         ("seq_len_on", "--seq-len-on"), ("seq_len_off", "--seq-len-off")],
    ),
    "upt": (
        "Eq. 25-27",
        [("group_size", "--group-size"), ("seq_len_on", "--seq-len-on"), ("n_on", "--n-on"),
         ("n_off", "--n-off"), ("seq_len_off", "--seq-len-off")],
    ),
}

_TABLE4_MODEL = "Qwen2.5-7B"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", metavar="PRESET_OR_PATH",
        help=f"a preset ({', '.join(preset_names())}) or a model folder / config.json "
        f"(default for --table4: {_TABLE4_MODEL})",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--phase", choices=list(_PHASE_INPUTS), help="which step formula to use")
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
    if args.table4:
        if args.chip or args.step_seconds is not None:
            raise UserError("--chip / --step-seconds (MFU) go with --phase, not with --table4")
        result = _table4(args.model or _TABLE4_MODEL)
        print(json.dumps(result, indent=2) if args.json else _table4_text(result))
        return 0
    if not args.model:
        raise UserError(f"--phase {args.phase} needs --model (a preset: {', '.join(preset_names())}; or a model folder)")
    result = _phase(args)
    print(json.dumps(result, indent=2) if args.json else _phase_text(result))
    return 0


# ----------------------------------------------------------------------------------------------


def _load_shape(model: str) -> fl.ModelShape:
    """A preset name or a model folder / config.json; an existing path wins over a preset name."""
    if Path(model).exists():
        return fl.ModelShape.from_hf_config(model)
    preset = find_preset(model)
    if preset is None:
        raise UserError(
            f"--model {model!r} is neither a preset ({', '.join(preset_names())}) "
            "nor an existing model folder or config.json"
        )
    return fl.ModelShape.from_hf_config(preset)


def _shape_dict(shape: fl.ModelShape) -> dict:
    return {
        "num_layers": shape.num_layers, "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size, "vocab_size": shape.vocab_size, "kv_dim": shape.kv_dim,
    }


def _parse_checkpoints(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        steps = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--checkpoints {text!r}: expected comma-separated whole step numbers, e.g. 360,720") from None
    if any(step < 0 for step in steps):
        raise UserError(f"--checkpoints {text!r}: step numbers must be >= 0")
    return steps


def _phase(args: argparse.Namespace) -> dict:
    shape = _load_shape(args.model)
    if args.phase == "sft" and args.dataset:
        dataset = fl.RETU_SFT_DATASETS[args.dataset]
        args.batch_size = dataset.batch_size if args.batch_size is None else args.batch_size
        args.mean_len = dataset.mean_seq_len if args.mean_len is None else args.mean_len
    equation, needed = _PHASE_INPUTS[args.phase]
    wanted = {dest for dest, _ in needed}
    stray = sorted({flag for _, inputs in _PHASE_INPUTS.values() for dest, flag in inputs
                    if dest not in wanted and getattr(args, dest) is not None})
    if args.dataset and args.phase != "sft":
        stray.insert(0, "--dataset")
    if stray:
        raise UserError(f"--phase {args.phase} does not use {', '.join(stray)}")
    missing = [flag for dest, flag in needed if getattr(args, dest) is None]
    if missing:
        raise UserError(f"--phase {args.phase} needs {', '.join(missing)}")
    inputs = {dest: getattr(args, dest) for dest, _ in needed}
    if args.steps < 0:
        raise UserError(f"--steps must be >= 0, got {args.steps}")

    if args.phase == "sft":
        step_flops = fl.sft_step_flops(shape, inputs["batch_size"], inputs["mean_len"])
        lengths = [inputs["mean_len"]]
    elif args.phase == "dapo":
        step_flops = fl.dapo_step_flops(shape, **inputs)
        lengths = [inputs["seq_len"]]
    elif args.phase == "grpo":
        step_flops = fl.grpo_step_flops(shape, **inputs)
        lengths = [inputs["seq_len"]]
    elif args.phase == "hybrid":
        step_flops = fl.hybrid_step_flops(shape, **inputs)
        lengths = [inputs["seq_len_on"], inputs["seq_len_off"]]
    else:
        step_flops = fl.upt_step_flops(shape, **inputs)
        lengths = [inputs["seq_len_on"], inputs["seq_len_off"]]

    per_token = []
    for seq_len in dict.fromkeys(lengths):  # S_on == S_off needs one row only
        forward = fl.forward_flops_per_token(shape, seq_len)
        per_token.append({"seq_len": seq_len, "forward_flops": forward, "train_flops": 3 * forward})

    result = {
        "model": args.model,
        "shape": _shape_dict(shape),
        "phase": args.phase,
        "equation": equation,
        "inputs": inputs,
        "per_token": per_token,
        "step_flops": step_flops,
        "step_exaflops": step_flops / fl.EXA,
        "steps": args.steps,
        "total_exaflops": args.steps * step_flops / fl.EXA,
        "checkpoints": [
            {"step": step, "exaflops": step * step_flops / fl.EXA} for step in _parse_checkpoints(args.checkpoints)
        ],
        "mfu": None,
    }
    if (args.chip is None) != (args.step_seconds is None):
        raise UserError("MFU needs both --chip and --step-seconds")
    if args.chip is not None:
        if args.num_chips < 1:
            raise UserError(f"--num-chips must be >= 1, got {args.num_chips}")
        peak = fl.peak_flops_for_chip(args.chip)
        result["mfu"] = {
            "chip": args.chip, "num_chips": args.num_chips, "peak_flops_per_chip": peak,
            "step_seconds": args.step_seconds,
            "mfu": fl.mfu(step_flops, args.step_seconds, peak * args.num_chips),
        }
    return result


def _phase_text(result: dict) -> str:
    s = result["shape"]
    lines = [
        f"model   {result['model']}  (L={s['num_layers']} H={s['hidden_size']} H_ff={s['intermediate_size']} "
        f"V={s['vocab_size']} D_kv={s['kv_dim']})",
        f"phase   {result['phase']} ({result['equation']})  "
        + " ".join(f"{k}={v:g}" for k, v in result["inputs"].items()),
        "",
        f"{'S (tokens)':>12}  {'forward FLOPs/token':>20}  {'train FLOPs/token':>18}",
    ]
    for row in result["per_token"]:
        lines.append(f"{row['seq_len']:>12g}  {row['forward_flops']:>20.4e}  {row['train_flops']:>18.4e}")
    lines += [
        "",
        f"per step        {result['step_flops']:.4e} FLOPs = {result['step_exaflops']:.4f} exaFLOPs",
        f"{result['steps']} step(s)  {result['total_exaflops']:.4f} exaFLOPs",
    ]
    if result["checkpoints"]:
        lines += ["", f"{'checkpoint':>10}  {'exaFLOPs':>12}"]
        lines += [f"{c['step']:>10}  {c['exaflops']:>12.3f}" for c in result["checkpoints"]]
    if result["mfu"]:
        m = result["mfu"]
        lines += ["", f"MFU     {100 * m['mfu']:.1f} %  ({m['num_chips']} x {m['chip']} at "
                      f"{m['peak_flops_per_chip'] / 1e12:g} TFLOP/s peak, {m['step_seconds']:g} s/step)"]
    return "\n".join(lines)


def _table4(model: str) -> dict:
    shape = _load_shape(model)
    datasets = {}
    for name, dataset in fl.RETU_SFT_DATASETS.items():
        forward = fl.forward_flops_per_token(shape, dataset.mean_seq_len)
        step_flops = fl.sft_step_flops(shape, dataset.batch_size, dataset.mean_seq_len)
        datasets[name] = {
            "mean_seq_len": dataset.mean_seq_len, "batch_size": dataset.batch_size,
            "checkpoint_every": dataset.checkpoint_every,
            "forward_flops_per_token": forward, "train_flops_per_token": 3 * forward,
            "step_flops": step_flops, "step_exaflops": step_flops / fl.EXA,
        }
    rows = [
        {"dataset": r.dataset, "step": r.step, "exaflops": r.exaflops, "paper_exaflops": r.paper_exaflops,
         "difference": r.exaflops - r.paper_exaflops}
        for r in fl.retu_table4(shape)
    ]
    return {"model": model, "shape": _shape_dict(shape), "datasets": datasets, "rows": rows}


def _table4_text(result: dict) -> str:
    lines = [
        f"Table 4 x_sft (paper: Qwen2.5-7B; ours: {result['model']}), SFT compute = steps x 3·B·S·F_fwd(S) (Eq. 21)",
        "",
        f"{'dataset':<12} {'S':>6} {'B':>4} {'fwd FLOPs/token':>16} {'step exaFLOPs':>14}",
    ]
    for name, d in result["datasets"].items():
        lines.append(f"{name:<12} {d['mean_seq_len']:>6} {d['batch_size']:>4} "
                     f"{d['forward_flops_per_token']:>16.4e} {d['step_exaflops']:>14.5f}")
    lines += ["", f"{'dataset':<12} {'step':>6} {'ours':>10} {'paper':>10} {'diff':>8}"]
    for r in result["rows"]:
        lines.append(f"{r['dataset']:<12} {r['step']:>6} {r['exaflops']:>10.2f} {r['paper_exaflops']:>10.1f} "
                     f"{r['difference']:>+8.2f}")
    return "\n".join(lines)
