"""``npu-retu experiment transition``: when to switch from SFT to RL (paper §6.2.1, Table 4, Fig. 3).

One SFT run is trained past its validation-loss minimum so that its curve passes through all four
sub-phases (Eq. 13-17). From one checkpoint in each sub-phase (Adaptive, Stable, Mild, Severe) an
RL branch runs with the same settings; each branch's evaluation points are fitted with Eq. 12
(P_start = the branch checkpoint's score P_sft, x = RL compute), giving A_post and
PL_rl = A_post - P_sft per branch. The paper's finding: switching in the Stable or Mild sub-phase
gives the highest ceiling A_post.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npu_retu.config import Config
from npu_retu.experiments import common
from npu_retu.experiments.common import separated, stage_seconds
from npu_retu.report.markdown import Finding, findings_section, format_ci, header, table_section, write_text_atomic

SUB_PHASES = ("adaptive", "stable", "mild", "severe")


@dataclass
class TransitionSettings:
    sft_data: str = "embedded:sft-uniform-500"
    sft_steps: int = 960
    save_every: int = 40
    rl_steps: int = 32
    eval_every: int = 4
    sft_curve_every: int = 80  # evaluate every N-th SFT step's checkpoint for the dashed SFT curve
    phases: tuple[str, ...] = field(default=SUB_PHASES)


def choose_branch_steps(sft_done: dict[str, Any], phases: tuple[str, ...] = SUB_PHASES) -> dict[str, int | None]:
    """One checkpoint per sub-phase, from the offline labels of the finished curve (Eq. 13-17).

    * adaptive: the middle one of the Adaptive checkpoints (a model still learning quickly);
    * stable: the monitor's pick, the lowest-loss Stable checkpoint (the global minimum);
    * mild: the first Mild checkpoint after the minimum (the earliest overfitting);
    * severe: the last Severe checkpoint after the minimum (the most overfitted).

    A sub-phase with no checkpoint maps to None.
    """
    curve = sft_done["curve"]
    min_step = sft_done["min_val_step"]
    labelled = [(s, p) for s, p, ok in zip(curve["steps"], curve["phases"], curve["has_checkpoint"]) if ok]
    chosen: dict[str, int | None] = {}
    for phase in phases:
        steps = [s for s, p in labelled if p == phase]
        if phase == "adaptive":
            chosen[phase] = steps[(len(steps) - 1) // 2] if steps else None
        elif phase == "stable":
            chosen[phase] = sft_done["picked_step"] if sft_done["picked_step"] in steps else (steps[0] if steps else None)
        elif phase == "mild":
            after = [s for s in steps if s > min_step]
            chosen[phase] = after[0] if after else None
        else:
            after = [s for s in steps if s > min_step]
            chosen[phase] = after[-1] if after else None
    return chosen


def run_transition(cfg: Config, out: Path, settings: TransitionSettings, *, say=print, quiet: bool = True) -> Path:
    """Run (or finish) the experiment in ``out`` and write ``out/report.md``; returns the report path."""
    from npu_retu.ceiling.tables import branch_from_rl_run, plasticity_rows, rows_to_json
    from npu_retu.monitor.phases import build_report
    from npu_retu.report.metrics import write_json_atomic
    from npu_retu.report.plasticity_table import write_csv

    runs = out / "runs"
    common.save_config(cfg, out)
    seconds: dict[str, float] = {}

    sft = common.sft_stage(cfg, runs, "sft", train_file=settings.sft_data, steps=settings.sft_steps, every=settings.save_every,
                           say=say, quiet=quiet)
    seconds["SFT"] = stage_seconds(sft)

    branch_steps = choose_branch_steps(sft, settings.phases)
    say("branch checkpoints: " + ", ".join(f"{p} -> {s if s is not None else 'none'}" for p, s in branch_steps.items()))

    curve_steps = sorted({s for s in sft["curve"]["steps"] if s % settings.sft_curve_every == 0} | {s for s in branch_steps.values() if s})
    sft_curve = common.evaluate_checkpoints(cfg, runs, "sft-eval", sft, curve_steps, say=say)
    seconds["SFT checkpoint evaluation"] = stage_seconds(sft_curve)

    branches = []
    seconds["RL branches"] = 0.0
    for phase, step in branch_steps.items():
        if step is None:
            continue
        rl = common.rl_stage(
            cfg, runs, f"rl-{phase}-step{step}", common.checkpoint_path(sft, step), say=say, quiet=quiet,
            max_steps=settings.rl_steps, eval_every=settings.eval_every, save_every=settings.rl_steps,
        )
        seconds["RL branches"] += stage_seconds(rl)
        branches.append(branch_from_rl_run(rl["run_dir"], name=f"{phase} (step {step})", dataset=settings.sft_data.replace("embedded:", "")))

    rows = plasticity_rows(branches)
    write_csv(rows, out / "plasticity.csv")
    write_json_atomic(out / "results.json", {
        "settings": settings.__dict__ | {"phases": list(settings.phases)},
        "branch_steps": branch_steps,
        "sft": sft,
        "sft_curve": sft_curve,
        "rows": rows_to_json(rows),
    })
    curve = sft["curve"]
    phase_report = build_report(curve["steps"], curve["flops"], curve["losses"], curve["has_checkpoint"],
                                delta=cfg.monitor.delta, delta2=cfg.monitor.delta2, pick=cfg.monitor.pick)
    _plots(out, phase_report, sft, sft_curve, branches, rows)
    findings = transition_findings(rows)
    report = _report(out, cfg, settings, phase_report, sft, sft_curve, rows, branch_steps, findings, seconds)
    say(f"report: {report}")
    return report


def transition_findings(rows: list[Any]) -> list[Finding]:
    """The paper's §6.2.1 findings, checked on the branch table."""
    by_phase = {row.sub_phase: row for row in rows if _fitted(row)}
    findings = []
    if not by_phase:
        return findings + [Finding("switching at Stable or Mild gives the highest ceiling A_post", None, "no branch could be fitted")]

    best = max(by_phase.values(), key=lambda r: r.A_post)
    early_or_late = [r for p, r in by_phase.items() if p in ("adaptive", "severe")]
    window = [r for p, r in by_phase.items() if p in ("stable", "mild")]
    evidence = "A_post by branch: " + ", ".join(f"{p} {r.A_post:.1f} (CI {format_ci(r.a_ci)})" for p, r in by_phase.items())
    if not window:
        held: bool | None = None
    elif best.sub_phase in ("stable", "mild"):
        best_out = max(early_or_late, key=lambda r: r.A_post) if early_or_late else None
        held = True if best_out is None or separated(best.a_ci, best_out.a_ci) else None
        if held is None:
            evidence += "; the best Stable/Mild ceiling is higher but its 95% interval overlaps the best Adaptive/Severe one"
    else:
        best_in = max(window, key=lambda r: r.A_post)
        held = False if separated(best.a_ci, best_in.a_ci) else None
        if held is None:
            evidence += f"; the highest ceiling is the {best.sub_phase} branch, but its interval overlaps the best Stable/Mild one"
    findings.append(Finding("switching to RL in the Stable or Mild sub-phase gives the highest post-training ceiling A_post", held, evidence))

    p_sft = {p: r.P_sft for p, r in by_phase.items()}
    if "adaptive" in p_sft and window:
        top = max(window, key=lambda r: r.P_sft)
        findings.append(Finding(
            "more SFT (Stable/Mild rather than Adaptive) gives a higher starting score P_sft",
            top.P_sft > p_sft["adaptive"],
            "P_sft by branch: " + ", ".join(f"{p} {v:.1f}" for p, v in p_sft.items()),
        ))
    if "severe" in by_phase and window:
        severe = by_phase["severe"]
        top = max(window, key=lambda r: r.A_post)
        held2: bool | None = severe.A_post < top.A_post
        if not separated(severe.a_ci, top.a_ci):
            held2 = None
        findings.append(Finding(
            "training on into Severe overfitting lowers the ceiling compared with switching at Stable/Mild",
            held2,
            f"Severe A_post {severe.A_post:.1f} (CI {format_ci(severe.a_ci)}) vs best Stable/Mild {top.A_post:.1f} (CI {format_ci(top.a_ci)}); "
            f"PL_rl Severe {severe.PL_rl:.1f} vs {top.PL_rl:.1f}",
        ))
    return findings


