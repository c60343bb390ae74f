"""``npu-retu experiment paradigms``: Pure-SFT vs Pure-RL vs SFT-then-RL at matched compute
(paper §6.1, Fig. 2).

The compute budget C is that of one SFT run of ``sft_steps`` steps (Appendix C, Eq. 21):

* Pure-SFT spends all of C on SFT: that run's checkpoints, scored on the held-out problems;
* SFT-then-RL spends x_sft on SFT up to the checkpoint the phase monitor picks (Stable sub-phase,
  Eq. 13-17) and the rest, C - x_sft, on RL from it (``rl.max_flops``);
* Pure-RL spends all of C on RL from the base model.

Every curve is fitted with Eq. 11 (P_start fixed to its measured starting score; for SFT-then-RL
this is Eq. 12), so each paradigm gets a ceiling A with a bootstrap interval. The paper's finding:
SFT-then-RL reaches the highest ceiling. Synchronized SFT-RL (LUFFY / SRFT / UPT) is not part of
npu-retu yet and is left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npu_retu.config import Config
from npu_retu.errors import UserError
from npu_retu.experiments import common
from npu_retu.experiments.common import separated, stage_seconds
from npu_retu.report.markdown import Finding, findings_section, format_ci, header, table_section, write_text_atomic


@dataclass
class ParadigmSettings:
    sft_data: str = "embedded:sft-uniform-500"
    sft_steps: int = 480
    save_every: int = 40
    rl_eval_points: int = 8  # evaluations along each RL run (plus its start)
    sft_rl_steps_cap: int = 400  # safety caps on RL steps; the compute budget ends the runs first
    pure_rl_steps_cap: int = 600
    switch_step: int | None = None  # None: the phase monitor's pick


def run_paradigms(cfg: Config, out: Path, settings: ParadigmSettings, *, say=print, quiet: bool = True) -> Path:
    from npu_retu.ceiling.fit import CeilingFitError, fit_ceiling
    from npu_retu.ceiling.tables import branch_from_rl_run, plasticity_rows, rows_to_json, sft_phase_spans
    from npu_retu.report.metrics import write_json_atomic
    from npu_retu.report.plasticity_table import write_csv
    from npu_retu.report.plots import plot_plasticity

    runs = out / "runs"
    common.save_config(cfg, out)
    seconds: dict[str, float] = {}

    # Pure-SFT: one SFT run of the whole budget; the monitor's pick is SFT-then-RL's switch point
    sft = common.sft_stage(cfg, runs, "sft", train_file=settings.sft_data, steps=settings.sft_steps, every=settings.save_every,
                           say=say, quiet=quiet)
    seconds["SFT"] = stage_seconds(sft)
    budget = float(sft["flops"])
    pick = settings.switch_step or sft["picked_step"]
    if pick is None:
        raise UserError(f"the phase monitor picked no checkpoint in {sft['run_dir']}: lengthen --sft-steps")
    if pick not in sft["curve"]["steps"]:
        raise UserError(f"--switch-step {pick} is not a validation step of {sft['run_dir']} ({sft['curve']['steps']})")
    x_sft = float(sft["curve"]["flops"][sft["curve"]["steps"].index(pick)])
    if x_sft >= budget:
        raise UserError(
            f"SFT-then-RL would switch at step {pick}, the end of the SFT run, leaving no compute for RL: "
            "lengthen --sft-steps so the run goes past its validation-loss minimum, or give --switch-step"
        )
    say(f"compute budget C = {budget:.4g} FLOPs; SFT-then-RL switches at step {pick} (x_sft = {x_sft:.4g})")

    sft_points = common.evaluate_checkpoints(cfg, runs, "sft-eval", sft, [s for s in sft["curve"]["steps"] if s % settings.save_every == 0], say=say)
    seconds["SFT checkpoint evaluation"] = stage_seconds(sft_points)

    # RL runs end on their compute budget; eval_every spreads rl_eval_points evaluations over the
    # number of steps that budget buys (see _eval_every)
    sft_rl_budget = budget - x_sft
    sft_rl = common.rl_stage(
        cfg, runs, "sft-then-rl", common.checkpoint_path(sft, pick), say=say, quiet=quiet,
        max_steps=settings.sft_rl_steps_cap, max_flops=sft_rl_budget,
        eval_every=_eval_every(cfg, sft_rl_budget, settings.rl_eval_points), save_every=20,
    )
    seconds["SFT-then-RL (RL part)"] = stage_seconds(sft_rl)
    pure_rl = common.rl_stage(
        cfg, runs, "pure-rl", cfg.model.path, say=say, quiet=quiet,
        max_steps=settings.pure_rl_steps_cap, max_flops=budget,
        eval_every=_eval_every(cfg, budget, settings.rl_eval_points), save_every=20,
    )
    seconds["Pure-RL"] = stage_seconds(pure_rl)

    data_name = settings.sft_data.replace("embedded:", "")
    branches = [
        branch_from_rl_run(sft_rl["run_dir"], name="SFT-then-RL", dataset=data_name),
        branch_from_rl_run(pure_rl["run_dir"], name="Pure-RL"),
    ]
    rows = plasticity_rows(branches)

    # Pure-SFT: Eq. 11 over SFT compute, starting from the base model's score (Pure-RL's step 0)
    base_score = branches[1].scores[0]
    sft_x = [0.0] + [float(p["flops"]) for p in sft_points]
    sft_y = [base_score] + [100 * float(p["avg_at_n"]) for p in sft_points]
    try:
        pure_sft_fit = fit_ceiling(sft_x, sft_y, p_start=base_score)
        pure_sft_error = None
    except CeilingFitError as exc:
        pure_sft_fit, pure_sft_error = None, str(exc)

    summary = _summary(branches, rows, sft_x, sft_y, pure_sft_fit, budget)
    summary["end_vs_pure_sft"] = end_of_budget_difference(runs, sft, sft_rl)
    write_csv(rows, out / "plasticity.csv")
    write_json_atomic(out / "results.json", {
        "settings": settings.__dict__,
        "budget_flops": budget,
        "switch_step": pick,
        "x_sft": x_sft,
        "sft": sft,
        "sft_curve": sft_points,
        "pure_sft_fit": None if pure_sft_fit is None else pure_sft_fit.to_dict(),
        "pure_sft_fit_error": pure_sft_error,
        "rows": rows_to_json(rows),
        "summary": summary,
    })
    plot_plasticity(
        out / "paradigms.png",
        sft_curve=list(zip(sft_x, sft_y)),
        branches=branches,
        fits=[row.fit for row in rows],
        phase_spans=sft_phase_spans(sft["run_dir"]),
        title="Pure-SFT (dashed), SFT-then-RL and Pure-RL at matched compute",
    )
    findings = paradigm_findings(summary)
    report = _report(out, cfg, settings, sft, pick, x_sft, budget, sft_points, rows, summary, pure_sft_fit, pure_sft_error,
                     findings, seconds)
    say(f"report: {report}")
    return report


def _eval_every(cfg: Config, budget: float, points: int) -> int:
    """RL steps between evaluations so that about ``points`` evaluations fall inside ``budget``.

    An RL step's cost is estimated from its shape (Appendix C, Eq. 22: generation forward passes
    plus three passes per trained sequence) at the full response length; shorter responses only
    add evaluation points.
    """
    from transformers import AutoConfig

    from npu_retu.flops import ModelShape
    from npu_retu.models.modeling import resolve_path
    from npu_retu.trainer.rl import rl_step_flops

    shape = ModelShape.from_hf_config(
        AutoConfig.from_pretrained(str(resolve_path(cfg.model.path)), trust_remote_code=cfg.model.trust_remote_code)
    )
    rl = cfg.rl
    length = rl.max_prompt_length // 2 + rl.max_response_length // 2
    draws = rl.algo.max_draws if rl.algo.dynamic_sampling else 1
    gen = [length] * (rl.gen_batch_prompts * rl.algo.n * draws)
    train = [length] * (rl.train_batch_prompts * rl.algo.n)
    per_step = rl_step_flops(shape, gen, train, rl.ppo_epochs)
    steps = max(1, int(budget / per_step))
    return max(1, round(steps / points))


def _summary(branches, rows, sft_x, sft_y, pure_sft_fit, budget) -> dict[str, Any]:
    by_name = {b.name: (b, r) for b, r in zip(branches, rows)}
    out: dict[str, Any] = {}
    for name, (branch, row) in by_name.items():
        out[name] = {
            "start": branch.scores[0],
            "final": branch.scores[-1],
            "final_stderr": branch.score_stderr[-1] if branch.score_stderr else None,
            "best": max(branch.scores),
            "compute_used": branch.sft_flops + branch.rl_flops[-1],
            "A": row.A_post,
            "A_ci": row.a_ci,
        }
    out["Pure-SFT"] = {
        "start": sft_y[0],
        "final": sft_y[-1],
        "final_stderr": None,
        "best": max(sft_y),
        "compute_used": sft_x[-1],
        "A": None if pure_sft_fit is None else pure_sft_fit.A,
        "A_ci": None if pure_sft_fit is None else pure_sft_fit.a_ci,
    }
    out["budget"] = budget
    return out


def end_of_budget_difference(runs: Path, sft: dict[str, Any], sft_rl: dict[str, Any]) -> dict[str, float]:
    """SFT-then-RL's last evaluation minus Pure-SFT's (the SFT run's last checkpoint), paired over
    the same held-out problems: ``{difference, stderr}`` in points."""
    import json

    from npu_retu.eval.metrics import paired_difference

    last_sft = runs / "sft-eval" / f"step-{sft['steps']:06d}.json"
    last_rl = Path(sft_rl["run_dir"]) / "eval" / f"step-{sft_rl['steps']:06d}.json"
    a = json.loads(last_rl.read_text(encoding="utf-8"))["scores"]
    b = json.loads(last_sft.read_text(encoding="utf-8"))["scores"]
    difference, stderr = paired_difference(a, b)
    return {"difference": 100 * difference, "stderr": 100 * stderr}


def paradigm_findings(summary: dict[str, Any]) -> list[Finding]:
    s_rl, p_rl, p_sft = summary["SFT-then-RL"], summary["Pure-RL"], summary["Pure-SFT"]
    findings = []
    ceilings = {k: v["A"] for k, v in (("SFT-then-RL", s_rl), ("Pure-SFT", p_sft), ("Pure-RL", p_rl)) if v["A"] is not None and v["A"] == v["A"]}
    evidence = "fitted ceilings A: " + ", ".join(f"{k} {a:.1f} (CI {format_ci(summary[k]['A_ci'])})" for k, a in ceilings.items())
    if "SFT-then-RL" not in ceilings or len(ceilings) < 2:
        held: bool | None = None
    else:
        others = {k: a for k, a in ceilings.items() if k != "SFT-then-RL"}
        best_other = max(others, key=others.get)
        if ceilings["SFT-then-RL"] > others[best_other]:
            held = None if not separated(s_rl["A_ci"], summary[best_other]["A_ci"]) else True
            if held is None:
                evidence += f"; higher than {best_other}, but the 95% intervals overlap"
        else:
            held = False if separated(s_rl["A_ci"], summary[best_other]["A_ci"]) else None
            if held is None:
                evidence += f"; {best_other} is higher, but the intervals overlap"
    findings.append(Finding("sequential SFT-then-RL reaches the highest ceiling of the paradigms", held, evidence))

    finals = {k: v["final"] for k, v in (("SFT-then-RL", s_rl), ("Pure-SFT", p_sft), ("Pure-RL", p_rl))}
    best_final = max(finals, key=finals.get)
    held_final: bool | None = best_final == "SFT-then-RL"
    evidence = "score at the end of the budget: " + ", ".join(f"{k} {v:.1f}" for k, v in finals.items())
    paired = summary.get("end_vs_pure_sft")
    if paired:
        z = paired["difference"] / paired["stderr"] if paired["stderr"] > 0 else float("inf")
        evidence += (f"; SFT-then-RL minus Pure-SFT, paired over the same problems: {paired['difference']:+.1f} points, "
                     f"standard error {paired['stderr']:.1f} ({z:.1f} s.e.)")
        if abs(z) < 2:  # within two standard errors: cannot tell the two apart
            held_final = None
    findings.append(Finding("at the matched compute budget, SFT-then-RL scores highest", held_final, evidence))
    findings.append(Finding(
        "RL on top of SFT adds to the SFT score (positive RL plasticity PL_rl = A_post - P_sft)",
        (s_rl["A"] - s_rl["start"]) > 0 if s_rl["A"] == s_rl["A"] else None,
        f"P_sft {s_rl['start']:.1f}, A_post {s_rl['A']:.1f}, best observed {s_rl['best']:.1f}",
    ))
    return findings


def _switch_reason(settings: ParadigmSettings, sft: dict[str, Any]) -> str:
    if not settings.switch_step:
        return "the phase monitor's pick: the lowest-loss Stable checkpoint"
    return (f"given by --switch-step; the phase monitor's pick on this run is step {sft['picked_step']}"
            + (", its last step, which would leave no compute for RL" if sft["picked_step"] == sft["steps"] else ""))


def _report(out, cfg, settings, sft, pick, x_sft, budget, sft_points, rows, summary, pure_sft_fit, pure_sft_error,
            findings, seconds) -> Path:
    e = cfg.eval
    lines = header("Experiment: post-training paradigms at matched compute (paper §6.1)", common.command_line(),
                   common.environment_line(), seconds)
    lines += [
        "## Setup (miniature)",
        "",
        f"* Budget C = {budget:.4g} FLOPs (Appendix C) = one SFT run of {settings.sft_steps} steps of {cfg.sft.global_batch_size} "
        f"on `{settings.sft_data}` from the embedded tiny Qwen2 base.",
        f"* Pure-SFT: that run's checkpoints (every {settings.save_every} steps) scored on the held-out problems.",
        f"* SFT-then-RL: SFT to step {pick} ({_switch_reason(settings, sft)}, "
        f"x_sft = {x_sft:.4g} FLOPs, {sft['curve']['phases'][sft['curve']['steps'].index(pick)]} sub-phase), then "
        f"{cfg.rl.algorithm} RL for the remaining {budget - x_sft:.4g} FLOPs.",
        f"* Pure-RL: {cfg.rl.algorithm} RL from the base model for all of C.",
        f"* RL: `{', '.join(cfg.rl.train_files)}`, {cfg.rl.train_batch_prompts} prompts x {cfg.rl.algo.n} samples per step, lr {cfg.rl.optim.lr}.",
        f"* Score: avg@{e.n} on the first {e.max_problems or 'all'} problems of `{', '.join(e.files)}` (T={e.temperature}, top-p {e.top_p}, "
        f"max {e.max_new_tokens or cfg.rl.max_response_length} new tokens, seed {e.seed}), in percent.",
        "* Fits: Eq. 11 with P_start fixed to each curve's measured start (Eq. 12 for SFT-then-RL), first 85% of points fit, "
        "modified z-score (tau 3.5) then LTS (alpha 0.85), 95% bootstrap interval for A.",
        "* Left out: Synchronized SFT-RL (LUFFY / SRFT / UPT) is not implemented in npu-retu yet. Smaller than the paper: "
        f"a tiny model, `{settings.sft_data}`, a budget of minutes.",
        "",
        "## Results",
        "",
        "| paradigm | start | end of budget | best | ceiling A (95% CI) | compute used |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("Pure-SFT", "Pure-RL", "SFT-then-RL"):
        s = summary[name]
        a = "n/a" if s["A"] is None or s["A"] != s["A"] else f"{s['A']:.1f} ({format_ci(s['A_ci'])})"
        lines.append(f"| {name} | {s['start']:.1f} | {s['final']:.1f} | {s['best']:.1f} | {a} | {s['compute_used']:.3g} |")
    if pure_sft_error:
        lines += ["", f"Pure-SFT fit failed: {pure_sft_error}"]
    elif pure_sft_fit is not None:
        lines += ["", f"Pure-SFT fit (Eq. 11 over SFT FLOPs): A {pure_sft_fit.A:.1f}, B {pure_sft_fit.B:.2f}, C_mid {pure_sft_fit.C_mid:.3g}, "
                  f"R² {pure_sft_fit.r2_fit:.2f}, RMSE val {pure_sft_fit.rmse_val if pure_sft_fit.rmse_val is None else round(pure_sft_fit.rmse_val, 2)}."]
    lines += ["", "Pure-SFT points (SFT checkpoints):", "", "| SFT step | FLOPs | score | ± s.e. |", "|---:|---:|---:|---:|"]
    for p in sft_points:
        lines.append(f"| {p['step']} | {p['flops']:.3g} | {100 * p['avg_at_n']:.1f} | {100 * p['avg_at_n_stderr']:.1f} |")
    lines += ["", "The RL curves as a plasticity table (cf. Table 4; the Pure-RL row starts from the base):", ""]
    lines += table_section(rows)
    lines += ["![paradigms](paradigms.png)", ""]
    lines += findings_section(findings)
    lines += ["Files: `plasticity.csv`, `results.json` (every number above), `runs/` (the runs themselves; not committed).", ""]
    return write_text_atomic(out / "report.md", "\n".join(lines))
