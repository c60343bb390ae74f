"""``npu-retu experiment data``: which expert trajectories to use (paper §6.2.2, Fig. 4-5, Table 1).

SFT data sets that differ in scale (Uniform at several sizes) and in difficulty (Easy / Uniform /
Hard at one size) are each trained for the same number of steps with the phase monitor watching,
and RL runs from each run's minimum-validation-loss checkpoint (the monitor's Stable pick, as the
paper does for Llama3.2-3B in RQ3). A run whose minimum is its last validation point was still
improving when its steps ran out; the report says so. Each RL branch is fitted with Eq. 12. The paper's findings:
larger scale gives a higher ceiling A_post ("less is more" does not carry over to SFT-then-RL),
harder trajectories raise it further, and the minimum SFT validation loss predicts A_post
(Pearson r = -0.90 on Qwen2.5-7B, Fig. 5a).
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
class DataSettings:
    scale: tuple[str, ...] = ("uniform-500", "uniform-2k")  # smallest to largest
    difficulty: tuple[str, ...] = ("uniform-2k", "hard-2k")  # easiest to hardest, one size
    sft_steps: int = 240
    eval_every: int = 20  # SFT validation loss and checkpoint interval
    rl_steps: int = 20
    rl_eval_every: int = 4

    @property
    def variants(self) -> list[str]:
        """Every data set once, scale first (a set in both lists runs once)."""
        return list(dict.fromkeys(self.scale + self.difficulty))


def run_data(cfg: Config, out: Path, settings: DataSettings, *, say=print, quiet: bool = True) -> Path:
    from npu_retu.ceiling.tables import branch_from_rl_run, min_loss_correlation, plasticity_rows, rows_to_json
    from npu_retu.report.metrics import write_json_atomic
    from npu_retu.report.plasticity_table import write_csv
    from npu_retu.report.plots import plot_min_loss_correlation, plot_plasticity

    runs = out / "runs"
    common.save_config(cfg, out)
    seconds: dict[str, float] = {}
    sft_runs: dict[str, dict[str, Any]] = {}
    branches = []
    for variant in settings.variants:
        sft = common.sft_stage(cfg, runs, f"sft-{variant}", train_file=f"embedded:sft-{variant}", steps=settings.sft_steps,
                               every=settings.eval_every, say=say, quiet=quiet)
        sft_runs[variant] = sft
        pick = sft["picked_step"]
        if pick is None:
            raise UserError(f"the phase monitor picked no checkpoint in {sft['run_dir']}")
        rl = common.rl_stage(
            cfg, runs, f"rl-{variant}", common.checkpoint_path(sft, pick), say=say, quiet=quiet,
            max_steps=settings.rl_steps, eval_every=settings.rl_eval_every, save_every=settings.rl_steps,
        )
        branches.append(branch_from_rl_run(rl["run_dir"], name=variant, dataset=variant))
        seconds[variant] = stage_seconds(sft) + stage_seconds(rl)

    rows = plasticity_rows(branches)
    correlation = min_loss_correlation(rows)
    write_csv(rows, out / "plasticity.csv")
    write_json_atomic(out / "results.json", {
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.__dict__.items()},
        "sft": sft_runs,
        "rows": rows_to_json(rows),
        "correlation": correlation,
    })
    plot_plasticity(out / "branches.png", branches=branches, fits=[row.fit for row in rows],
                    title="RL from each data set's minimum-loss SFT checkpoint")
    plot_min_loss_correlation(correlation, out / "min_loss_vs_ceiling.png")
    unfinished = frozenset(v for v, s in sft_runs.items() if s["min_val_step"] == s["curve"]["steps"][-1])
    findings = data_findings(rows, settings, correlation, unfinished)
    report = _report(out, cfg, settings, sft_runs, rows, correlation, findings, seconds)
    say(f"report: {report}")
    return report


def _ordered(rows: list[Any], names: tuple[str, ...]) -> list[Any]:
    by_name = {row.dataset: row for row in rows}
    return [by_name[n] for n in names if n in by_name]


def _monotone_verdict(rows: list[Any], claim: str, unfinished: frozenset[str] = frozenset()) -> Finding:
    """Whether A_post rises along ``rows`` (ordered), telling apart a clear rise from overlapping
    intervals. The paper compares each data set at its minimum validation loss: when a set had not
    reached it (``unfinished``), the comparison is not the paper's and the verdict is inconclusive."""
    a = [row.A_post for row in rows]
    evidence = ", ".join(f"{row.dataset}: A_post {row.A_post:.1f} (CI {format_ci(row.a_ci)}), P_sft {row.P_sft:.1f}, PL_rl {row.PL_rl:.1f}" for row in rows)
    if len(rows) < 2 or any(x != x for x in a):
        return Finding(claim, None, evidence + " (a fit is missing)")
    rising = all(x < y for x, y in zip(a, a[1:]))
    ends_rise = a[-1] > a[0]
    apart = separated(rows[0].a_ci, rows[-1].a_ci)
    short = [row.dataset for row in rows if row.dataset in unfinished]
    if short:
        seen = "rises" if rising else "does not rise"
        return Finding(claim, None, evidence + f"; at equal SFT steps A_post {seen} in this order, but {', '.join(short)} had not "
                       "reached its minimum validation loss (its last point was its lowest), so the paper's comparison was not made")
    if rising and apart:
        return Finding(claim, True, evidence)
    if not ends_rise and apart:
        return Finding(claim, False, evidence)
    note = "the ceilings do not rise in order" if not rising else "they rise in order, but the end points' 95% intervals overlap"
    return Finding(claim, None if ends_rise or not apart else False, evidence + f"; {note}")


