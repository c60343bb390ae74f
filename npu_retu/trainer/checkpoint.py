"""Checkpoints: Hugging Face layout plus trainer state, written atomically.

A checkpoint is the folder ``RUN_DIR/checkpoints/step-NNNNNN`` holding ``model.safetensors``,
``config.json``, the generation config and the tokenizer (so ``from_pretrained`` loads it), and
``trainer_state.pt`` (optimizer, schedule, RNG, data position, monitor, counters).

It is written into ``checkpoints/.tmp-step-NNNNNN-<pid>`` and renamed into place only when every
file is on disk, so a run killed mid-save leaves a ``.tmp-*`` folder that resume never picks up
(and that the next save clears away). A save that fails (a full disk) removes its ``.tmp-*``
folder itself and says so in one line.

Trainer state is read back with ``torch.load(weights_only=True)``: a checkpoint can come from
anywhere, and a full unpickle would run whatever code a crafted file names.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from npu_retu.errors import EnvironmentFault, UserError

CHECKPOINT_RE = re.compile(r"^step-(\d+)$")
TRAINER_STATE = "trainer_state.pt"
# what torch's weights-only unpickler says when a file asks for more than tensors and plain values
# (as opposed to the noise of a damaged file, or a pickle torch.save never writes)
_REFUSED = re.compile(r"GLOBAL (\S+) (?:was not an allowed|whose module)|unrecognized function|Can only (?:create|build)")
# the OS errors that mean "this disk will not take the checkpoint", not a bug of ours
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES})


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
) -> Path:
    """Write a complete checkpoint for ``step`` atomically and return its folder.

    ``write_model(tmp_dir)`` writes the Hugging Face files (weights, config, tokenizer);
    ``write_engine_files(tmp_dir)`` the engine's own state files (DeepSpeed's shards).
    With several ranks (``ranks``: a :class:`npu_retu.distributed.process_group.RankInfo`) every
    rank calls this: all of them write their engine files into the same temporary folder, and
    rank 0 writes the trainer state and renames the folder once every rank is done.

    If writing fails, rank 0 (or the single process) removes the temporary folder and re-raises;
    a full disk, a quota, a read-only or forbidden folder becomes an
    :class:`~npu_retu.errors.EnvironmentFault` naming the checkpoint. Earlier checkpoints are
    never touched before the new one is complete.
    """
    from npu_retu.distributed.process_group import barrier

    is_main = ranks is None or ranks.is_main
    distributed = ranks is not None and ranks.distributed
    root = Path(run_dir) / "checkpoints"
    final = checkpoint_dir(run_dir, step)
    # one temporary folder name shared by all ranks (their pids differ)
    tmp = root / (f".tmp-{final.name}-dist" if distributed else f".tmp-{final.name}-{os.getpid()}")
    try:
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
        # through a Python file: torch.save on a path reports a full disk as a bare RuntimeError
        with open(tmp / TRAINER_STATE, "wb") as f:
            torch.save(trainer_state, f)
        _fsync_tree(tmp)
        if final.exists():  # re-saving the same step after a resume: swap the old one out, then drop it
            replaced = root / f".tmp-{final.name}-replaced-{os.getpid()}"
            os.rename(final, replaced)
            try:
                os.rename(tmp, final)
            except BaseException:
                os.rename(replaced, final)
                raise
            shutil.rmtree(replaced, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException as e:
        # no barrier here: the other ranks may be waiting at another one, the launcher ends the job
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        code = _disk_errno(e)
        if code is None:
            raise
        if is_main:
            cleanup = "the partial checkpoint was removed"
        else:
            cleanup = f"its partial files in {tmp.name} are never resumed and the next save removes them"
        where = "" if ranks is None or not distributed else f" (rank {ranks.rank})"
        raise EnvironmentFault(
            f"could not write checkpoint {final}{where}: {os.strerror(code)}; {cleanup}, the previous checkpoints are intact"
        ) from e
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


def _disk_errno(exc: BaseException | None) -> int | None:
    """The errno behind ``exc`` when it is one of :data:`DISK_ERRNOS`: from an ``OSError`` in its
    chain of causes, or from the ``(os error N)`` that Rust I/O errors (safetensors) put in their
    message."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = exc.errno if isinstance(exc, OSError) else None
        if code is None:
            found = re.search(r"\(os error (\d+)\)", str(exc))
            code = int(found.group(1)) if found else None
        if code in DISK_ERRNOS:
            return code
        exc = exc.__cause__ or exc.__context__
    return None


