"""``npu-retu plan``: before booking a cluster, size a config on it: memory per device for every ZeRO
stage, FLOPs per step / checkpoint interval / phase (paper Appendix C), and wall time at an assumed
MFU. The arithmetic is in :mod:`npu_retu.plan`; this module reads the config and prints."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from npu_retu import flops as fl
from npu_retu import plan as pl
from npu_retu.errors import UserError
from npu_retu.model_presets import MODEL_PRESETS, find_preset, preset_names

HELP = "memory per device (ZeRO 0-3), FLOPs (Appendix C) and wall time of a config on N nodes x D chips"

GIB = 2**30
DEFAULT_MFU = 0.4
DEFAULT_HEADROOM = 0.1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config (a path, or the name of a shipped config)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. sft.micro_batch_size=2")
    parser.add_argument("--phase", choices=["sft", "rl"], default="sft", help="plan the config's SFT or its RL (default sft)")
    parser.add_argument("--nodes", type=int, required=True, help="nodes in the cluster")
    parser.add_argument("--devices-per-node", type=int, required=True, metavar="D", help="accelerators per node")
    parser.add_argument("--chip", required=True, metavar="NAME",
                        help="chip, e.g. Ascend910B2, Ascend910B3, H100-SXM, H200, A100, A100-40GB (npu_retu/device/chips.py)")
    parser.add_argument("--mfu", type=float, default=DEFAULT_MFU,
                        help=f"assumed model FLOPs utilisation for wall time (default {DEFAULT_MFU}; use a measured one)")
    parser.add_argument("--headroom", type=float, default=DEFAULT_HEADROOM,
                        help=f"fraction of device memory kept free for the runtime and fragmentation (default {DEFAULT_HEADROOM})")
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
    result = build_plan(args)
    print(json.dumps(result, indent=2) if args.json else plan_text(result))
    return 0


# ----------------------------------------------------------------------------------------------
# inputs


def _check_args(args: argparse.Namespace) -> None:
    from npu_retu.device.chips import CHIP_PEAK_FLOPS, chip_key

    if args.nodes < 1:
        raise UserError(f"--nodes must be >= 1, got {args.nodes}")
    if args.devices_per_node < 1:
        raise UserError(f"--devices-per-node must be >= 1, got {args.devices_per_node}")
    if chip_key(args.chip) is None:
        raise UserError(f"--chip {args.chip!r} is not a known chip; known chips: {', '.join(CHIP_PEAK_FLOPS)}")
    if not 0 < args.mfu <= 1:
        raise UserError(f"--mfu must be in (0, 1], got {args.mfu}")
    if not 0 <= args.headroom < 1:
        raise UserError(f"--headroom must be in [0, 1), got {args.headroom}")
    for flag, value in (("--mean-len", args.mean_len), ("--seq-len", args.seq_len)):
        if value is not None and not value > 0:
            raise UserError(f"{flag} must be > 0, got {value}")
    if args.rows is not None and args.rows < 1:
        raise UserError(f"--rows must be >= 1, got {args.rows}")
    if args.rounds is not None and not args.rounds >= 1:
        raise UserError(f"--rounds must be >= 1, got {args.rounds}")
    if args.phase == "rl" and (args.mean_len is not None or args.dataset or args.rows is not None):
        raise UserError("--phase rl does not use --mean-len / --dataset / --rows (use --seq-len)")
    if args.phase == "sft" and (args.seq_len is not None or args.rounds is not None):
        raise UserError("--phase sft does not use --seq-len / --rounds (use --mean-len or --dataset)")


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9.]", "", text.lower())


def _named_in_path(path: str, names) -> tuple[str, str] | None:
    """(name, path component) for the last component of ``path`` that starts with one of ``names``
    (ignoring case, '-' and '_'; the longest name wins), or None."""
    for component in reversed(Path(path).parts):
        hits = [name for name in names if _norm(component).startswith(_norm(name))]
        if hits:
            return max(hits, key=lambda n: len(_norm(n))), component
    return None


def resolve_model(cfg, model_arg: str | None) -> tuple[pl.ModelSpec, str]:
    """The model spec and words that say where it came from: --model, model.path's config.json,
    or the preset a component of model.path names (``/path/to/Qwen2.5-7B``)."""

    def from_folder(path: str) -> pl.ModelSpec:
        from npu_retu.flops import read_model_config

        return pl.model_spec(*read_model_config(path))

    if model_arg:
        if Path(model_arg).exists():
            return from_folder(model_arg), f"--model {model_arg}"
        preset = find_preset(model_arg)
        if preset is None:
            raise UserError(f"--model {model_arg!r} is neither a preset ({', '.join(preset_names())}) nor a model folder")
        return pl.model_spec(preset), f"preset {model_arg} (--model)"
    path = cfg.model.path
    if Path(path).exists() and (Path(path).is_file() or (Path(path) / "config.json").is_file()):
        return from_folder(path), f"{path}/config.json"
    named = _named_in_path(path, MODEL_PRESETS)
    if named is None:
        raise UserError(
            f"model.path {path!r} is not a model folder here and names no preset ({', '.join(preset_names())}); "
            "pass --model PRESET_OR_PATH"
        )
    name, component = named
    return pl.model_spec(MODEL_PRESETS[name]), f"preset {name} (named by model.path component {component!r})"


# ----------------------------------------------------------------------------------------------
# the plan


def build_plan(args: argparse.Namespace) -> dict:
    """Everything ``plan`` prints, as one JSON-ready dict."""
    from npu_retu.commands.sft import resolve_config_path
    from npu_retu.config import load_config
    from npu_retu.device.chips import chip_key, memory_bytes_for

    _check_args(args)
    cfg = load_config(resolve_config_path(args.config), list(args.overrides or []))
    spec, model_source = resolve_model(cfg, args.model)
    counts = pl.count_parameters(spec)
    chip = chip_key(args.chip)
    devices = args.nodes * args.devices_per_node
    hbm = memory_bytes_for(chip)
    precision = "bf16" if cfg.engine.precision == "auto" else cfg.engine.precision
    peak = fl.peak_flops_for_chip(chip, precision)
    notes: list[str] = []

    if cfg.cluster.num_workers and cfg.cluster.num_workers != devices:
        notes.append(f"the config's cluster.num_workers is {cfg.cluster.num_workers}, this plan is for {devices} devices")

    common = {
        "config": str(args.config),
        "phase": args.phase,
        "model": {
            "source": model_source,
            "num_layers": spec.shape.num_layers, "hidden_size": spec.shape.hidden_size,
            "intermediate_size": spec.shape.intermediate_size, "vocab_size": spec.shape.vocab_size,
            "kv_dim": spec.shape.kv_dim, "num_attention_heads": spec.num_attention_heads,
            "tie_word_embeddings": spec.tie_word_embeddings,
            "parameters": counts.total,
            "parameters_by_part": {"embedding": counts.embedding, "lm_head": counts.lm_head, "attention": counts.attention,
                                   "mlp": counts.mlp, "norms": counts.norms},
        },
        "cluster": {
            "nodes": args.nodes, "devices_per_node": args.devices_per_node, "devices": devices, "chip": chip,
            "hbm_bytes": hbm, "peak_flops_per_device": peak, "precision": precision,
        },
        "engine": {
            "name": cfg.engine.name, "zero_stage": cfg.engine.zero_stage if cfg.engine.name == "deepspeed" else None,
            "precision": precision, "offload_optimizer": cfg.engine.offload_optimizer,
            "offload_params": cfg.engine.offload_params, "reduce_bucket_size": cfg.engine.reduce_bucket_size,
            "gradient_checkpointing": cfg.model.gradient_checkpointing,
            "attn_implementation": cfg.model.attn_implementation,
        },
        "mfu": args.mfu,
        "headroom": args.headroom,
    }
    if args.phase == "sft":
        workload, batch, compute = _sft(cfg, args, spec, devices, peak, notes)
    else:
        workload, batch, compute = _rl(cfg, args, spec, devices, peak, notes)

    per_param = pl.STATE_BYTES[precision]
    rows = pl.memory_rows(
        spec, workload, dp_size=devices, per_param=per_param, bucket_elements=cfg.engine.reduce_bucket_size,
        offload_optimizer=cfg.engine.offload_optimizer == "cpu", offload_params=cfg.engine.offload_params == "cpu",
        hbm_bytes=hbm, headroom=args.headroom,
    )
    columns = [{"name": f"ZeRO-{r['stage']}", **r} for r in rows]
    if cfg.engine.name == "local":
        (local,) = pl.memory_rows(
            spec, workload, dp_size=devices, per_param=pl.local_state_bytes(cfg.model.dtype), stages=(0,),
            hbm_bytes=hbm, headroom=args.headroom, zero_buffers=False,
        )
        columns.append({"name": "local", **local})
        configured = "local"
    else:
        configured = f"ZeRO-{cfg.engine.zero_stage}"
    for column in columns:
        column["configured"] = column["name"] == configured
    checkpoint_bytes = _checkpoint_bytes(cfg, counts.total, precision)
    return {
        **common,
        "batch": batch,
        "workload": {
            "seq_len": workload.seq_len, "micro_batch": workload.micro_batch,
            "gradient_checkpointing": workload.gradient_checkpointing, "flash_attention": workload.flash_attention,
            "padded": workload.padded, "logits_bytes_per_entry": workload.logits_bytes_per_entry,
            "rollout_sequences": workload.rollout_sequences, "rollout_seq_len": workload.rollout_seq_len,
            "reference_model": workload.reference_model, "eval_micro_batch": workload.eval_micro_batch,
        },
        "memory": columns,
        "configured": configured,
        "checkpoint_bytes": checkpoint_bytes,
        "compute": compute,
        "notes": notes,
    }


def _flash(cfg) -> bool:
    # sdpa picks flash / memory-efficient kernels for 16-bit inputs; eager materialises the scores
    return cfg.model.attn_implementation != "eager"


def _checkpoint_bytes(cfg, params: int, precision: str) -> float:
    """Disk per checkpoint, at least: the HF weights (model.dtype) + the optimizer states."""
    weights = {"float32": 4, "bfloat16": 2, "float16": 2}[cfg.model.dtype]
    optimizer = pl.STATE_BYTES[precision].optimizer if cfg.engine.name == "deepspeed" else pl.local_state_bytes(cfg.model.dtype).optimizer
    return float(params) * (weights + optimizer)


def _timing(flops: float, devices: int, peak: float, mfu: float) -> dict:
    seconds = pl.wall_seconds(flops, devices=devices, peak_flops_per_device=peak, mfu=mfu)
    return {"flops": flops, "exaflops": flops / fl.EXA, "seconds": seconds}


def _sft(cfg, args, spec, devices, peak, notes):
    sft = cfg.sft
    per_rank = sft.micro_batch_size * devices
    accumulation = sft.global_batch_size / per_rank
    if sft.global_batch_size % per_rank:
        notes.append(
            f"sft.global_batch_size {sft.global_batch_size} is not a multiple of micro-batch x devices "
            f"({sft.micro_batch_size} x {devices}): the SFT trainer refuses this"
        )
    batch = {"global_batch": sft.global_batch_size, "micro_batch_per_device": sft.micro_batch_size,
             "accumulation_steps": accumulation, "max_length": cfg.data.max_length}

    dataset_name, dataset_source = args.dataset, "--dataset"
    if dataset_name is None and args.mean_len is None:
        named = next((hit for f in cfg.data.train_files if (hit := _named_in_path(f, fl.RETU_SFT_DATASETS))), None)
        if named:
            dataset_name, dataset_source = named[0], f"data.train_files component {named[1]!r}"
    if args.mean_len is not None:
        mean_len, length_source = args.mean_len, "--mean-len"
    elif dataset_name is not None:
        mean_len = fl.RETU_SFT_DATASETS[dataset_name].mean_seq_len
        length_source = f"{dataset_name}, from {dataset_source}; RETU's mean in Qwen2.5 tokens"
    else:
        raise UserError("SFT FLOPs need the data's mean length: pass --mean-len S or --dataset NAME "
                        f"({', '.join(fl.RETU_SFT_DATASETS)})")
    if dataset_name is not None and fl.RETU_SFT_DATASETS[dataset_name].batch_size != sft.global_batch_size:
        notes.append(f"RETU trained {dataset_name} at batch {fl.RETU_SFT_DATASETS[dataset_name].batch_size}; "
                     f"this config's is {sft.global_batch_size}")

    if args.rows is not None:
        rows, rows_source = args.rows, "--rows"
    elif dataset_name is not None:
        rows, rows_source = pl.RETU_SFT_ROWS[dataset_name], f"{dataset_name} (paper §5.1 / Appendix E)"
    else:
        rows, rows_source = None, None
    if sft.max_steps > 0:
        steps, steps_source = sft.max_steps, "sft.max_steps"
    elif rows is not None:
        from npu_retu.trainer.sft import total_steps  # the trainer's own count

        steps = total_steps(cfg, rows)
        steps_source = f"ceil({sft.epochs:g} epochs x {rows:,} rows / {sft.global_batch_size})"
    else:
        raise UserError("SFT steps need the row count: pass --rows N (or --dataset NAME, or set sft.max_steps)")
    if dataset_name == "SFT889K" and args.rows is None and sft.max_steps == 0:
        notes.append(pl.SFT889K_STEPS_NOTE)

    step_flops = fl.sft_step_flops(spec.shape, sft.global_batch_size, mean_len)
    interval = sft.save_every
    compute = {
        "equation": "Eq. 21: 3 x B x S x F_fwd(S)",
        "mean_seq_len": mean_len, "mean_seq_len_source": length_source,
        "rows": rows, "rows_source": rows_source, "steps": steps, "steps_source": steps_source,
        "checkpoint_every": interval,
        "cases": [{
            "label": "",
            "per_step": _timing(step_flops, devices, peak, args.mfu),
            "per_checkpoint": _timing(interval * step_flops, devices, peak, args.mfu),
            "phase": _timing(steps * step_flops, devices, peak, args.mfu),
        }],
    }
    paper = _paper_sft_exaflops(spec, dataset_name)
    if paper and sft.global_batch_size == fl.RETU_SFT_DATASETS[dataset_name].batch_size and args.mean_len is None:
        source, by_step = paper
        shown = {min(by_step), max(by_step), interval} & set(by_step)
        compute["paper_check"] = [
            {"step": step, "ours_exaflops": step * step_flops / fl.EXA, "paper_exaflops": by_step[step], "source": source}
            for step in sorted(shown)
        ]
    padded = cfg.model.attn_implementation != "flash_attention_2" and (sft.micro_batch_size > 1 or cfg.data.packing)
    workload = pl.Workload(
        seq_len=cfg.data.max_length, micro_batch=sft.micro_batch_size,
        gradient_checkpointing=cfg.model.gradient_checkpointing, flash_attention=_flash(cfg), padded=padded,
        activation_bytes=2 if cfg.engine.precision != "fp32" else 4,
        eval_micro_batch=sft.eval_batch_size if cfg.data.val_files or cfg.data.val_size else 0,
        logits_bytes_per_entry=pl.LOGITS_BYTES_PER_ENTRY if sft.kernels == "unfused" else 0,
        padded_eval=cfg.model.attn_implementation != "flash_attention_2" and sft.eval_batch_size > 1,
    )
    return workload, batch, compute


def _paper_sft_exaflops(spec: pl.ModelSpec, dataset_name: str | None) -> tuple[str, dict[int, float]] | None:
    """The paper's printed SFT compute for this model (matched by shape) and dataset, if any."""
    if dataset_name is None:
        return None
    if spec.shape == fl.ModelShape.from_hf_config(MODEL_PRESETS["Qwen2.5-7B"]):
        table = fl.RETU_TABLE4_SFT_EXAFLOPS.get(dataset_name)
        return ("Table 4", table) if table else None
    for (preset, dataset), by_step in pl.PAPER_SFT_EXAFLOPS.items():
        if dataset == dataset_name and spec.shape == fl.ModelShape.from_hf_config(MODEL_PRESETS[preset]):
            return "§6.3", by_step
    return None


