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
    _after_model_hook: Callable[[], None] | None = None,
) -> Path:
    """Write a complete checkpoint for ``step`` atomically and return its folder.

    ``write_model(tmp_dir)`` writes the Hugging Face files (weights, config, tokenizer).
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    final = checkpoint_dir(run_dir, step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    tmp.mkdir()
    write_model(tmp)
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