def load_weights_only(path: Path, *, map_location: Any = "cpu", allowed: Iterable[type] = ()) -> Any:
    """``torch.load(path, weights_only=True)``: tensors, plain Python values and the classes in
    ``allowed``, nothing else; anything that would need other code to rebuild is refused before
    it runs. A refused, corrupt or truncated file is a one-line :class:`UserError` naming it."""
    path = Path(path)
    allowed = list(allowed)
    try:
        # torch.serialization.safe_globals is torch >= 2.5; only DeepSpeed's files need it
        with torch.serialization.safe_globals(allowed) if allowed else contextlib.nullcontext():
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except pickle.UnpicklingError as e:
        refused = _REFUSED.search(str(e))
        named = refused.group(1) if refused else _pickled_global(path)
        if refused is None and named is None:
            raise _unreadable(path, e) from None
        what = f" ({named})" if named else ""
        raise UserError(
            f"{path} holds objects other than tensors and plain values{what} and was not loaded: "
            "it was not written by npu-retu, or it was tampered with"
        ) from None
    except (RuntimeError, EOFError, ValueError, KeyError, IndexError, TypeError, OSError) as e:
        raise _unreadable(path, e) from None


def _unreadable(path: Path, e: BaseException) -> UserError:
    # the first sentence of the loader's error: torch's weights-only one is a paragraph
    text = str(e).split("WeightsUnpickler error:")[-1].strip()
    line = text.splitlines()[0].split(". ")[0] if text else ""
    reason = f"{type(e).__name__}: {line}" if line else type(e).__name__
    return UserError(f"{path} is corrupt, truncated or not a file npu-retu wrote, and was not loaded ({reason})")


def _pickled_global(path: Path) -> str | None:
    """The first callable outside torch and collections (what ``torch.save`` itself names) that a
    pickle names, read from its opcodes without running any: for pickles of protocol 4+, whose
    framing torch's weights-only loader rejects before it reaches a global (``torch.save`` writes
    protocol 2). None for a pickle that names none, or that does not parse."""
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
        else:
            data = path.read_bytes()
        strings: list[str] = []
        for opcode, arg, _ in pickletools.genops(data):
            name = None
            if opcode.name in ("GLOBAL", "INST"):
                name = str(arg).replace(" ", ".")
            elif opcode.name == "STACK_GLOBAL":
                name = ".".join(strings[-2:])
            elif isinstance(arg, str):
                strings.append(arg)
            if name is not None and not name.startswith(("torch.", "collections.")):
                return name
    except Exception:  # a damaged file: genops stops at the first bad opcode
        return None
    return None


def load_trainer_state(ckpt: Path) -> dict[str, Any]:
    """``trainer_state.pt`` of checkpoint ``ckpt``: the optimizer tensors, RNG states and plain
    Python containers the trainers wrote, loaded without running any code from the file."""
    state = load_weights_only(Path(ckpt) / TRAINER_STATE)
    if not isinstance(state, dict):
        raise UserError(f"{Path(ckpt) / TRAINER_STATE} is not a trainer state (a {type(state).__name__}, not a dict)")
    return state


def prune_checkpoints(run_dir: Path, keep: int, protect: set[int] = frozenset()) -> None:
    """Keep the ``keep`` newest checkpoints (0 = keep all) plus the steps in ``protect``."""
    if keep <= 0:
        return
    found = list_checkpoints(run_dir)
    for step, path in found[:-keep]:
        if step not in protect:
            shutil.rmtree(path, ignore_errors=True)
