"""The run folder ``run.output_dir / run.name``: made by npu-retu, one writer at a time, deleted only when ours.

Three guarantees, each tested in ``tests/test_run_folder.py``:

* **Only our folders are deleted.** Every run folder carries a marker file (``.npu-retu-run``).
  ``--overwrite`` removes a folder only when it has that marker, is a real folder (not a symbolic
  link) and sits directly inside ``run.output_dir``; anything else is refused with a message.
* **One writer per folder.** The process that trains holds an advisory lock (``flock``) on
  ``RUN/.lock`` for the whole run. A second run, a ``--resume`` or an ``--overwrite`` of a live run
  is refused, naming the holder's pid, host and start time. The kernel drops the lock when its
  holder dies, so a lock file left by a killed run never blocks the next one. With several ranks
  only rank 0 takes it.
* **A failed start does not block a rerun.** A folder that holds no checkpoint and no metrics
  (the inputs were bad, the run stopped before its first step) is reused by a plain rerun.

``check_resume_config`` compares a resumed run's config with the one it was started with: keys that
change what is trained are an error naming the key and both values; the rest (step budget,
evaluation and save cadence, logging, where the ranks run) are applied and recorded in
``config_changes.jsonl``.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from npu_retu.errors import UserError

MARKER = ".npu-retu-run"
LOCK = ".lock"
CONFIG_FILE = "config.yaml"
CHANGES_FILE = "config_changes.jsonl"

# Config keys a --resume may change: they decide how long, how often and where, not what is trained.
MUTABLE_ON_RESUME = (
    "run.name", "run.output_dir", "run.device", "run.progress", "run.loggers", "run.project",
    "sft.max_steps", "sft.eval_every", "sft.save_every", "sft.keep_checkpoints", "sft.log_every", "sft.eval_batch_size",
    "monitor.stop_on_decision",
    "data.num_workers", "data.cache", "data.cache_dir",  # how tokenization runs, not what it gives
    "rl.max_steps", "rl.max_flops", "rl.eval_every", "rl.save_every", "rl.keep_checkpoints",
    "rl.rollout.batch_size", "rl.reward.num_workers", "rl.reward.timeout_s",
    "cluster.",  # the whole section: launcher, addresses, ports, timeouts
)


class RunFolderBusy(UserError):
    """Another live process holds the run folder's lock."""


