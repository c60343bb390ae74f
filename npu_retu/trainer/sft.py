"""Supervised fine-tuning with the phase monitor (paper §3.1 Eq. 1, §6.2.1 Eq. 13-17).

One plain loop, top to bottom:

    load model, tokenizer, data -> for each optimizer step: accumulate micro-batches, step ->
    every eval_every steps: validation loss -> checkpoint -> PhaseMonitor.observe -> maybe stop

Everything is logged against steps and cumulative training FLOPs (Appendix C, Eq. 21), because
compute is the paper's x-axis. ``resume=True`` continues exactly from the newest complete
checkpoint: same weights, optimizer, schedule, RNG, data position and monitor state.

Data parallel: when this process is one rank of several (RANK / WORLD_SIZE set by the Ray driver,
torchrun or the deepspeed launcher), every rank draws the same micro-batches of the step and trains
on every world_size-th one; the loss is normalised by the step's token count over all ranks, so the
update is the single-process update. Rank 0 writes the run folder; all ranks write DeepSpeed's
checkpoint shards.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from npu_retu.algos import build_loss
from npu_retu.config import Config
from npu_retu.data.batching import SFTBatcher, pad_batch, split_validation
from npu_retu.data.errors import BadRowCounter
from npu_retu.data.prepare import tokenize_sft_files
from npu_retu.distributed import process_group as pg
from npu_retu.engine import build_engine
from npu_retu.errors import UserError
from npu_retu.flops import ModelShape, step_mfu, tokens_flops
from npu_retu.monitor.online import PhaseMonitor
from npu_retu.report.metrics import read_metrics, sum_over_ranks, write_json_atomic
from npu_retu.report.progress import Progress
from npu_retu.trainer import checkpoint as ckpt
from npu_retu.trainer.setup import Run, data_path, init_compute, open_run


@dataclass
class SFTResult:
    run_dir: Path
    steps: int
    flops: float
    picked_step: int | None
    picked_checkpoint: Path | None
    phase_report: Any = None  # npu_retu.monitor.phases.PhaseReport
    first_decision: Any = None  # the online monitor's first switch / rollback decision
    skipped_rows: int = 0
    metrics: list[dict[str, Any]] = field(default_factory=list)


def load_sft_data(cfg: Config, tokenizer, counter):
    """Tokenized train and validation examples (validation: val_files, else a held-out split)."""

    def tokenized(paths):
        # = load_sft + tokenize_sft on each example (rows longer than max_length counted as skips),
        # in data.num_workers processes, with the tokenized-data cache (npu_retu.data.prepare)
        return tokenize_sft_files(
            [data_path(p) for p in paths], tokenizer, max_length=cfg.data.max_length, too_long=cfg.data.too_long,
            skip_bad_rows=cfg.data.skip_bad_rows, counter=counter, num_workers=cfg.data.num_workers,
            cache=cfg.data.cache, cache_dir=cfg.data.cache_dir,
        )

    train = tokenized(cfg.data.train_files)
    if cfg.data.val_files:
        val = tokenized(cfg.data.val_files)
    elif cfg.data.val_size > 0:
        train, val = split_validation(train, cfg.data.val_size, seed=cfg.run.seed)
    else:
        val = []
    if not train:
        raise UserError(f"no training examples left in {cfg.data.train_files}")
    return train, val


def total_steps(cfg: Config, n_train: int) -> int:
    if cfg.sft.max_steps > 0:
        return cfg.sft.max_steps
    return max(1, math.ceil(cfg.sft.epochs * n_train / cfg.sft.global_batch_size))


def train_sft(cfg: Config, *, resume: bool = False, overwrite: bool = False, quiet: bool = False) -> SFTResult:
    """Run SFT as configured; returns where the run went and what the monitor picked.

    The run folder is locked for the whole run (npu_retu.trainer.run_folder): a second process on
    the same folder is refused, and ``resume`` with a changed config is checked key by key.
    """
    backend, ranks, say = init_compute(cfg, quiet=quiet)
    accum = cfg.sft.global_batch_size // cfg.sft.micro_batch_size
    if accum % ranks.world_size:
        raise UserError(
            f"sft.global_batch_size ({cfg.sft.global_batch_size}) must be a multiple of sft.micro_batch_size x ranks "
            f"({cfg.sft.micro_batch_size} x {ranks.world_size}) so that every rank trains on the same number of micro-batches"
        )
    with open_run(cfg, backend, ranks, say, resume=resume, overwrite=overwrite, job="sft") as run:
        return _train_sft(cfg, run, quiet=quiet)


def _train_sft(cfg: Config, run: Run, *, quiet: bool) -> SFTResult:
    backend, ranks, say, tokenizer = run.backend, run.ranks, run.say, run.tokenizer
    accum = cfg.sft.global_batch_size // cfg.sft.micro_batch_size
    counter = BadRowCounter()
    train, val = load_sft_data(cfg, tokenizer, counter)
    steps_total = total_steps(cfg, len(train))
    batcher = SFTBatcher(
        train,
        micro_batch_size=cfg.sft.micro_batch_size,
        seed=cfg.run.seed,
        shuffle=cfg.data.shuffle,
        packing=cfg.data.packing,
        max_length=cfg.data.max_length,
        pad_token_id=tokenizer.pad_token_id,
    )
    val_batches = [
        pad_batch(val[i : i + cfg.sft.eval_batch_size], tokenizer.pad_token_id) for i in range(0, len(val), cfg.sft.eval_batch_size)
    ]
    # this rank's share of the validation batches; ZeRO-3 needs the same forward count on every rank
    my_val_batches = val_batches[ranks.rank :: ranks.world_size]
    val_forwards = math.ceil(len(val_batches) / ranks.world_size)
    engine = build_engine(
        cfg, run.model, total_steps=steps_total, backend=backend, world_size=ranks.world_size,
        micro_batch_size=cfg.sft.micro_batch_size, grad_accum_steps=accum // ranks.world_size, optim=cfg.sft.optim,
    )
    loss_fn = build_loss("nll", kernels=cfg.sft.kernels)  # Eq. 1, from the registry in npu_retu.algos.losses
    shape = ModelShape.from_hf_config(run.model.config)
    peak = backend.peak_flops("bf16" if cfg.model.dtype == "bfloat16" else "fp32" if cfg.model.dtype == "float32" else "fp16")
    monitor = PhaseMonitor(delta=cfg.monitor.delta, delta2=cfg.monitor.delta2, patience=cfg.monitor.patience, pick=cfg.monitor.pick)

    step, flops, tokens_seen, elapsed = 0, 0.0, 0, 0.0
    state = run.restore(engine)
    if state is not None:
        batcher.load_state_dict(state["batcher"])
        monitor.load_state_dict(state["monitor"])
        step, flops, tokens_seen, elapsed = state["step"], state["flops"], state["tokens"], state["elapsed"]
        say(f"sft: resumed from {run.resume_from} (step {step})")
    logger = run.logger(step)

    say(
        f"sft: {len(train)} train / {len(val)} validation examples, {steps_total} steps of {cfg.sft.global_batch_size} "
        f"({accum} x {cfg.sft.micro_batch_size}), device {backend.name}, engine {cfg.engine.name}"
        + (f", {ranks.world_size} ranks ({backend.dist_backend})" if ranks.distributed else "")
    )
    if not val and cfg.monitor.enabled:
        raise UserError("the phase monitor needs validation data: set data.val_files or data.val_size")

    # a bar on a terminal, else a line every NPU_RETU_PROGRESS_INTERVAL seconds (also when quiet: CI logs and nohup)
    progress = Progress(steps_total, "sft steps", initial=step, enabled=cfg.run.progress and ranks.is_main)
    stop_reason = None
    try:
        while step < steps_total:
            t0 = time.perf_counter()
            # every rank draws the step's micro-batches and trains on every world_size-th; the loss
            # is divided by the step's label tokens over all of them (Eq. 1's token mean)
            micro_batches = [next(batcher) for _ in range(accum)]
            num_loss_tokens = sum(int((mb["labels"][:, 1:] != -100).sum()) for mb in micro_batches)
            mine = micro_batches[ranks.rank :: ranks.world_size]
            loss_sum = 0.0
            for number, mb in enumerate(mine):
                loss, _ = loss_fn(engine.module, {k: v.to(engine.device) for k, v in mb.items()})
                engine.backward(loss / max(1, num_loss_tokens), last=number == len(mine) - 1)
                loss_sum += float(loss.detach())
            stats = engine.step()
            loss_sum = sum_over_ranks({"loss_sum": loss_sum})["loss_sum"]
            backend.synchronize()
            dt = time.perf_counter() - t0
            elapsed += dt
            step += 1
            seq_lens = [n for mb in micro_batches for n in _sequence_lengths(mb)]
            step_flops = tokens_flops(shape, seq_lens, passes=3)
            flops += step_flops
            tokens_seen += sum(seq_lens)
            row = {
                "train/loss": loss_sum / max(1, num_loss_tokens),
                "train/lr": stats["lr"],
                "train/grad_norm": stats["grad_norm"],
                "train/tokens": sum(seq_lens),
                "train/loss_tokens": num_loss_tokens,
                "train/tokens_per_s": sum(seq_lens) / dt,
                "train/step_flops": step_flops,
                "time/step_s": dt,
            }
            if peak:  # the step's FLOPs over all ranks / (wall time x the peak of all chips): npu_retu.flops.step_mfu
                row["train/mfu"] = step_mfu(step_flops, dt, peak, ranks.world_size)
            if step % cfg.sft.log_every == 0 or step == steps_total:
                logger.log(step, flops, row)
            progress.update(1, loss=f"{row['train/loss']:.4f}")

            at_eval = step % cfg.sft.eval_every == 0 or step == steps_total
            at_save = step % cfg.sft.save_every == 0 or step == steps_total
            decision = None
            if at_eval and val_batches:
                val_loss = validation_loss(engine, loss_fn, my_val_batches, pad_to=val_forwards)
                decision = monitor.observe(step, flops, val_loss, has_checkpoint=at_save) if cfg.monitor.enabled else None
                val_row = {"val/loss": val_loss}
                if decision is not None:
                    val_row.update({"monitor/phase": decision.phase, "monitor/action": decision.action})
                logger.log(step, flops, val_row)
                if ranks.is_main:
                    progress.write(f"step {step:>6}  val loss {val_loss:.4f}" + (f"  [{val_row['monitor/phase']}] {decision.action}" if decision else ""))
            if at_save:
                state = {
                    "step": step,
                    "flops": flops,
                    "tokens": tokens_seen,
                    "elapsed": elapsed,
                    "engine": engine.state_dict(),
                    "batcher": batcher.state_dict(),
                    "monitor": monitor.state_dict(),
                    "rng": backend.rng_state(),
                    "config": cfg.to_dict(),
                }
                run.save_checkpoint(step, engine, state, keep=cfg.sft.keep_checkpoints, protect=_best_steps(monitor))
            if decision is not None and decision.action != "continue" and cfg.monitor.stop_on_decision:
                stop_reason = f"monitor: {decision.action} at step {step} ({decision.reason})"
                break
    finally:
        progress.close()
        logger.close()

    if stop_reason:
        say(stop_reason)
    if counter.skipped:
        say(counter.summary())
        if ranks.is_main:
            say(f"sft: every skipped row is listed in {counter.write(run.dir / 'skipped_rows.jsonl')}")
    pg.barrier()
    if not ranks.is_main:  # rank 0 labels the curve and writes phases.json
        return SFTResult(run_dir=run.dir, steps=step, flops=flops, picked_step=None, picked_checkpoint=None, skipped_rows=counter.skipped)
    return finish_sft(cfg, run.dir, monitor, step, flops, counter.skipped, say)


@torch.no_grad()
def validation_loss(engine, loss_fn, batches: list, *, pad_to: int) -> float:
    """Mean validation loss over every rank's ``batches`` (eval mode, no gradients).

    Every rank runs ``pad_to`` forwards, the extra ones on its first batch with the result dropped:
    under ZeRO-3 each forward gathers the weights from all ranks, so the counts must agree.
    """
    engine.module.eval()
    total, count = 0.0, 0
    for i in range(max(len(batches), pad_to) if batches else 0):
        batch = batches[i] if i < len(batches) else batches[0]
        loss_sum, metrics = loss_fn(engine.module, {k: v.to(engine.device) for k, v in batch.items()})
        if i < len(batches):
            total += float(loss_sum)
            count += metrics["tokens"]
    engine.module.train()
    sums = sum_over_ranks({"loss": total, "tokens": count})
    return sums["loss"] / max(1, sums["tokens"])


def finish_sft(cfg: Config, run_dir: Path, monitor, step: int, flops: float, skipped: int, say) -> SFTResult:
    """Label the validation curve offline, pick the checkpoint, write phases.json / .png."""
    result = SFTResult(run_dir=run_dir, steps=step, flops=flops, picked_step=None, picked_checkpoint=None, skipped_rows=skipped)
    result.metrics = read_metrics(run_dir / "metrics.jsonl")
    if not cfg.monitor.enabled or not monitor.history:
        return result
    report = monitor.offline_report()
    result.phase_report = report
    result.first_decision = monitor.first_decision
    result.picked_step = report.pick
    if report.pick is not None:
        path = ckpt.checkpoint_dir(run_dir, report.pick)
        result.picked_checkpoint = path if path.is_dir() else None
    payload = report.to_dict()
    payload["first_online_decision"] = _decision_dict(monitor.first_decision)
    payload["picked_checkpoint"] = str(result.picked_checkpoint) if result.picked_checkpoint else None
    write_json_atomic(run_dir / "phases.json", payload)
    try:
        from npu_retu.report.plots import plot_phases

        plot_phases(report, run_dir / "phases.png", x="flops", title=f"SFT validation loss: {cfg.run.name}")
    except Exception as e:  # a plot must never lose a finished run
        say(f"sft: could not draw phases.png: {e}")
    return result


def _decision_dict(decision) -> dict[str, Any] | None:
    if decision is None:
        return None
    return decision.to_dict()


def _sequence_lengths(batch) -> list[int]:
    """Token count of each sequence (document) in a micro-batch, for the FLOPs count."""
    if "seq_lens" in batch:
        return [int(n) for n in batch["seq_lens"]]
    return [int(n) for n in batch["attention_mask"].sum(dim=1).tolist()]


def _best_steps(monitor) -> set[int]:
    """Checkpoints the monitor may still hand to RL: never pruned."""
    if not monitor.history:
        return set()
    keep = {monitor.stable_pick(), monitor.offline_report().pick}
    if monitor.first_decision is not None:
        keep.add(monitor.first_decision.checkpoint_step)
    return {s for s in keep if s is not None}
