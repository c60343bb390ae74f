"""``npu-retu bench sft``: training throughput, MFU and peak memory of the SFT step.

Times full optimizer steps (all micro-batches: forward, backward, AdamW) of a config on the
current device, after a few untimed warm-up steps, and saves the figures as JSON together with the
device, chip, versions and date. MFU is :func:`npu_retu.flops.step_mfu` of the timed steps (one
process on one chip; none on a CPU, which has no peak in the chip table).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path


def bench_sft(args) -> dict:
    import torch
    import transformers

    from npu_retu.algos import build_loss
    from npu_retu.config import load_config
    from npu_retu.configs import resolve_config_path
    from npu_retu.data.batching import SFTBatcher
    from npu_retu.data.errors import BadRowCounter
    from npu_retu.device import get_backend, set_backend
    from npu_retu.engine.local import LocalEngine
    from npu_retu.flops import ModelShape, step_mfu, tokens_flops
    from npu_retu.models.modeling import load_model, load_tokenizer
    from npu_retu.trainer.sft import _sequence_lengths, load_sft_data

    cfg = load_config(resolve_config_path(args.config), list(args.overrides))
    if cfg.run.device != "auto":
        set_backend(cfg.run.device)
    backend = get_backend()
    backend.manual_seed(cfg.run.seed)
    trust = cfg.model.trust_remote_code
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.path, trust_remote_code=trust)
    model = load_model(cfg.model.path, cfg.model.dtype, cfg.model.attn_implementation, trust_remote_code=trust)
    train, _ = load_sft_data(cfg, tokenizer, BadRowCounter())
    accum = cfg.sft.global_batch_size // cfg.sft.micro_batch_size
    batcher = SFTBatcher(
        train, micro_batch_size=cfg.sft.micro_batch_size, seed=cfg.run.seed, shuffle=cfg.data.shuffle,
        packing=cfg.data.packing, max_length=cfg.data.max_length, pad_token_id=tokenizer.pad_token_id,
    )
    engine = LocalEngine(model, cfg.sft.optim, args.warmup + args.steps, backend.device())
    loss_fn = build_loss("nll", kernels="unfused")  # Eq. 1 from the model's logits, as the bench always timed it
    shape = ModelShape.from_hf_config(model.config)

    def one_step():
        micro = [next(batcher) for _ in range(accum)]
        n_loss = sum(int((mb["labels"][:, 1:] != -100).sum()) for mb in micro)
        t0 = time.perf_counter()
        for number, mb in enumerate(micro):
            loss, _ = loss_fn(engine.module, {k: v.to(engine.device) for k, v in mb.items()})
            engine.backward(loss / max(1, n_loss), last=number == len(micro) - 1)
        engine.step()
        backend.synchronize()
        dt = time.perf_counter() - t0
        real = sum(n for mb in micro for n in _sequence_lengths(mb))
        padded = sum(int(mb["input_ids"].numel()) for mb in micro)
        return dt, real, padded, tokens_flops(shape, [n for mb in micro for n in _sequence_lengths(mb)], passes=3)

    for _ in range(args.warmup):
        one_step()
    backend.reset_peak_memory_stats()
    times, real_tokens, padded_tokens, flops = [], 0, 0, 0.0
    for _ in range(args.steps):
        dt, real, padded, f = one_step()
        times.append(dt)
        real_tokens += real
        padded_tokens += padded
        flops += f
    memory = backend.memory_stats()
    total = sum(times)
    chip_peak = backend.peak_flops(cfg.model.dtype)
    result = {
        "benchmark": "sft_step",
        "config": str(args.config),
        "overrides": list(args.overrides),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": backend.name,
        "chip": backend.chip_name(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "params": sum(p.numel() for p in model.parameters()),
        "global_batch_size": cfg.sft.global_batch_size,
        "micro_batch_size": cfg.sft.micro_batch_size,
        "steps_timed": args.steps,
        "step_time_median_s": statistics.median(times),
        "step_time_p20_s": _quantile(times, 0.2),
        "step_time_p80_s": _quantile(times, 0.8),
        "tokens_per_s": real_tokens / total,
        "padded_tokens_per_s": padded_tokens / total,
        "achieved_flops_per_s": flops / total,
        "peak_flops_per_chip": chip_peak,  # None on a CPU: no MFU claimed
        "mfu": step_mfu(flops, total, chip_peak, 1),  # one process on one chip
        "peak_memory_bytes": memory.get("peak_allocated_bytes"),
        "memory_note": "process peak RSS (whole process, CPU)" if backend.name == "cpu" else "peak device memory allocated",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"SFT step on {result['device']} ({result['chip']}), {result['params'] / 1e6:.2f}M params, batch {cfg.sft.global_batch_size}:")
    print(f"  step time   median {result['step_time_median_s'] * 1e3:.1f} ms  (p20 {result['step_time_p20_s'] * 1e3:.1f}, p80 {result['step_time_p80_s'] * 1e3:.1f})")
    print(f"  throughput  {result['tokens_per_s']:.0f} tokens/s  ({result['padded_tokens_per_s']:.0f} incl. padding), {result['achieved_flops_per_s'] / 1e9:.2f} GFLOP/s (Appendix C count)")
    if result["mfu"] is not None:
        print(f"  MFU         {100 * result['mfu']:.1f} % of {result['chip']}'s {result['peak_flops_per_chip'] / 1e12:g} TFLOP/s "
              f"{cfg.model.dtype} peak (npu_retu.flops.step_mfu)")
    else:
        print(f"  MFU         n/a (no {cfg.model.dtype} peak FLOP/s known for {result['chip'] or result['device']})")
    peak = result["peak_memory_bytes"]
    print(f"  peak memory {peak / 2**20:.0f} MiB ({result['memory_note']})" if peak else "  peak memory n/a")
    print(f"  saved to {out}")
    return result


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
