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
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npu_retu.config import Config
from npu_retu.errors import UserError
from npu_retu.trainer.run_folder import check_resume_config, open_run_folder, record_config


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
    from npu_retu.data.schemas import load_sft
    from npu_retu.data.tokenize import tokenize_sft
    from npu_retu.data.batching import split_validation
    from npu_retu.modeling import resolve_path

    def tokenized(paths):
        examples = load_sft([resolve_path(p) for p in paths], skip_bad_rows=cfg.data.skip_bad_rows, counter=counter)
        too_long = "skip" if cfg.data.skip_bad_rows and cfg.data.too_long == "error" else cfg.data.too_long
        out = []
        for ex in examples:
            tok = tokenize_sft(ex, tokenizer, cfg.data.max_length, too_long=too_long)
            if tok is None:
                counter.skip(ex.source, "longer than data.max_length", field="messages")
                continue
            out.append(tok)
        return out

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


def train_sft(cfg: Config, *, resume: bool = False, overwrite: bool = False, quiet: bool = False, _crash_hook=None) -> SFTResult:
    """Run SFT as configured; returns where the run went and what the monitor picked.

    The run folder is locked for the whole run (npu_retu.trainer.run_folder): a second process on
    the same folder is refused, and ``resume`` with a changed config is checked key by key.
    """
    from npu_retu.device import get_backend, set_backend
    from npu_retu.distributed import process_group as pg

    if cfg.run.device != "auto":
        set_backend(cfg.run.device)
    backend = get_backend()
    ranks = pg.init_process_group(backend, cfg.cluster.timeout_s)
    say = (lambda *a: None) if quiet or not ranks.is_main else (lambda *a: print(*a, flush=True))
    accum = cfg.sft.global_batch_size // cfg.sft.micro_batch_size
    if accum % ranks.world_size:
        raise UserError(
            f"sft.global_batch_size ({cfg.sft.global_batch_size}) must be a multiple of sft.micro_batch_size x ranks "
            f"({cfg.sft.micro_batch_size} x {ranks.world_size}) so that every rank trains on the same number of micro-batches"
        )
    folder = open_run_folder(cfg.run.output_dir, cfg.run.name, resume=resume, overwrite=overwrite, is_main=ranks.is_main)
    try:
        return _train_sft(cfg, folder.path, ranks, backend, say, resume=resume, quiet=quiet, crash_hook=_crash_hook)
    finally:
        folder.release()