@dataclass
class RunFolder:
    """An opened run folder; ``release()`` (or leaving the ``with`` block) drops the lock."""

    path: Path
    _lock_fd: int | None = None

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def open_run_folder(output_dir: str, name: str, *, resume: bool, overwrite: bool, is_main: bool = True) -> RunFolder:
    """Create (or reopen, with ``resume``) the run folder and take its lock.

    Without ``resume`` an existing folder must be empty, a failed start (no checkpoint, no
    metrics), or, with ``overwrite``, a run folder npu-retu made, whose contents are then removed.
    Ranks other than 0 (``is_main=False``) get the path only: rank 0 prepares the folder.
    """
    path = Path(output_dir) / name
    if not is_main:
        return RunFolder(path)
    if name in ("", ".", "..") or "/" in name or os.sep in name:
        raise UserError(f"config key 'run.name': {name!r} is not allowed; must be a plain folder name")
    if path.is_symlink() and not resume:
        raise UserError(f"run folder {path} is a symbolic link; npu-retu only writes into a folder it made (choose another run.name)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"run folder {path} exists and is not a folder") from None
    folder = RunFolder(path, _take_lock(path))
    try:
        _prepare_contents(folder.path, output_dir, resume=resume, overwrite=overwrite)
    except BaseException:
        folder.release()
        raise
    return folder


def _take_lock(path: Path) -> int:
    import fcntl

    lock_path = path / LOCK
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise UserError(f"cannot lock run folder {path} ({e.strerror}); does its file system support flock?") from None
        raise RunFolderBusy(f"run folder {path} is in use by another npu-retu process ({_holder_text(lock_path)}); "
                            "wait for it to end, or choose another run.name") from None
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    return fd


def _holder_text(lock_path: Path, *, wait_s: float = 1.0) -> str:
    """Who holds the lock, read from the lock file.

    The holder writes its line just after it takes the lock, so a process that lost a race by a
    few microseconds can find the file empty: it rereads for up to ``wait_s`` seconds.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            holder = json.loads(lock_path.read_text(encoding="utf-8"))
            return f"pid {holder['pid']} on {holder['host']}, since {holder['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            if time.monotonic() >= deadline:
                return "holder unknown"
            time.sleep(0.02)


def _prepare_contents(path: Path, output_dir: str, *, resume: bool, overwrite: bool) -> None:
    contents = [p for p in path.iterdir() if p.name != LOCK]
    ours = (path / MARKER).is_file()
    if contents and not resume:
        if overwrite:
            _check_deletable(path, output_dir, ours)
        elif not (ours and _is_failed_start(path)):
            raise UserError(f"run folder {path} already exists; pass --resume to continue it or --overwrite to start again")
        for p in contents:  # the lock file stays: this process holds it
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    if not (path / MARKER).is_file():
        (path / MARKER).write_text(json.dumps({"made_by": "npu-retu", "created": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n",
                                   encoding="utf-8")


def _check_deletable(path: Path, output_dir: str, ours: bool) -> None:
    if not ours:
        raise UserError(
            f"--overwrite: {path} was not made by npu-retu (no {MARKER} file in it); refusing to delete it - "
            "choose another run.name or remove it yourself"
        )
    if path.resolve().parent != Path(output_dir).resolve():
        raise UserError(f"--overwrite: {path} resolves to {path.resolve()}, outside run.output_dir; refusing to delete it")


def _is_failed_start(path: Path) -> bool:
    """No complete checkpoint and no metrics: the run stopped before it trained a step."""
    from npu_retu.trainer.checkpoint import list_checkpoints

    metrics = path / "metrics.jsonl"
    return not list_checkpoints(path) and not (metrics.is_file() and metrics.stat().st_size > 0)


# --------------------------------------------------------------------------------------------
# the config of a resumed run


def check_resume_config(cfg: Any, path: Path, *, say=print) -> dict[str, tuple[Any, Any]]:
    """Compare ``cfg`` with the config the run folder was started with (``config.yaml``).

    A key outside :data:`MUTABLE_ON_RESUME` that differs raises :class:`UserError` naming it and
    both values; the mutable keys that differ are returned as ``{key: (old, new)}`` (and said).
    A key the saved file lacks (written by an older npu-retu) counts as unchanged when it has its
    default value now; keys the current config no longer has are ignored.
    """
    saved_file = Path(path) / CONFIG_FILE
    if not saved_file.is_file():
        return {}
    try:
        saved = yaml.safe_load(saved_file.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"{saved_file}: cannot read the resumed run's config ({e})") from None
    if isinstance(saved, dict) and isinstance(saved.get("optim"), dict) and isinstance(saved.get("sft") or {}, dict):
        # written before SFT's optimizer section moved from 'optim' to 'sft.optim'
        saved = {**saved, "sft": {**(saved.get("sft") or {}), "optim": saved["optim"]}}
        del saved["optim"]
    old, new = _flatten(saved), _flatten(cfg.to_dict())
    defaults = _flatten(type(cfg)().to_dict())
    fixed, changes = [], {}
    for key, value in new.items():
        before = old[key] if key in old else defaults.get(key)
        if _same(before, value):
            continue
        if any(key == m or (m.endswith(".") and key.startswith(m)) for m in MUTABLE_ON_RESUME):
            changes[key] = (before, value)
        else:
            fixed.append((key, before, value))
    if fixed:
        key, before, value = fixed[0]
        more = f" (and {len(fixed) - 1} more: {', '.join(k for k, _, _ in fixed[1:])})" if len(fixed) > 1 else ""
        raise UserError(
            f"config key '{key}' differs from the run being resumed ({saved_file}: {before!r}, now: {value!r}){more}; "
            "it cannot change on --resume - drop the override, or start a new run (another run.name, or --overwrite)"
        )
    for key, (before, value) in changes.items():
        say(f"resume: {key} changes from {before!r} to {value!r}")
    return changes


def record_config(cfg: Any, path: Path, changes: dict[str, tuple[Any, Any]] | None = None, *, at: str | None = None) -> None:
    """Write the config that runs from now on to ``config.yaml`` (atomically) and, on a resume that
    changed keys, append what changed and from which checkpoint to ``config_changes.jsonl``."""
    from npu_retu.config import dump_config

    if changes:
        entry = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "resumed_from": at,
                 "changes": {k: {"old": old, "new": new} for k, (old, new) in changes.items()}}
        with open(Path(path) / CHANGES_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
    dump_config(cfg, Path(path) / CONFIG_FILE)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if dataclasses.is_dataclass(data):
        data = dataclasses.asdict(data)
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    if isinstance(a, tuple):
        a = list(a)
    if isinstance(b, tuple):
        b = list(b)
    return a == b
