"""Experiment trackers beside metrics.jsonl: Weights & Biases, MLflow and SwanLab (``run.loggers``).

Each one goes through the library's own client (``wandb.init / log / finish``,
``mlflow.start_run / log_metrics / end_run``, ``swanlab.init / log / finish``), on rank 0 only, like
metrics.jsonl. Every row is logged at its step with the cumulative FLOPs it carries as the metric
``flops`` at the same step, so any metric can be plotted against steps or compute (W&B: ``flops``
is every chart's x-axis through ``define_metric``, and ``Step`` is one click away; MLflow and
SwanLab: choose ``flops`` as the x-axis). The resolved config is logged as the run's config (W&B,
SwanLab) or its params (MLflow, flattened to ``section.key``). Only finite numbers are sent, as to
TensorBoard. MLflow's metric names may not hold ``@``, which becomes ``_at_`` (as verl does), other
characters MLflow refuses become ``_``, and RL's ``flops/<count>`` keys become ``flops.<count>``
(:func:`mlflow_name`).

Set up as their users expect, by the libraries' own environment variables; npu-retu adds only
``run.project`` (the W&B / SwanLab project, the MLflow experiment; default "npu-retu") and names the
tracker's run after ``run.name``:

* wandb: ``WANDB_MODE`` (``offline``, ``disabled``), ``WANDB_API_KEY``, ``WANDB_ENTITY``,
  ``WANDB_DIR`` (default here: the run folder).
* mlflow: ``MLFLOW_TRACKING_URI`` (a server, ``file:///...`` or ``sqlite:///...``; unset: MLflow's
  own default, ``sqlite:///mlflow.db`` in the working folder, which needs the full ``mlflow``
  package; MLflow 3 refuses a ``file://`` store unless ``MLFLOW_ALLOW_FILE_STORE=true``).
* swanlab: ``SWANLAB_MODE`` (``local``, ``offline``, ``disabled``), ``SWANLAB_API_KEY``,
  ``SWANLAB_LOG_DIR`` (default here: ``<run folder>/swanlog``).

**Resume.** ``trackers.json`` in the run folder keeps each tracker's run id and the last step it
was sent. ``--resume`` reopens the same run (W&B ``resume="allow"`` with that id, MLflow
``start_run(run_id=...)``, SwanLab ``id`` + ``resume="allow"``) and sends only what the tracker has
not had: the steps that the stopped run logged after its last checkpoint are recomputed
(identically: resume is exact) and not sent twice, so no step is duplicated; rows a tracker lacks
(it was added on resume, or it had failed) are sent from metrics.jsonl first. A SIGKILL between a
tracker's log call and the state write can repeat that one row.

**Failures.** A tracker that cannot start (package missing, no credentials, a bad URI) is a
:class:`~npu_retu.errors.UserError` before training. One that fails while logging does not stop the
run: it is switched off with one warning on stderr, metrics.jsonl keeps every row, and ``--resume``
sends the tracker what it missed. (verl and TRL let such an error propagate; we do not, because a
128-chip job should not die over a dashboard when metrics.jsonl already holds the data.)
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Mapping

from npu_retu.errors import UserError

TRACKERS = ("wandb", "mlflow", "swanlab")
STATE_FILE = "trackers.json"
INSTALL_HINT = "pip install 'npu-retu[tracking]'"


def check_installed(loggers: list[str]) -> None:
    """A one-line :class:`UserError` for the first tracker in ``loggers`` whose package is missing."""
    for name in loggers:
        if name in TRACKERS and importlib.util.find_spec(name) is None:
            raise UserError(f"run.loggers: {name} is not installed; {INSTALL_HINT} (or drop {name} from run.loggers)")


def numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a row (what the trackers and TensorBoard get)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as ``section.key -> value`` strings (MLflow params; values cut to its 6000 characters)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flat_params(value, f"{name}."))
        else:
            text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
            out[name] = text[:6000]
    return out


def mlflow_name(key: str) -> str:
    """``key`` as an MLflow metric name: ``@`` -> ``_at_``, other characters MLflow refuses -> ``_``,
    and ``flops/<count>`` (RL's Eq. 22 inputs) -> ``flops.<count>``, because MLflow's file store keeps a
    metric per file and cannot hold ``flops`` (the cumulative FLOPs) beside a folder ``flops/``."""
    key = re.sub(r"[^/\w.\- :]", "_", key.replace("@", "_at_"))
    return "flops." + key[len("flops/"):] if key.startswith("flops/") else key


class WandbTracker:
    name = "wandb"

    def __init__(self, run_dir: Path, *, project: str, run_name: str, config: dict, run_id: str | None):
        import wandb

        kwargs: dict[str, Any] = {"project": project, "name": run_name, "config": config}
        if not os.environ.get("WANDB_DIR"):
            kwargs["dir"] = str(run_dir)
        if run_id:
            kwargs.update(id=run_id, resume="allow")
        self.run = wandb.init(**kwargs)
        self.id = self.run.id
        self.run.define_metric("flops")
        self.run.define_metric("*", step_metric="flops")

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    name = "mlflow"

    def __init__(self, run_dir: Path, *, project: str, run_name: str, config: dict, run_id: str | None):
        import mlflow

        self.mlflow = mlflow
        if run_id:
            self.run = mlflow.start_run(run_id=run_id)
        else:
            experiment = mlflow.set_experiment(project)
            self.run = mlflow.start_run(experiment_id=experiment.experiment_id, run_name=run_name)
            mlflow.log_params(flat_params(config))  # params are write-once: only when the run starts
        self.id = self.run.info.run_id

    def log(self, step: int, values: dict[str, float]) -> None:
        self.mlflow.log_metrics({mlflow_name(k): v for k, v in values.items()}, step=step, run_id=self.id)

    def close(self) -> None:
        self.mlflow.end_run()


class SwanlabTracker:
    name = "swanlab"

    def __init__(self, run_dir: Path, *, project: str, run_name: str, config: dict, run_id: str | None):
        import swanlab

        kwargs: dict[str, Any] = {"project": project, "name": run_name, "config": config}
        if not (os.environ.get("SWANLAB_LOG_DIR") or os.environ.get("SWANLAB_LOGDIR")):
            kwargs["log_dir"] = str(run_dir / "swanlog")
        if run_id:
            kwargs.update(id=run_id, resume="allow")
        self.run = swanlab.init(**kwargs)
        self.id = self.run.id

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


CLIENTS = {"wandb": WandbTracker, "mlflow": MlflowTracker, "swanlab": SwanlabTracker}


class Trackers:
    """The trackers of ``run.loggers`` for one run (rank 0), with their state in ``trackers.json``:
    each tracker's run id, the last step it was sent and the names sent at that step.

    A row is sent to a tracker unless the tracker has it already: rows at earlier steps than its
    last are skipped, and at its last step only names it has not had are sent (``flops`` goes once
    per step). ``rows`` are the rows metrics.jsonl holds now (after a resume's truncation): each
    tracker is sent those it lacks before the run goes on.
    """

    def __init__(self, run_dir: Path, names: list[str], *, project: str, run_name: str, config: dict,
                 resumed: bool, rows: list[dict[str, Any]]):
        self.path = Path(run_dir) / STATE_FILE
        saved = _read_state(self.path) if resumed else {}
        self.state: dict[str, dict[str, Any]] = {}
        self.active: list[Any] = []
        try:
            for name in names:
                if name not in CLIENTS:
                    continue
                before = saved.get(name, {})
                try:
                    tracker = CLIENTS[name](Path(run_dir), project=project, run_name=run_name, config=config,
                                            run_id=before.get("id"))
                except Exception as error:  # the client's own error (credentials, URI, server)
                    raise UserError(f"run.loggers: {name} could not start: {_one_line(error)}") from error
                self.active.append(tracker)
                self.state[name] = {"id": tracker.id, "step": int(before.get("step", -1)), "keys": list(before.get("keys", []))}
            self._save()
            for row in rows:  # what a tracker lacks (it is new on resume, or it had failed)
                self.log(int(row.get("step", 0)), float(row.get("flops", 0.0)), {k: v for k, v in row.items() if k not in ("step", "flops", "time")})
        except BaseException:
            self.close()
            raise

    def log(self, step: int, flops: float, metrics: Mapping[str, Any]) -> None:
        """Send a row (its finite numbers, and ``flops``) to every tracker that does not have it."""
        values = {**numeric(metrics), "flops": float(flops)}
        changed = False
        for tracker in list(self.active):
            state = self.state[tracker.name]
            if step < state["step"]:
                continue  # sent before this resume
            had = set(state["keys"]) if step == state["step"] else set()
            new = {k: v for k, v in values.items() if k not in had}
            if not new:
                continue
            try:
                tracker.log(step, new)
            except Exception as error:
                self.active.remove(tracker)
                print(f"npu-retu: run.loggers: {tracker.name} failed at step {step} ({_one_line(error)}); it is off "
                      "for the rest of this run, metrics.jsonl keeps every row and --resume sends it what it missed",
                      file=sys.stderr, flush=True)
                try:
                    tracker.close()  # what it can still flush
                except Exception:
                    pass
                continue
            state["step"], state["keys"] = step, sorted(had | set(new))
            changed = True
        if changed:
            self._save()

    def close(self) -> None:
        for tracker in self.active:
            try:
                tracker.close()
            except Exception as error:
                print(f"npu-retu: run.loggers: {tracker.name} failed to finish ({_one_line(error)})", file=sys.stderr, flush=True)
        self.active = []

    def _save(self) -> None:
        if not self.state:
            return
        tmp = self.path.with_name(f".tmp-{self.path.name}")
        tmp.write_text(json.dumps(self.state, indent=2), encoding="utf-8")
        os.replace(tmp, self.path)


def _read_state(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: cannot read the trackers' state ({error}); remove it to start new tracker runs") from None
    return state if isinstance(state, dict) else {}


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."