def _rl(cfg, args, spec, devices, peak, notes):
    rl, algo = cfg.rl, cfg.rl.algo
    max_len = rl.max_prompt_length + rl.max_response_length
    sequences_per_mini = rl.mini_batch_prompts * algo.n
    per_device = sequences_per_mini / devices
    if sequences_per_mini % devices:
        notes.append(f"a mini-batch of {rl.mini_batch_prompts} prompts x {algo.n} = {sequences_per_mini} sequences "
                     f"does not split evenly over {devices} devices")
    elif per_device < rl.micro_batch_size:
        notes.append(f"each device gets {per_device:g} sequences per mini-batch, fewer than rl.micro_batch_size "
                     f"({rl.micro_batch_size}): the micro-batch is really {per_device:g}")
    micro = int(min(rl.micro_batch_size, max(1, per_device)))
    generated_per_device = -(-rl.gen_batch_prompts * algo.n // devices)
    rollout_sequences = min(rl.rollout.batch_size, generated_per_device)
    batch = {"gen_batch_prompts": rl.gen_batch_prompts, "train_batch_prompts": rl.train_batch_prompts,
             "mini_batch_prompts": rl.mini_batch_prompts, "group_size": algo.n,
             "sequences_per_mini_batch": sequences_per_mini, "sequences_per_device_per_mini_batch": per_device,
             "micro_batch_per_device": micro, "rollout_sequences_per_device": rollout_sequences,
             "max_prompt_length": rl.max_prompt_length, "max_response_length": rl.max_response_length}
    notes.append("the rollout engine is transformers generate (rl.rollout.engine): decoding is memory-bound, so "
                 "the MFU of generation is far below training's; measure it (npu-retu bench rl) and pass --mfu")

    if args.seq_len is not None:
        seq_len, seq_source = args.seq_len, "--seq-len"
    else:
        seq_len, seq_source = float(max_len), "upper bound: rl.max_prompt_length + rl.max_response_length; pass --seq-len"
    if algo.dynamic_sampling:
        equation = "Eq. 22: (K x B_gen + 3 x B_train) x G x S x F_fwd(S)"
        rounds = [args.rounds] if args.rounds is not None else sorted({1.0, float(algo.max_draws)})
        step_flops = {k: fl.dapo_step_flops(spec.shape, gen_batch=rl.gen_batch_prompts, rounds=k, group_size=algo.n,
                                            train_batch=rl.train_batch_prompts, seq_len=seq_len) for k in rounds}
    else:
        equation = "Eq. 23: 4 x B x G x S x F_fwd(S)"
        if args.rounds not in (None, 1):
            raise UserError(f"--rounds {args.rounds:g}: {cfg.rl.algorithm} has no dynamic sampling (one round per step)")
        step_flops = {1.0: fl.grpo_step_flops(spec.shape, batch=rl.train_batch_prompts, group_size=algo.n, seq_len=seq_len)}
    interval = rl.save_every
    compute = {
        "equation": equation, "mean_seq_len": seq_len, "mean_seq_len_source": seq_source,
        "steps": rl.max_steps, "steps_source": "rl.max_steps", "checkpoint_every": interval,
        "cases": [{
            "label": f"K={k:g}", "rounds": k,
            "per_step": _timing(f, devices, peak, args.mfu),
            "per_checkpoint": _timing(interval * f, devices, peak, args.mfu),
            "phase": _timing(rl.max_steps * f, devices, peak, args.mfu),
        } for k, f in step_flops.items()],
    }
    workload = pl.Workload(
        seq_len=max_len, micro_batch=micro, gradient_checkpointing=cfg.model.gradient_checkpointing,
        flash_attention=_flash(cfg), padded=cfg.model.attn_implementation != "flash_attention_2",
        activation_bytes=2 if cfg.engine.precision != "fp32" else 4,
        logits_bytes_per_entry=pl.LOGITS_BYTES_PER_ENTRY if rl.kernels == "unfused" else 0,
        rollout_sequences=rollout_sequences, rollout_seq_len=max_len, reference_model=algo.kl_coef > 0,
    )
    return workload, batch, compute


# ----------------------------------------------------------------------------------------------
# text


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value / GIB:.1f}"