def _train_sft(cfg: Config, run_dir: Path, ranks, backend, say, *, resume: bool, quiet: bool, crash_hook) -> SFTResult:
    from npu_retu.data.batching import SFTBatcher, pad_batch
    from npu_retu.data.errors import BadRowCounter
    from npu_retu.distributed import process_group as pg
    from npu_retu.engine import build_engine
    from npu_retu.flops import ModelShape, mfu, tokens_flops
    from npu_retu.modeling import load_model, load_tokenizer
    from npu_retu.monitor.online import PhaseMonitor
    from npu_retu.report.metrics import MetricsLogger, NullLogger
    from npu_retu.trainer import checkpoint as ckpt

    accum = cfg.sft.global_batch_size // cfg.sft.micro_batch_size
    pg.barrier()  # rank 0 has prepared the folder
    resume_from = ckpt.latest_checkpoint(run_dir) if resume else None
    changes = check_resume_config(cfg, run_dir, say=say) if resume_from is not None else {}
    pg.barrier()  # every rank has read the saved config before rank 0 replaces it
    if ranks.is_main:
        record_config(cfg, run_dir, changes, at=resume_from.name if resume_from else None)
    pg.barrier()
    backend.manual_seed(cfg.run.seed)

    if resume and resume_from is None:
        say(f"sft: no complete checkpoint in {run_dir}; starting from the beginning")
    trust = cfg.model.trust_remote_code
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.path, trust_remote_code=trust)
    model = load_model(str(resume_from) if resume_from else cfg.model.path, cfg.model.dtype, cfg.model.attn_implementation,
                       trust_remote_code=trust)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()

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
        cfg, model, total_steps=steps_total, backend=backend, world_size=ranks.world_size,
        micro_batch_size=cfg.sft.micro_batch_size, grad_accum_steps=accum // ranks.world_size, loss_kernels=cfg.sft.kernels,
    )
    shape = ModelShape.from_hf_config(model.config)
    peak = backend.peak_flops("bf16" if cfg.model.dtype == "bfloat16" else "fp32" if cfg.model.dtype == "float32" else "fp16")
    monitor = PhaseMonitor(delta=cfg.monitor.delta, delta2=cfg.monitor.delta2, patience=cfg.monitor.patience, pick=cfg.monitor.pick)

    step, flops, tokens_seen, elapsed = 0, 0.0, 0, 0.0
    if resume_from is not None:
        state = ckpt.load_trainer_state(resume_from)
        engine.load_state_dict(state["engine"])
        engine.load_engine_files(resume_from)
        batcher.load_state_dict(state["batcher"])
        monitor.load_state_dict(state["monitor"])
        backend.set_rng_state(state["rng"])
        step, flops, tokens_seen, elapsed = state["step"], state["flops"], state["tokens"], state["elapsed"]
        say(f"sft: resumed from {resume_from} (step {step})")
    logger = MetricsLogger(run_dir, resume_step=step if resume_from is not None else None) if ranks.is_main else NullLogger()

    say(
        f"sft: {len(train)} train / {len(val)} validation examples, {steps_total} steps of {cfg.sft.global_batch_size} "
        f"({accum} x {cfg.sft.micro_batch_size}), device {backend.name}, engine {cfg.engine.name}"
        + (f", {ranks.world_size} ranks ({backend.dist_backend})" if ranks.distributed else "")
    )
    if not val and cfg.monitor.enabled:
        raise UserError("the phase monitor needs validation data: set data.val_files or data.val_size")

    progress = _progress_bar(steps_total, step, enabled=cfg.run.progress and not quiet and ranks.is_main)
    stop_reason = None
    try:
        while step < steps_total:
            t0 = time.perf_counter()
            micro_batches = [next(batcher) for _ in range(accum)]
            num_loss_tokens = sum(int((mb["labels"][:, 1:] != -100).sum()) for mb in micro_batches)
            loss_sum = 0.0
            for mb in micro_batches[ranks.rank :: ranks.world_size]:
                loss_sum += engine.forward_backward(mb, num_loss_tokens)["loss_sum"]
            stats = engine.step()
            (loss_sum,) = pg.all_reduce_sum([loss_sum])
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
            if peak:
                row["train/mfu"] = mfu(step_flops, dt, peak)
            if step % cfg.sft.log_every == 0 or step == steps_total:
                logger.log(step, flops, row)
            progress.update(1)
            progress.set_postfix(loss=f"{row['train/loss']:.4f}")

            at_eval = step % cfg.sft.eval_every == 0 or step == steps_total
            at_save = step % cfg.sft.save_every == 0 or step == steps_total
            decision = None
            if at_eval and val_batches:
                val_sum, val_count = pg.all_reduce_sum(engine.evaluate_sums(my_val_batches, pad_to=val_forwards))
                val_loss = val_sum / max(1, val_count)
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
                hook = (lambda s=step: crash_hook(s)) if crash_hook else _fault_injection_hook(step)
                ckpt.save_checkpoint(
                    run_dir, step, lambda d: engine.save_pretrained(d, tokenizer, is_main=ranks.is_main), state,
                    write_engine_files=engine.save_engine_files, ranks=ranks, _after_model_hook=hook,
                )
                if ranks.is_main:
                    ckpt.prune_checkpoints(run_dir, cfg.sft.keep_checkpoints, protect=_best_steps(monitor))
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
            say(f"sft: every skipped row is listed in {counter.write(run_dir / 'skipped_rows.jsonl')}")
    pg.barrier()
    if not ranks.is_main:  # rank 0 labels the curve and writes phases.json
        return SFTResult(run_dir=run_dir, steps=step, flops=flops, picked_step=None, picked_checkpoint=None, skipped_rows=counter.skipped)
    return finish_sft(cfg, run_dir, monitor, step, flops, counter.skipped, say)


def finish_sft(cfg: Config, run_dir: Path, monitor, step: int, flops: float, skipped: int, say) -> SFTResult:
    """Label the validation curve offline, pick the checkpoint, write phases.json / .png."""

    from npu_retu.report.metrics import read_metrics, write_json_atomic
    from npu_retu.trainer import checkpoint as ckpt

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


def _fault_injection_hook(step: int):
    """Test-only: ``NPU_RETU_FAULT_KILL_DURING_SAVE=N`` SIGKILLs the process while checkpoint N is
    half-written (model files on disk, trainer state not yet), to prove resume never uses it."""
    target = os.environ.get("NPU_RETU_FAULT_KILL_DURING_SAVE")
    if target is None or int(target) != step:
        return None

    def die():
        import signal

        os.kill(os.getpid(), signal.SIGKILL)

    return die


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


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, disable=not (enabled and sys.stderr.isatty()))