def _missing_phase_note(branch_steps: dict[str, int | None]) -> list[str]:
    missing = [p for p, s in branch_steps.items() if s is None]
    if not missing:
        return []
    return ["", f"No checkpoint fell in the {', '.join(missing)} sub-phase(s), so there is no branch from there: on this "
            "curve the validation loss goes from one sub-phase to the next between two validation points."]


def _fitted(row: Any) -> bool:
    return row.A_post == row.A_post  # not NaN


def _plots(out: Path, phase_report: Any, sft: dict[str, Any], sft_curve: list[dict], branches: list[Any], rows: list[Any]) -> None:
    from npu_retu.ceiling.tables import sft_phase_spans
    from npu_retu.report.plots import plot_phases, plot_plasticity

    plot_phases(phase_report, out / "sft_phases.png", x="step", title="SFT validation loss and its sub-phases")
    plot_plasticity(
        out / "plasticity.png",
        sft_curve=[(p["flops"], 100 * p["avg_at_n"]) for p in sft_curve],
        branches=branches,
        fits=[row.fit for row in rows],
        phase_spans=sft_phase_spans(sft["run_dir"]),
        title="RL branches from SFT checkpoints in each sub-phase",
    )


def _report(out, cfg, settings, phase_report, sft, sft_curve, rows, branch_steps, findings, seconds) -> Path:
    from npu_retu.report.phases import format_phase_table

    curve = sft["curve"]
    e = cfg.eval
    lines = header("Experiment: when to switch from SFT to RL (paper §6.2.1)", common.command_line(), common.environment_line(), seconds)
    lines += [
        "## Setup (miniature)",
        "",
        f"* Model: the embedded tiny Qwen2 base (`{cfg.model.path}`); SFT on `{settings.sft_data}` for {settings.sft_steps} steps of "
        f"{cfg.sft.global_batch_size} (lr {cfg.sft.optim.lr}), validation loss on `embedded:sft-val` every {settings.save_every} steps, a checkpoint at each.",
        f"* RL branches: {cfg.rl.algorithm} on `{', '.join(cfg.rl.train_files)}`, {settings.rl_steps} steps each "
        f"({cfg.rl.train_batch_prompts} prompts x {cfg.rl.algo.n} samples per step, lr {cfg.rl.optim.lr}), evaluated every {settings.eval_every} steps.",
        f"* Score: avg@{e.n} on the first {e.max_problems or 'all'} problems of `{', '.join(e.files)}` (T={e.temperature}, top-p {e.top_p}, "
        f"max {e.max_new_tokens or cfg.rl.max_response_length} new tokens, seed {e.seed}), in percent; compute in FLOPs (Appendix C).",
        "* Fits: Eq. 12 per branch (P_start fixed to the branch's step-0 score P_sft, x = RL FLOPs), first 85% of points fit, "
        "the rest validate, modified z-score (tau 3.5) then LTS (alpha 0.85), 95% bootstrap interval for A_post.",
        f"* Smaller than the paper: `{settings.sft_data}` instead of 889K trajectories (few enough that the tiny model overfits them "
        "within the run), one branch per sub-phase instead of every 360-step checkpoint, "
        f"{settings.rl_steps} RL steps per branch instead of hundreds, {e.max_problems or 'all'} held-out problems. "
        "Scores carry sampling noise of about the standard errors shown.",
        "",
        "## The SFT run and its sub-phases (Eq. 13-17)",
        "",
        "```",
        format_phase_table(phase_report),
        "```",
        "",
        "Branch checkpoints: " + ", ".join(f"{p}: step {s}" if s is not None else f"{p}: none" for p, s in branch_steps.items()) + ".",
        *_missing_phase_note(branch_steps),
        "",
        "![SFT sub-phases](sft_phases.png)",
        "",
        "SFT checkpoints scored (the dashed Pure-SFT curve):",
        "",
        "| SFT step | SFT FLOPs | sub-phase | score | ± s.e. |",
        "|---:|---:|---|---:|---:|",
    ]
    phase_at = dict(zip(curve["steps"], curve["phases"]))
    for p in sft_curve:
        lines.append(f"| {p['step']} | {p['flops']:.3g} | {phase_at.get(p['step'], '?')} | {100 * p['avg_at_n']:.1f} | {100 * p['avg_at_n_stderr']:.1f} |")
    lines += ["", "## RL branches: the plasticity table (cf. paper Table 4)", ""]
    lines += table_section(rows)
    lines += ["![plasticity](plasticity.png)", ""]
    lines += findings_section(findings)
    lines += ["Files: `plasticity.csv`, `results.json` (every number above), `runs/` (the runs themselves; not committed).", ""]
    return write_text_atomic(out / "report.md", "\n".join(lines))
