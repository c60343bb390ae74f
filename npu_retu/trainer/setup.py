"""The setup every trainer shares (nanochat's ``compute_init``): device, ranks, run folder, resume, model.

    backend, ranks, say = init_compute(cfg, quiet=quiet)
    with open_run(cfg, backend, ranks, say, resume=resume, overwrite=overwrite, job="sft") as run:
        ...  # run.dir, run.resume_from, run.tokenizer, run.model; run.restore(engine); run.logger(step)

:func:`init_compute` picks the device backend (``run.device``, else the device layer's choice) and
joins the job's process group (RANK / WORLD_SIZE from the launcher). :func:`open_run` then, in this
order: opens and locks the run folder (rank 0), finds the checkpoint to resume from and checks the
config against the one the run was started with, records the config, seeds the RNG, and loads the
tokenizer and the model (from the checkpoint when resuming). The trainer builds its engine and
data, then calls :meth:`Run.restore` (weights were loaded already; this restores the optimizer,
schedule and RNG and returns the trainer state) and :meth:`Run.logger`. The folder's lock is
dropped when the ``with`` block ends, however it ends.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from npu_retu.config import Config
from npu_retu.device import get_backend, set_backend
from npu_retu.distributed import process_group as pg
from npu_retu.distributed.process_group import RankInfo
from npu_retu.errors import UserError
from npu_retu.models.modeling import load_model, load_tokenizer
from npu_retu.report.metrics import MetricsLogger, NullLogger
from npu_retu.report.trackers import check_installed
from npu_retu.trainer import checkpoint as ckpt
from npu_retu.trainer.run_folder import check_resume_config, open_run_folder, record_config

Say = Callable[..., None]


def init_compute(cfg: Config, *, quiet: bool = False) -> tuple[Any, RankInfo, Say]:
    """The device backend, this process's place in the job, and ``say`` (prints on rank 0 unless quiet)."""
    if cfg.run.device != "auto":
        set_backend(cfg.run.device)
    backend = get_backend()
    ranks = pg.init_process_group(backend, cfg.cluster.timeout_s)
    say = (lambda *a: None) if quiet or not ranks.is_main else (lambda *a: print(*a, flush=True))
    return backend, ranks, say


@dataclass
class Run:
    """One training run's shared state: where it writes, what it resumes, the model it trains."""

    cfg: Config
    backend: Any
    ranks: RankInfo
    say: Say
    dir: Path  # the run folder, run.output_dir / run.name
    resume_from: Path | None  # the newest complete checkpoint, when resuming one
    tokenizer: Any
    model: Any  # the Hugging Face model: the resumed checkpoint's weights, else model.path's

    def restore(self, engine: Any) -> dict[str, Any] | None:
        """Continue from :attr:`resume_from`: the engine's optimizer and schedule (and DeepSpeed's
        files) and the RNG; returns the trainer state for the trainer's own parts (None: a new run)."""
        if self.resume_from is None:
            return None
        state = ckpt.load_trainer_state(self.resume_from)
        engine.load_state_dict(state["engine"])
        engine.load_engine_files(self.resume_from)
        self.backend.set_rng_state(state["rng"])
        return state

    def logger(self, step: int) -> MetricsLogger | NullLogger:
        """metrics.jsonl and the other loggers of ``run.loggers`` on rank 0; a resumed run drops the
        rows after ``step``. A tracker that cannot start stops every rank here, before training."""
        logger, error = NullLogger(), None
        if self.ranks.is_main:
            try:
                logger = MetricsLogger(
                    self.dir, resume_step=step if self.resume_from is not None else None, loggers=self.cfg.run.loggers,
                    project=self.cfg.run.project, run_name=self.cfg.run.name, config=self.cfg.to_dict(),
                )
            except UserError as e:
                error = str(e)
        errors = [e for e in pg.all_gather_objects(error) if e]  # every rank learns of rank 0's failure
        if errors:
            raise UserError(errors[0])
        return logger

    def save_checkpoint(self, step: int, engine: Any, state: dict[str, Any], *, keep: int, protect: set[int] = frozenset()) -> Path:
        """Checkpoint ``step`` (Hugging Face files + ``state``, atomically; every rank calls it), then
        keep the ``keep`` newest (0: all) and the steps in ``protect``."""
        path = ckpt.save_checkpoint(
            self.dir, step, lambda d: engine.save_pretrained(d, self.tokenizer, is_main=self.ranks.is_main), state,
            write_engine_files=engine.save_engine_files, ranks=self.ranks,
        )
        if self.ranks.is_main:
            ckpt.prune_checkpoints(self.dir, keep, protect=protect)
        return path


@contextlib.contextmanager
def open_run(cfg: Config, backend: Any, ranks: RankInfo, say: Say, *, resume: bool, overwrite: bool, job: str) -> Iterator[Run]:
    """Open (and lock) the run folder, settle what to resume, load tokenizer and model (see the module
    docstring); ``job`` ("sft", "rl") prefixes what is said."""
    check_installed(cfg.run.loggers)  # a missing tracker package fails now, not after the model has loaded
    folder = open_run_folder(cfg.run.output_dir, cfg.run.name, resume=resume, overwrite=overwrite, is_main=ranks.is_main)
    try:
        pg.barrier()  # rank 0 has prepared the folder
        resume_from = ckpt.latest_checkpoint(folder.path) if resume else None
        changes = check_resume_config(cfg, folder.path, say=say) if resume_from is not None else {}
        pg.barrier()  # every rank has read the saved config before rank 0 replaces it
        if ranks.is_main:
            record_config(cfg, folder.path, changes, at=resume_from.name if resume_from else None)
        pg.barrier()
        backend.manual_seed(cfg.run.seed)
        if resume and resume_from is None:
            say(f"{job}: no complete checkpoint in {folder.path}; starting from the beginning")

        trust = cfg.model.trust_remote_code
        tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.path, trust_remote_code=trust)
        model = load_model(str(resume_from) if resume_from else cfg.model.path, cfg.model.dtype, cfg.model.attn_implementation,
                           trust_remote_code=trust)
        if cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        yield Run(cfg, backend, ranks, say, folder.path, resume_from, tokenizer, model)
    finally:
        folder.release()


def data_path(name: str) -> str:
    """A data entry of the config: an ``embedded:`` set is built on first use and named by its path; a
    file, a folder, a glob or a DatasetDict's ``folder:split`` (``~`` expanded) is left for
    :func:`npu_retu.data.readers.data_files`; anything else is "file or folder not found"."""
    from npu_retu.data.readers import GLOB_CHARACTERS
    from npu_retu.models import embedded

    if embedded.is_embedded(name):
        return str(embedded.resolve(name))
    path = str(Path(name).expanduser())
    if Path(path).exists() or any(c in path for c in GLOB_CHARACTERS) or Path(path.rpartition(":")[0] or path).is_dir():
        return path
    raise UserError(f"file or folder not found: {name}")
