"""Checkpoints: Hugging Face layout plus trainer state, written atomically.

A checkpoint is the folder ``RUN_DIR/checkpoints/step-NNNNNN`` holding ``model.safetensors``,
``config.json``, the generation config and the tokenizer (so ``from_pretrained`` loads it), and
``trainer_state.pt`` (optimizer, schedule, RNG, data position, monitor, counters).

It is written into ``checkpoints/.tmp-step-NNNNNN-<pid>`` and renamed into place only when every
file is on disk, so a run killed mid-save leaves a ``.tmp-*`` folder that resume never picks up
(and that the next save clears away).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

CHECKPOINT_RE = re.compile(r"^step-(\d+)$")
TRAINER_STATE = "trainer_state.pt"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:06d}"


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    run_dir: Path,
    step: int,
    write_model: Callable[[Path], None],
    trainer_state: dict[str, Any],
    *,
    write_engine_files: Callable[[Path], None] | None = None,
    ranks: Any = None,
    _after_model_hook: Callable[[], None] | None = None,
) -> Path:
    """Write a complete checkpoint for ``step`` atomically and return its folder.

    ``write_model(tmp_dir)`` writes the Hugging Face files (weights, config, tokenizer);
    ``write_engine_files(tmp_dir)`` the engine's own state files (DeepSpeed's shards).
    With several ranks (``ranks``: a :class:`npu_retu.distributed.process_group.RankInfo`) every
    rank calls this: all of them write their engine files into the same temporary folder, and
    rank 0 writes the trainer state and renames the folder once every rank is done.
    """
    from npu_retu.distributed.process_group import barrier

    is_main = ranks is None or ranks.is_main
    distributed = ranks is not None and ranks.distributed
    root = Path(run_dir) / "checkpoints"
    final = checkpoint_dir(run_dir, step)
    # one temporary folder name shared by all ranks (their pids differ)
    tmp = root / (f".tmp-{final.name}-dist" if distributed else f".tmp-{final.name}-{os.getpid()}")
    if is_main:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    barrier()
    if write_engine_files is not None:
        write_engine_files(tmp)
    write_model(tmp)
    barrier()
    if not is_main:
        barrier()  # wait for rank 0's rename
        return final
    if _after_model_hook is not None:  # tests use this to die mid-save
        _after_model_hook()
    torch.save(trainer_state, tmp / TRAINER_STATE)
    _fsync_tree(tmp)
    if final.exists():  # re-saving the same step after a resume: replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    barrier()
    return final


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first. ``.tmp-*`` folders are never listed."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if m and p.is_dir() and (p / TRAINER_STATE).is_file() and (p / "config.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def load_trainer_state(ckpt: Path) -> dict[str, Any]:
    # The state holds optimizer tensors, RNG states and plain Python containers we wrote ourselves.
    return torch.load(Path(ckpt) / TRAINER_STATE, map_location="cpu", weights_only=False)


def prune_checkpoints(run_dir: Path, keep: int, protect: set[int] = frozenset()) -> None:
    """Keep the ``keep`` newest checkpoints (0 = keep all) plus the steps in ``protect``."""
    if keep <= 0:
        return
    found = list_checkpoints(run_dir)
    for step, path in found[:-keep]:
        if step not in protect:
            shutil.rmtree(path, ignore_errors=True)