def data_findings(rows: list[Any], settings: DataSettings, correlation: dict[str, Any],
                  unfinished: frozenset[str] = frozenset()) -> list[Finding]:
    """The paper's §6.2.2 findings; ``unfinished``: data sets whose SFT run ended before its minimum."""
    findings = [
        _monotone_verdict(_ordered(rows, settings.scale), "more SFT data (scale) gives a higher post-training ceiling A_post", unfinished),
        _monotone_verdict(_ordered(rows, settings.difficulty), "harder trajectories give a higher ceiling A_post at the same scale",
                          unfinished),
    ]
    r = correlation.get("r")
    if r is None:
        findings.append(Finding("a lower minimum SFT validation loss predicts a higher ceiling", None, correlation.get("reason", "r undefined")))
    else:
        p = correlation.get("p_value")
        findings.append(Finding(
            "a lower minimum SFT validation loss predicts a higher ceiling (paper: Pearson r = -0.90)",
            True if r <= -0.7 and p is not None and p < 0.1 else (False if r >= 0 else None),
            f"Pearson r = {r:.2f} over {correlation.get('n')} data sets" + (f" (p = {p:.3f})" if p is not None else "")
            + "; held needs r <= -0.7 with p < 0.1, r >= 0 counts as not held, anything between as inconclusive",
        ))
    return findings


def max_score_correlation(correlation: dict[str, Any]) -> float | None:
    """Pearson r between the minimum validation loss and the best observed score (Table 1's max P_post)."""
    datasets = correlation.get("datasets", [])
    losses = [d["min_val_loss"] for d in datasets]
    best = [d["best_max_P_post"] for d in datasets]
    if len(datasets) < 3 or len(set(losses)) < 2 or len(set(best)) < 2:
        return None
    from scipy.stats import pearsonr

    return float(pearsonr(losses, best)[0])


def _report(out, cfg, settings, sft_runs, rows, correlation, findings, seconds) -> Path:
    from npu_retu.models.embedded import parse_size

    e = cfg.eval
    lines = header("Experiment: SFT data scale and difficulty (paper §6.2.2)", common.command_line(), common.environment_line(), seconds)
    lines += [
        "## Setup (miniature)",
        "",
        f"* SFT data: embedded synthetic trajectories; scale {', '.join(settings.scale)}; difficulty {', '.join(settings.difficulty)} "
        "(easy: 1-3 steps, uniform: 1-6, hard: 4-6). Validation on `embedded:sft-val` (uniform difficulty, the same for every run).",
        f"* Each SFT run: batch {cfg.sft.global_batch_size}, lr {cfg.sft.optim.lr}, validation and checkpoint every {settings.eval_every} steps; "
        f"{settings.sft_steps} steps each. RL starts from the run's minimum-validation-loss checkpoint.",
        f"* RL: {cfg.rl.algorithm} on `{', '.join(cfg.rl.train_files)}`, {settings.rl_steps} steps per branch, evaluated every {settings.rl_eval_every}.",
        f"* Score: avg@{e.n} on the first {e.max_problems or 'all'} problems of `{', '.join(e.files)}` (T={e.temperature}, top-p {e.top_p}, "
        f"max {e.max_new_tokens or cfg.rl.max_response_length} new tokens, seed {e.seed}), in percent.",
        "* Fits: Eq. 12 per branch, first 85% of points fit, modified z-score (tau 3.5) then LTS (alpha 0.85), 95% bootstrap interval.",
        "* Smaller than the paper: sizes of hundreds to thousands instead of 1K-889K; a few RL steps instead of hundreds. "
        "Every set gets the same SFT steps, so a larger set gets fewer epochs; where its minimum is the last validation point "
        "(see below) it had not reached its minimum, which the paper's protocol requires, and the comparison is at equal SFT compute instead.",
        "",
        "## SFT runs",
        "",
        "| data | steps | epochs | min val loss | at step | still improving at the end? | RL starts at |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for variant, sft in sft_runs.items():
        size = parse_size(variant.rsplit("-", 1)[-1])
        epochs = sft["steps"] * cfg.sft.global_batch_size / size
        improving = "yes (minimum at the last point)" if sft["min_val_step"] == sft["curve"]["steps"][-1] else "no"
        lines.append(f"| {variant} | {sft['steps']} | {epochs:.1f} | {sft['min_val_loss']:.4f} | {sft['min_val_step']} | {improving} | {sft['picked_step']} |")
    lines += ["", "## RL from each minimum-loss checkpoint (cf. Table 4)", ""]
    lines += table_section(rows)
    lines += ["![branches](branches.png)", "", "## Minimum validation loss vs ceiling (cf. Fig. 5a)", ""]
    if correlation.get("r") is not None:
        lines.append(f"Pearson r (min validation loss, A_post) = {correlation['r']:.3f} over {correlation['n']} data sets "
                     f"(p = {correlation['p_value']:.3f}).")
        r_max = max_score_correlation(correlation)
        if r_max is not None:
            lines.append(f"With the best observed score (max P_post, the paper's Table 1 metric) instead of A_post: r = {r_max:.3f}.")
    else:
        lines.append(f"Pearson r not computed: {correlation.get('reason')}")
    lines += ["", "| data | min val loss | best A_post | max P_post |", "|---|---:|---:|---:|"]
    for d in correlation.get("datasets", []):
        lines.append(f"| {d['dataset']} | {d['min_val_loss']:.4f} | {d['best_A_post']:.1f} | {d['best_max_P_post']:.1f} |")
    lines += ["", "![min loss vs ceiling](min_loss_vs_ceiling.png)", ""]
    lines += findings_section(findings)
    lines += ["Files: `plasticity.csv`, `results.json` (every number above), `runs/` (the runs themselves; not committed).", ""]
    return write_text_atomic(out / "report.md", "\n".join(lines))
