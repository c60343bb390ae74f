"""``npu-retu bench rl``: where the time of an RL step goes, and its throughput.

Runs ``--warmup + --steps`` real RL steps of a config (rollout, reward, old log-probs, update; no
evaluation, no checkpoints) in a temporary run folder, then reports for the timed steps the median
time of each part, generation tokens/s (response tokens generated per second of rollout),
training tokens/s (prompt + response tokens of the trained sequences per second of update) and the
median of the trainer's ``train/mfu`` (none on a CPU, which has no peak in the chip table), and
saves the figures as JSON with the device, chip, versions and date.
"""

from __future__ import annotations

import datetime
import json
import platform
import statistics
import tempfile
from pathlib import Path

PARTS = ("rollout", "reward", "logprobs", "update")


def bench_rl(args) -> dict:
    import torch
    import transformers

    from npu_retu.config import load_config
    from npu_retu.configs import resolve_config_path
    from npu_retu.device import get_backend
    from npu_retu.report.metrics import read_metrics
    from npu_retu.rollout import choose_engine
    from npu_retu.trainer.rl import train_rl

    with tempfile.TemporaryDirectory(prefix="npu-retu-bench-rl-") as tmp:
        overrides = list(args.overrides) + [
            f"run.output_dir={tmp}", "run.name=bench", "run.progress=false", f"rl.max_steps={args.warmup + args.steps}",
            "rl.eval_every=0", "rl.eval_at_start=false", "eval.files=[]", "eval.suite=", f"rl.save_every={10**9}",
        ]
        if args.model:
            overrides.append(f"model.path={args.model}")
        cfg = load_config(resolve_config_path(args.config), overrides)
        backend = get_backend()
        backend.reset_peak_memory_stats()
        train_rl(cfg, quiet=True, overwrite=True, save_checkpoints=False)
        memory = backend.memory_stats()
        rows = [r for r in read_metrics(Path(tmp) / "bench" / "metrics.jsonl") if "rollout/accuracy" in r]
    timed = rows[args.warmup :]
    if not timed:
        raise SystemExit("bench rl: no timed steps")

    def median(key: str) -> float:
        return statistics.median(r.get(key, 0.0) for r in timed)

    figures = {
        "config": str(args.config),
        "overrides": list(args.overrides),
        "model": cfg.model.path,
        "algorithm": cfg.rl.algorithm,
        "rollout_engine": choose_engine(cfg.rl.rollout.engine),
        "steps_timed": len(timed),
        "warmup_steps": args.warmup,
        "prompts_per_step": cfg.rl.train_batch_prompts,
        "samples_per_prompt": cfg.rl.algo.n,
        "max_response_length": cfg.rl.max_response_length,
        "step_s_median": median("time/step_s"),
        **{f"{part}_s_median": median(f"time/{part}_s") for part in PARTS},
        "generation_tokens_per_s_median": median("rollout/tokens_per_s"),
        "train_tokens_per_s_median": statistics.median(
            r["train/tokens"] / r["time/update_s"] for r in timed if r.get("time/update_s") and r.get("train/tokens")
        ) if any(r.get("train/tokens") for r in timed) else None,
        "draws_mean": statistics.mean(r["ds/draws"] for r in timed),
        "response_length_mean": statistics.mean(r["rollout/response_length_mean"] for r in timed),
        "step_flops_median": median("train/step_flops"),
        "peak_flops_per_chip": backend.peak_flops(cfg.model.dtype),  # None on a CPU: no MFU claimed
        # the trainer's per-step MFU (npu_retu.flops.step_mfu: the step's FLOPs over its wall time
        # and over all chips' peak; generation counts as forward FLOPs, Eq. 22)
        "mfu_median": median("train/mfu") if all("train/mfu" in r for r in timed) else None,
        "peak_memory_bytes": memory.get("peak_allocated_bytes"),
        "device": backend.name,
        "chip": backend.chip_name(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    share = {part: figures[f"{part}_s_median"] / figures["step_s_median"] for part in PARTS} if figures["step_s_median"] else {}
    print(f"RL step ({figures['algorithm']}, {figures['prompts_per_step']} prompts x {figures['samples_per_prompt']} samples, "
          f"{len(timed)} timed steps after {args.warmup} warm-up, device {figures['device']}, rollout {figures['rollout_engine']}):")
    print(f"  step time (median): {figures['step_s_median']:.2f} s")
    for part in PARTS:
        print(f"    {part:<9} {figures[f'{part}_s_median']:.2f} s ({100 * share.get(part, 0):.0f}%)")
    print(f"  generation: {figures['generation_tokens_per_s_median']:.0f} response tokens/s; mean response "
          f"{figures['response_length_mean']:.0f} tokens; {figures['draws_mean']:.2f} draws per step")
    if figures["train_tokens_per_s_median"] is not None:
        print(f"  update: {figures['train_tokens_per_s_median']:.0f} trained tokens/s")
    if figures["mfu_median"] is not None:
        print(f"  MFU (median): {100 * figures['mfu_median']:.2f} % of {figures['chip']}'s "
              f"{figures['peak_flops_per_chip'] / 1e12:g} TFLOP/s {cfg.model.dtype} peak, whole step "
              f"({figures['step_flops_median'] / 1e12:.3g} TFLOP per step, Eq. 22)")
    else:
        rate = figures["step_flops_median"] / figures["step_s_median"] if figures["step_s_median"] else 0.0
        print(f"  MFU: n/a (no {cfg.model.dtype} peak FLOP/s known for {figures['chip'] or figures['device']}); "
              f"{rate / 1e9:.2f} GFLOP/s achieved (Eq. 22 count)")
    if figures["peak_memory_bytes"]:
        print(f"  peak memory: {figures['peak_memory_bytes'] / 2**20:.0f} MiB")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    print(f"saved: {out}")
    return figures
