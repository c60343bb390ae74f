"""The sequential SFT-then-RL pipeline (paper §6.2): SFT with the phase monitor, RL from the
checkpoint the monitor picked, evaluation along the way, and a report.

    RUN = run.output_dir / run.name
    RUN/sft/      the SFT run (checkpoints, metrics.jsonl, phases.json, phases.png)
    RUN/rl/       the RL run (checkpoints, metrics.jsonl, eval/step-N.json, evals.json)
    RUN/report.md, RUN/phases.png, RUN/rl_curve.png

``resume=True`` continues whichever stage was interrupted; a finished SFT stage (``sft/done.json``)
is not run again.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npu_retu.config import Config
from npu_retu.errors import UserError
from npu_retu.report.metrics import write_json_atomic
from npu_retu.trainer.run_folder import check_resume_config, open_run_folder, record_config


@dataclass
class PipelineResult:
    run_dir: Path
    sft_run: Path
    picked_checkpoint: Path
    picked_step: int
    sft_flops: float
    rl_run: Path
    rl_flops: float
    comparison: dict[str, Any]  # first vs last RL evaluation, paired over problems
    report: Path


def run_pipeline(cfg: Config, *, resume: bool = False, overwrite: bool = False, quiet: bool = False) -> PipelineResult:
    """Run both stages in the run folder (locked for the whole pipeline); ``resume`` continues them."""
    if cfg.cluster.launcher != "local":
        raise UserError(
            "the pipeline runs in one process; on a cluster run its stages as `npu-retu sft` and then "
            "`npu-retu rl --model <picked checkpoint>`, each with cluster.launcher=ray"
        )

    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    with open_run_folder(cfg.run.output_dir, cfg.run.name, resume=resume, overwrite=overwrite) as folder:
        return _run_pipeline(cfg, folder.path, resume=resume, quiet=quiet, say=say)


def _run_pipeline(cfg: Config, root: Path, *, resume: bool, quiet: bool, say) -> PipelineResult:
    from npu_retu.report.pipeline_report import write_report
    from npu_retu.report.summary import print_sft_summary
    from npu_retu.trainer.rl import train_rl
    from npu_retu.trainer.sft import train_sft

    # the stages check their own configs on resume; this names the pipeline's config.yaml first
    started = resume and any((root / stage / "checkpoints").is_dir() for stage in ("sft", "rl"))
    changes = check_resume_config(cfg, root, say=say) if started else {}
    record_config(cfg, root, changes)

    # 1. SFT with the phase monitor
    sft_cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, output_dir=str(root), name="sft"))
    done_file = root / "sft" / "done.json"
    if resume and done_file.is_file():
        done = json.loads(done_file.read_text(encoding="utf-8"))
        say(f"pipeline: SFT already finished; RL starts from {done['picked_checkpoint']}")
    else:
        say("pipeline: stage 1/2: SFT with the phase monitor")
        sft = train_sft(sft_cfg, resume=resume, overwrite=True, quiet=quiet)
        if not quiet:
            print_sft_summary(sft)
        if sft.picked_checkpoint is None:
            raise UserError(
                f"the phase monitor picked no checkpoint in {sft.run_dir} (see phases.json); "
                "train longer, save more often (sft.save_every) or set monitor.pick=mild"
            )
        done = {"picked_checkpoint": str(sft.picked_checkpoint), "picked_step": sft.picked_step, "flops": sft.flops, "steps": sft.steps}
        write_json_atomic(done_file, done)

    # 2. RL from the picked checkpoint
    say(f"pipeline: stage 2/2: RL ({cfg.rl.algorithm}) from {done['picked_checkpoint']}")
    rl_cfg = dataclasses.replace(
        cfg,
        run=dataclasses.replace(cfg.run, output_dir=str(root), name="rl"),
        model=dataclasses.replace(cfg.model, path=done["picked_checkpoint"], tokenizer=None),
    )
    rl = train_rl(rl_cfg, resume=resume, overwrite=True, quiet=quiet)

    # 3. report
    comparison = compare_evaluations(rl.run_dir)
    report = write_report(root, cfg, done, rl, comparison)
    say(f"pipeline: report written to {report}")
    return PipelineResult(
        run_dir=root,
        sft_run=root / "sft",
        picked_checkpoint=Path(done["picked_checkpoint"]),
        picked_step=int(done["picked_step"]),
        sft_flops=float(done["flops"]),
        rl_run=rl.run_dir,
        rl_flops=rl.flops,
        comparison=comparison,
        report=report,
    )


def compare_evaluations(rl_run: Path) -> dict[str, Any]:
    """The first and last evaluation of an RL run, and their difference paired over problems.

    Each problem's score is its mean over the n samples; the difference's standard error is the std
    of the per-problem differences over sqrt(#problems), so the n samples and the problem set are
    shared by both sides of the comparison.
    """
    from npu_retu.eval.metrics import paired_difference

    files = sorted((Path(rl_run) / "eval").glob("step-*.json"))
    if len(files) < 2:
        return {}
    first = json.loads(files[0].read_text(encoding="utf-8"))
    last = json.loads(files[-1].read_text(encoding="utf-8"))
    diff, stderr = paired_difference(last["scores"], first["scores"])
    return {
        "start_step": first["step"],
        "end_step": last["step"],
        "start": first,
        "end": last,
        "difference": diff,
        "stderr": stderr,
        # the difference in standard errors (undefined when every per-problem difference is equal)
        "z": diff / stderr if stderr > 0 else None,
    }
