"""The stages the experiment runners share: an SFT run, an evaluation of SFT checkpoints, an RL
branch from a checkpoint, and the numbers their findings compare (stage times, interval overlap).
The reports' Markdown pieces are in :mod:`npu_retu.report.markdown`.

Each stage writes its result to ``<stage folder>/done.json`` when it finishes, so rerunning an
experiment skips finished stages, continues an interrupted one from its newest checkpoint
(``resume``), and then rewrites the report: a crash costs at most one checkpoint interval.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable

from npu_retu.config import Config, dump_config
from npu_retu.errors import UserError
from npu_retu.report.metrics import write_json_atomic

Say = Callable[..., None]


def stage_config(cfg: Config, root: Path, name: str, **sections: dict[str, Any]) -> Config:
    """``cfg`` with its run folder at ``root/name`` and ``sections`` ({section: {field: value}}) replaced."""
    out = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, output_dir=str(root), name=name))
    for section, values in sections.items():
        out = dataclasses.replace(out, **{section: dataclasses.replace(getattr(out, section), **values)})
    out.validate()
    return out


def read_done(folder: Path) -> dict[str, Any] | None:
    path = folder / "done.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({exc}); delete it to rerun that stage") from exc


def sft_stage(cfg: Config, root: Path, name: str, *, train_file: str, steps: int, every: int, say: Say,
              quiet: bool = False) -> dict[str, Any]:
    """An SFT run with the phase monitor at ``root/name`` (or its saved result when it already finished):
    ``steps`` steps on ``train_file``, a validation loss and a checkpoint every ``every`` steps, the
    whole budget trained (the offline labels of the full curve pick the checkpoint).

    Returns ``{run_dir, steps, flops, picked_step, picked_checkpoint, min_val_loss, min_val_step,
    seconds}`` plus the labelled curve from ``phases.json``.
    """
    from npu_retu.trainer.sft import train_sft

    cfg = stage_config(cfg, root, name, data={"train_files": [train_file]},
                       sft={"max_steps": steps, "save_every": every, "eval_every": every}, monitor={"stop_on_decision": False})
    folder = root / name
    done = read_done(folder)
    if done is not None:
        check_same(folder, "SFT steps", done["curve"]["steps"][-1] if done["curve"]["steps"] else 0, steps)
        say(f"[{name}] SFT finished earlier: {done['steps']} steps, min validation loss {done['min_val_loss']:.4f} at step {done['min_val_step']}")
        return done
    resume = (folder / "checkpoints").is_dir()
    say(f"[{name}] SFT on {', '.join(cfg.data.train_files)} for up to {cfg.sft.max_steps} steps" + (" (resuming)" if resume else ""))
    t0 = time.perf_counter()
    result = train_sft(cfg, resume=resume, overwrite=not resume, quiet=quiet)
    phases = json.loads((folder / "phases.json").read_text(encoding="utf-8"))
    done = {
        "run_dir": str(folder),
        "steps": result.steps,
        "flops": result.flops,
        "picked_step": result.picked_step,
        "picked_checkpoint": str(result.picked_checkpoint) if result.picked_checkpoint else None,
        "min_val_loss": phases["L_min"],
        "min_val_step": phases["L_min_step"],
        "seconds": time.perf_counter() - t0,
        "curve": {k: phases[k] for k in ("steps", "flops", "losses", "phases", "has_checkpoint")},
    }
    write_json_atomic(folder / "done.json", done)
    say(f"[{name}] SFT done: {done['steps']} steps in {done['seconds']:.0f} s; min validation loss {done['min_val_loss']:.4f} at step {done['min_val_step']}")
    return done


def check_same(folder: Path, what: str, recorded: Any, requested: Any) -> None:
    """A finished stage is reused only for the same settings; anything else would mix two experiments."""
    if recorded != requested:
        raise UserError(
            f"{folder} finished earlier with {what} {recorded}, but this run asks for {requested}: "
            "give a new --out folder, or delete that stage folder to run it again"
        )


def checkpoint_path(sft_done: dict[str, Any], step: int) -> Path:
    path = Path(sft_done["run_dir"]) / "checkpoints" / f"step-{step:06d}"
    if not path.is_dir():
        raise UserError(f"{path}: no such checkpoint (sft.save_every must divide the branch steps)")
    return path


def evaluate_checkpoints(cfg: Config, root: Path, name: str, sft_done: dict[str, Any], steps: list[int], *, say: Say) -> list[dict[str, Any]]:
    """Score SFT checkpoints on ``cfg.eval`` exactly as an RL run scores its step 0 (same problems,
    sampling and seed): the Pure-SFT curve, one point ``{step, flops, avg_at_n, ...}`` per checkpoint.
    Step 0 is the starting model itself (``cfg.model.path``, 0 FLOPs).
    """
    from npu_retu.models.modeling import load_model, load_tokenizer
    from npu_retu.reward import make_reward
    from npu_retu.rollout import TransformersRollout
    from npu_retu.eval.suite import run_suite
    from npu_retu.trainer.rl import load_eval_suite
    from npu_retu.data.errors import BadRowCounter

    folder = root / name
    curve = sft_done["curve"]
    flops_at = dict(zip(curve["steps"], curve["flops"]))
    points, todo = [], []
    for step in steps:
        path = folder / f"step-{step:06d}.json"
        if path.is_file():
            points.append(json.loads(path.read_text(encoding="utf-8")))
        else:
            todo.append(step)
    if todo:
        suite = load_eval_suite(cfg, BadRowCounter())
        if suite is None:
            raise UserError("eval.files is empty: the experiments need held-out problems to score")
        with make_reward(cfg.rl.reward.name, num_workers=cfg.rl.reward.num_workers, timeout_s=cfg.rl.reward.timeout_s) as reward:
            for step in todo:
                t0 = time.perf_counter()
                # step 0: the model the SFT run started from (the base), as an RL run's step 0 scores it
                model_dir = checkpoint_path(sft_done, step) if step else cfg.model.path
                tokenizer = load_tokenizer(str(model_dir if step else cfg.model.tokenizer or cfg.model.path),
                                           trust_remote_code=cfg.model.trust_remote_code)
                model = load_model(str(model_dir), cfg.model.dtype, cfg.model.attn_implementation,
                                   trust_remote_code=cfg.model.trust_remote_code)
                rollout = TransformersRollout(model, tokenizer, batch_size=cfg.rl.rollout.batch_size)
                result = run_suite(rollout, tokenizer, suite, reward.score, seed=cfg.eval.seed,
                                   save_to=folder / f"step-{step:06d}" if cfg.eval.save_generations else None,
                                   show_progress=cfg.run.progress)
                point = {"step": step, "flops": flops_at.get(step, 0.0), "checkpoint": str(model_dir), **result,
                         "seconds": time.perf_counter() - t0}
                write_json_atomic(folder / f"step-{step:06d}.json", point)
                points.append(point)
                say(f"[{name}] SFT step {step}: {result['summary']}")
    points.sort(key=lambda p: p["step"])
    return [{k: v for k, v in p.items() if k != "scores"} for p in points]


def with_rl_algorithm(cfg: Config, algorithm: str) -> Config:
    """``cfg`` with ``rl.algorithm`` switched to ``algorithm`` and ``rl.algo`` refilled from its preset
    (:data:`npu_retu.algos.presets.RL_PRESETS`) as the config loader would have filled it.

    The loader lets keys given under ``rl.algo`` win over the preset; a loaded config no longer
    says which keys were given, so the settings of ``cfg.rl.algo`` that differ from what its own
    preset (over the defaults) gives are taken as given and kept (the demo's ``max_draws: 2``, say).
    ``rl.optim`` is left alone: pass the learning rate an algorithm needs (``rl_stage(lr=...)``).
    """
    from npu_retu.algos.presets import RL_PRESETS
    from npu_retu.config import AlgoConfig

    if algorithm == cfg.rl.algorithm:
        return cfg
    if algorithm not in RL_PRESETS:
        raise UserError(f"rl.algorithm {algorithm!r}: not a preset; choose one of {', '.join(RL_PRESETS)}")
    defaults = dataclasses.asdict(AlgoConfig())
    own = {**defaults, **RL_PRESETS.get(cfg.rl.algorithm, {})}
    given = {k: v for k, v in dataclasses.asdict(cfg.rl.algo).items() if own.get(k) != v}
    algo = AlgoConfig(**{**defaults, **RL_PRESETS[algorithm], **given})
    out = dataclasses.replace(cfg, rl=dataclasses.replace(cfg.rl, algorithm=algorithm, algo=algo))
    out.validate()
    return out


def rl_stage(cfg: Config, root: Path, name: str, model_path: str | Path, *, say: Say, quiet: bool = False,
             algorithm: str | None = None, lr: float | None = None, **rl_fields: Any) -> dict[str, Any]:
    """An RL run at ``root/name`` from ``model_path`` (or its saved result when it already finished).

    ``algorithm`` switches the RL preset (:func:`with_rl_algorithm`), ``lr`` replaces ``rl.optim.lr``,
    and ``rl_fields`` replace fields of ``cfg.rl`` (``max_steps``, ``max_flops``, ``eval_every``,
    ``train_files``, ...). A finished run is reused only with the same starting model, algorithm,
    training files and learning rate. Returns ``{run_dir, model_path, algorithm, train_files, lr,
    steps, flops, evals, seconds}``.
    """
    from npu_retu.trainer.rl import train_rl

    folder = root / name
    run_cfg = with_rl_algorithm(cfg, algorithm) if algorithm else cfg
    if lr is not None:
        rl_fields["optim"] = dataclasses.replace(run_cfg.rl.optim, lr=lr)
    run_cfg = stage_config(run_cfg, root, name, rl=rl_fields)
    run_cfg = dataclasses.replace(run_cfg, model=dataclasses.replace(run_cfg.model, path=str(model_path), tokenizer=None))
    settings = {"algorithm": run_cfg.rl.algorithm, "train_files": list(run_cfg.rl.train_files), "lr": run_cfg.rl.optim.lr}
    done = read_done(folder)
    if done is not None:
        check_same(folder, "starting model", done["model_path"], str(model_path))
        recorded = _recorded_rl_settings(folder, done)
        for key, value in settings.items():
            if key in recorded:
                check_same(folder, f"rl {key}", recorded[key], value)
        say(f"[{name}] RL finished earlier: {done['steps']} steps")
        return done
    resume = (folder / "checkpoints").is_dir()
    say(f"[{name}] RL ({run_cfg.rl.algorithm}) from {model_path}" + (" (resuming)" if resume else ""))
    t0 = time.perf_counter()
    result = train_rl(run_cfg, resume=resume, overwrite=not resume, quiet=quiet)
    done = {
        "run_dir": str(folder),
        "model_path": str(model_path),
        **settings,
        "steps": result.steps,
        "flops": result.flops,
        "evals": result.evals,
        "seconds": time.perf_counter() - t0,
    }
    write_json_atomic(folder / "done.json", done)
    first, last = result.evals[0], result.evals[-1]
    say(f"[{name}] RL done: {result.steps} steps in {done['seconds']:.0f} s; score {100 * first['avg_at_n']:.1f}% -> {100 * last['avg_at_n']:.1f}%")
    return done


def _recorded_rl_settings(folder: Path, done: dict[str, Any]) -> dict[str, Any]:
    """Algorithm, training files and learning rate of a finished RL stage: from its ``done.json``, or
    (a stage finished by an older npu-retu) from the run's ``config.yaml``."""
    keys = ("algorithm", "train_files", "lr")
    if all(k in done for k in keys):
        return {k: done[k] for k in keys}
    import yaml

    try:
        rl = (yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")) or {}).get("rl") or {}
    except (OSError, ValueError, yaml.YAMLError, AttributeError):
        return {k: done[k] for k in keys if k in done}
    found = {"algorithm": rl.get("algorithm"), "train_files": rl.get("train_files"), "lr": (rl.get("optim") or {}).get("lr")}
    return {k: done.get(k, found[k]) for k in keys if done.get(k, found[k]) is not None}


def command_line() -> str:
    """The command that is running, as a user would type it (``python -m npu_retu`` is ``npu-retu``)."""
    program = Path(sys.argv[0]).name
    args = ["npu-retu" if program in ("__main__.py", "npu_retu") else program] + sys.argv[1:]
    return " ".join(shlex.quote(a) for a in args)


def environment_line() -> str:
    import platform

    import torch

    # no thread count: stages of one report may have run in different invocations
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, Python {platform.python_version()}"


def stage_seconds(done: dict | list) -> float:
    """Seconds a stage recorded: a stage's ``done.json``, or the sum over evaluation points."""
    if isinstance(done, list):
        return float(sum(point.get("seconds", 0.0) for point in done))
    return float(done.get("seconds", 0.0))


def separated(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool:
    """Whether two intervals are known and do not overlap (a missing interval separates nothing)."""
    if a is None or b is None:
        return False
    return a[1] < b[0] or b[1] < a[0]


def save_config(cfg: Config, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, root / "base_config.yaml")