def plan_text(r: dict) -> str:
    m, c, e, w = r["model"], r["cluster"], r["engine"], r["workload"]
    parts = m["parameters_by_part"]
    lines = [
        f"plan    {r['config']}  ({r['phase']})",
        f"model   {m['source']}: L={m['num_layers']} H={m['hidden_size']} H_ff={m['intermediate_size']} "
        f"V={m['vocab_size']} D_kv={m['kv_dim']} heads={m['num_attention_heads']}",
        f"        {m['parameters']:,} parameters ({m['parameters'] / 1e9:.2f} B): embedding {parts['embedding'] / 1e6:,.1f} M, "
        f"LM head {parts['lm_head'] / 1e6:,.1f} M{' (tied)' if m['tie_word_embeddings'] else ''}, "
        f"attention {parts['attention'] / 1e6:,.1f} M, MLP {parts['mlp'] / 1e6:,.1f} M, norms {parts['norms'] / 1e6:,.2f} M",
        f"cluster {c['nodes']} nodes x {c['devices_per_node']} {c['chip']} = {c['devices']} devices (data parallel "
        f"{c['devices']}), {_gib(c['hbm_bytes'])} GiB each, {c['peak_flops_per_device'] / 1e12:g} TFLOP/s {c['precision']} peak",
        f"engine  {e['name']}" + (f" ZeRO-{e['zero_stage']}" if e["zero_stage"] is not None else " (plain data parallel)")
        + f", {e['precision']}{' mixed precision' if e['precision'] == 'bf16' else ''}, gradient checkpointing "
        f"{'on' if e['gradient_checkpointing'] else 'off'}, attention {e['attn_implementation']}"
        + (f", offload optimizer={e['offload_optimizer']} params={e['offload_params']}"
           if "cpu" in (e["offload_optimizer"], e["offload_params"]) else ""),
        _batch_line(r),
        "",
        f"Memory per device, GiB (micro-batch {w['micro_batch']} x {w['seq_len']} tokens; * = configured)",
    ]
    cols = r["memory"]
    header = f"  {'':<38}" + "".join(f"{col['name'] + ('*' if col['configured'] else ''):>10}" for col in cols)
    lines.append(header)

    def row(label: str, key, fmt=_gib):
        lines.append(f"  {label:<38}" + "".join(f"{fmt(key(col)):>10}" for col in cols))

    row("weights", lambda col: col["weights"])
    row("gradients", lambda col: col["gradients"])
    row("optimizer states", lambda col: col["optimizer"])
    row("ZeRO buffers (bucket, ZeRO-3 gather)", lambda col: col["zero_buffers"])
    if w["reference_model"]:
        row("reference model (KL)", lambda col: col["reference_model"])
    first = cols[0]
    if w["gradient_checkpointing"]:
        row("activations: layer inputs (2sbh x L)", lambda col: col["activations_detail"]["layer_inputs"])
        row("activations: one layer's recompute", lambda col: col["activations_detail"]["one_layer"])
    else:
        row("activations: all layers", lambda col: col["activations_detail"]["all_layers"])
    if first["logits"]:
        row("logits (bf16 + fp32 + log-softmax)", lambda col: col["logits"])
    if first["attention_mask"]:
        row("attention mask (b x s x s)", lambda col: col["attention_mask"])
    row("training peak", lambda col: col["train_peak"])
    if w["eval_micro_batch"]:
        row(f"validation peak (eval batch {w['eval_micro_batch']})", lambda col: col["eval_peak"])
    if w["rollout_sequences"]:
        row(f"KV cache ({w['rollout_sequences']} seqs x {w['rollout_seq_len']})", lambda col: col["kv_cache"])
        row("rollout peak", lambda col: col["rollout_peak"])
    row("peak", lambda col: col["peak"])
    row(f"usable ({100 * (1 - r['headroom']):.0f} % of HBM)", lambda col: col["usable_hbm"])
    lines.append(f"  {'':<38}" + "".join(f"{'fits' if col['fits'] else 'NO FIT':>10}" for col in cols))
    if any(col["host"] for col in cols):
        row("host memory per device (offload)", lambda col: col["host"])
    if w["gradient_checkpointing"] and first["logits"]:
        lines.append("  (with checkpointing the peak counts the larger of the logits and one layer's recompute: "
                     "they are not alive together)")
    lines.append(f"  checkpoints: at least {r['checkpoint_bytes'] / 1e9:,.0f} GB of disk each (weights + optimizer states)")

    comp = r["compute"]
    lines += [
        "",
        f"Compute ({comp['equation']}) and wall time at MFU {r['mfu']:g} (an assumption: pass --mfu from a measured run)",
        f"  S = {comp['mean_seq_len']:g} tokens ({comp['mean_seq_len_source']})",
        f"  steps = {comp['steps']:,} ({comp['steps_source']}), checkpoint every {comp['checkpoint_every']} steps",
        f"  {'':<10}{'':<16}{'steps':>8}{'exaFLOPs':>12}{'wall time':>12}",
    ]
    for case in comp["cases"]:
        for label, key, steps in (("per step", "per_step", 1), ("checkpoint", "per_checkpoint", comp["checkpoint_every"]),
                                  ("phase", "phase", comp["steps"])):
            t = case[key]
            lines.append(f"  {case['label']:<10}{label:<16}{steps:>8,}{t['exaflops']:>12.4g}{pl.format_duration(t['seconds']):>12}")
    for check in comp.get("paper_check", []):
        lines.append(f"  paper check: {check['step']:,} steps = {check['ours_exaflops']:.2f} exaFLOPs "
                     f"({check['source']}: {check['paper_exaflops']})")
    if r["notes"]:
        lines.append("")
        lines += [f"note: {n}" for n in r["notes"]]
    return "\n".join(lines)


def _batch_line(r: dict) -> str:
    b = r["batch"]
    if r["phase"] == "sft":
        return (f"batch   global {b['global_batch']} = micro {b['micro_batch_per_device']} x {r['cluster']['devices']} devices "
                f"x {b['accumulation_steps']:g} accumulation; sequences up to {b['max_length']} tokens (data.max_length)")
    return (f"batch   {b['train_batch_prompts']} prompts x G={b['group_size']} per step (generation rounds of "
            f"{b['gen_batch_prompts']} prompts); {b['sequences_per_device_per_mini_batch']:g} sequences per device per "
            f"mini-batch, micro {b['micro_batch_per_device']}; rollout decodes {b['rollout_sequences_per_device']} "
            f"sequences per device; prompt {b['max_prompt_length']} + response {b['max_response_length']} tokens")
