"""``npu-retu experiment paradigms``: Pure-SFT, Pure-RL, Synchronized SFT-RL (LUFFY / SRFT / UPT)
and SFT-then-RL at matched compute (paper §6.1, Fig. 2, Appendix B.2.1).

The compute budget C is that of one SFT run of ``sft_steps`` steps (Appendix C, Eq. 21):

* Pure-SFT spends all of C on SFT: that run's checkpoints, scored on the held-out problems;
* Pure-RL spends all of C on RL from the base model with DAPO_d (``dapo_d``: GRPO plus dynamic
  sampling, symmetric clip; the paper's §6.1 Pure-RL baseline, and the one its stability claim
  compares SRFT with);
* Syn-SFT-RL spends all of C on one synchronized run from the base model per method: ``luffy``,
  ``srft`` and ``upt`` (``rl.algorithm``), on the Pure-RL run's prompts with an expert trajectory
  each (``embedded:rl-{d}-{N}`` -> ``embedded:mix-{d}-{N}``, or ``--syn-data``); UPT at 5x the
  configured RL learning rate (the paper's 5e-6 against 1e-6), everything else as Pure-RL;
* SFT-then-RL spends x_sft on SFT up to the checkpoint the phase monitor picks (Stable sub-phase,
  Eq. 13-17) and the rest, C - x_sft, on RL from it with the configured algorithm (DAPO_dc).

Every RL run stops on its share of C (``rl.max_flops``). Every curve is fitted with Eq. 11 (P_start
fixed to its measured starting score; for SFT-then-RL this is Eq. 12), so each paradigm gets a
ceiling A with a bootstrap interval. The paper's findings: SFT-then-RL reaches the highest ceiling
and ends the budget above the synchronized methods, and SRFT's score fluctuates more than DAPO_d's
(a 2.6x larger standard deviation).

``--paradigms`` runs a subset. The SFT run always runs (it sets C, and SFT-then-RL starts from it);
its checkpoints are scored only for Pure-SFT. Each RL paradigm is one run folder
(``runs/pure-rl``, ``runs/syn-luffy``, ``runs/syn-srft``, ``runs/syn-upt``, ``runs/sft-then-rl``);
a finished one is reused, so a later invocation with more paradigms adds only the missing runs.
Pure-SFT's curve starts at the base model's score, read from step 0 of a base-model RL run when one
ran, else evaluated as step 0 of the SFT checkpoint evaluation. A finding whose paradigms did not
run is left out of the report.
"""

from __future__ import annotations

import math
import re
import statistics
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npu_retu.config import Config
from npu_retu.errors import UserError
from npu_retu.experiments import common
from npu_retu.experiments.common import separated, stage_seconds
from npu_retu.report.markdown import Finding, findings_section, format_ci, header, table_section, write_text_atomic

# the --paradigms names, in the order they run and are reported
PARADIGMS = ("pure-sft", "pure-rl", "luffy", "srft", "upt", "sft-then-rl")
SYN_ALGORITHMS = ("luffy", "srft", "upt")
LABELS = {"pure-sft": "Pure-SFT", "pure-rl": "Pure-RL", "luffy": "LUFFY", "srft": "SRFT", "upt": "UPT",
          "sft-then-rl": "SFT-then-RL"}
PURE_RL_ALGORITHM = "dapo_d"  # the paper's §6.1 Pure-RL baseline (GRPO / DAPO_d)
UPT_LR_RATIO = 5.0  # Appendix B.2.1: UPT at 5e-6, the others at 1e-6
PAPER_FLUCTUATION_RATIO = 2.6  # §6.1: SRFT's fluctuation std / DAPO_d's
_RL_SET = re.compile(r"embedded:rl-(easy|uniform|hard)-(\w+)")


@dataclass
class ParadigmSettings:
    sft_data: str = "embedded:sft-uniform-500"
    sft_steps: int = 480
    save_every: int = 40
    rl_eval_points: int = 8  # evaluations along each RL run (plus its start)
    sft_rl_steps_cap: int = 400  # safety caps on RL steps; the compute budget ends the runs first
    pure_rl_steps_cap: int = 600
    # Syn-SFT-RL steps are cheaper (one generation batch of the train prompts, no dynamic sampling),
    # so the same budget buys about 1.75x the Pure-RL steps on the demo config
    syn_steps_cap: int = 1200
    switch_step: int | None = None  # None: the phase monitor's pick
    paradigms: tuple[str, ...] = PARADIGMS
    syn_data: str | None = None  # Syn-SFT-RL's RL data; None: the mix set of rl.train_files


def parse_paradigms(text: str) -> tuple[str, ...]:
    """``--paradigms``: comma-separated names from :data:`PARADIGMS` (or ``all``), in run order."""
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    if names == ["all"]:
        return PARADIGMS
    unknown = [n for n in names if n not in PARADIGMS]
    if unknown or not names:
        problem = f"unknown paradigm {unknown[0]!r}" if unknown else "no paradigm given"
        raise UserError(f"--paradigms: {problem}; choose from {', '.join(PARADIGMS)} (comma-separated), or all")
    return tuple(p for p in PARADIGMS if p in names)


def syn_train_files(cfg: Config, settings: ParadigmSettings) -> list[str]:
    """The Syn-SFT-RL runs' RL data: ``--syn-data``, else the mix set of each ``rl.train_files``
    entry (``embedded:rl-easy-5k`` -> ``embedded:mix-easy-5k``: the same problems in the same order,
    in SFT format with an expert trajectory each)."""
    if settings.syn_data:
        return [settings.syn_data]
    out = []
    for name in cfg.rl.train_files:
        match = _RL_SET.fullmatch(name)
        if match is None:
            raise UserError(
                f"--syn-data: rl.train_files entry {name!r} has no embedded mix set (only embedded:rl-{{easy|uniform|hard}}-{{N}} "
                "do); give the synchronized runs' data, SFT-format rows with an expert trajectory per prompt"
            )
        out.append(f"embedded:mix-{match.group(1)}-{match.group(2)}")
    return out


@dataclass(frozen=True)
class RLStage:
    """One RL paradigm's run: what :func:`common.rl_stage` is given."""

    paradigm: str  # a name in PARADIGMS
    run_name: str  # its folder under runs/
    label: str  # its name in the report
    algorithm: str  # rl.algorithm
    train_files: tuple[str, ...]
    lr: float  # rl.optim.lr
    max_flops: float  # its share of the budget C
    max_steps: int
    from_sft: bool  # starts from SFT-then-RL's switch checkpoint (else from the base model)


def rl_stages(cfg: Config, settings: ParadigmSettings, budget: float, x_sft: float | None) -> list[RLStage]:
    """The RL runs of the chosen paradigms, in run order (``x_sft``: SFT-then-RL's switch compute)."""
    lr, files = cfg.rl.optim.lr, tuple(cfg.rl.train_files)
    stages = []
    for p in settings.paradigms:
        if p == "pure-rl":
            stages.append(RLStage(p, "pure-rl", LABELS[p], PURE_RL_ALGORITHM, files, lr, budget, settings.pure_rl_steps_cap, False))
        elif p in SYN_ALGORITHMS:
            stages.append(RLStage(p, f"syn-{p}", LABELS[p], p, tuple(syn_train_files(cfg, settings)),
                                  lr * UPT_LR_RATIO if p == "upt" else lr, budget, settings.syn_steps_cap, False))
        elif p == "sft-then-rl":
            if x_sft is None:
                raise ValueError("SFT-then-RL needs its switch compute x_sft")
            stages.append(RLStage(p, "sft-then-rl", LABELS[p], cfg.rl.algorithm, files, lr, budget - x_sft,
                                  settings.sft_rl_steps_cap, True))
    return stages


def run_paradigms(cfg: Config, out: Path, settings: ParadigmSettings, *, say=print, quiet: bool = True) -> Path:
    from npu_retu.ceiling.fit import CeilingFitError, fit_ceiling
    from npu_retu.ceiling.tables import branch_from_rl_run, plasticity_rows, rows_to_json
    from npu_retu.report.metrics import write_json_atomic
    from npu_retu.report.plasticity_table import write_csv

    chosen = settings.paradigms
    runs = out / "runs"
    common.save_config(cfg, out)
    seconds: dict[str, float] = {}

    # the SFT run of the whole budget: C itself, Pure-SFT's checkpoints, SFT-then-RL's start
    sft = common.sft_stage(cfg, runs, "sft", train_file=settings.sft_data, steps=settings.sft_steps, every=settings.save_every,
                           say=say, quiet=quiet)
    seconds["SFT"] = stage_seconds(sft)
    budget = float(sft["flops"])
    pick = x_sft = None
    if "sft-then-rl" in chosen:
        pick, x_sft = _switch_point(sft, settings)
        say(f"compute budget C = {budget:.4g} FLOPs; SFT-then-RL switches at step {pick} (x_sft = {x_sft:.4g})")
    else:
        say(f"compute budget C = {budget:.4g} FLOPs")
    stages = rl_stages(cfg, settings, budget, x_sft)
    base_runs = [s for s in stages if not s.from_sft]

    sft_points: list[dict[str, Any]] = []
    if "pure-sft" in chosen:
        steps = [s for s in sft["curve"]["steps"] if s % settings.save_every == 0]
        if not base_runs:  # no RL run scores the base model at its step 0: score it here
            steps = [0] + steps
        sft_points = common.evaluate_checkpoints(cfg, runs, "sft-eval", sft, steps, say=say)
        seconds["SFT checkpoint evaluation"] = stage_seconds(sft_points)

    # RL runs end on their compute budget; eval_every spreads rl_eval_points evaluations over the
    # number of steps that budget buys (see _eval_every)
    done: dict[str, dict[str, Any]] = {}
    rl_runs: dict[str, dict[str, Any]] = {}
    for stage in stages:
        every = _eval_every(common.with_rl_algorithm(cfg, stage.algorithm), stage.max_flops, settings.rl_eval_points)
        start = common.checkpoint_path(sft, pick) if stage.from_sft else cfg.model.path
        done[stage.paradigm] = common.rl_stage(
            cfg, runs, stage.run_name, start, say=say, quiet=quiet, algorithm=stage.algorithm, lr=stage.lr,
            train_files=list(stage.train_files), max_steps=stage.max_steps, max_flops=stage.max_flops,
            eval_every=every, save_every=20,
        )
        seconds[stage.label + (" (RL part)" if stage.from_sft else "")] = stage_seconds(done[stage.paradigm])
        if float(done[stage.paradigm]["flops"]) < stage.max_flops:
            say(f"[{stage.run_name}] stopped on its step cap ({stage.max_steps}) before its share of the budget")
        rl_runs[stage.paradigm] = {**dataclasses.asdict(stage), "train_files": list(stage.train_files), "eval_every": every,
                                   "run_dir": done[stage.paradigm]["run_dir"], "steps": done[stage.paradigm]["steps"],
                                   "flops_used": float(done[stage.paradigm]["flops"])}

    data_name = settings.sft_data.replace("embedded:", "")
    branches = [branch_from_rl_run(done[s.paradigm]["run_dir"], name=s.label,
                                   dataset=data_name if s.from_sft else f"- ({s.label})") for s in stages]
    rows = plasticity_rows(branches)

    pure_sft_fit = pure_sft_error = None
    sft_x: list[float] = []
    sft_y: list[float] = []
    if sft_points:
        # Pure-SFT: Eq. 11 over SFT compute, starting from the base model's score
        evaluated = [p for p in sft_points if p["step"] > 0]
        base_score = branches[stages.index(base_runs[0])].scores[0] if base_runs else 100 * float(sft_points[0]["avg_at_n"])
        sft_x = [0.0] + [float(p["flops"]) for p in evaluated]
        sft_y = [base_score] + [100 * float(p["avg_at_n"]) for p in evaluated]
        try:
            pure_sft_fit = fit_ceiling(sft_x, sft_y, p_start=base_score)
        except CeilingFitError as exc:
            pure_sft_error = str(exc)

    algorithms = {s.label: s.algorithm for s in stages}
    summary = _summary(branches, rows, sft_x, sft_y, pure_sft_fit, budget, algorithms)
    if "sft-then-rl" in done:
        if sft_points:
            summary["end_vs_pure_sft"] = end_of_budget_difference(runs, sft, done["sft-then-rl"])
        summary["end_vs_syn"] = {LABELS[p]: rl_end_difference(done["sft-then-rl"], done[p]) for p in SYN_ALGORITHMS if p in done}
    write_csv(rows, out / "plasticity.csv")
    write_json_atomic(out / "results.json", {
        "settings": {**settings.__dict__, "paradigms": list(chosen)},
        "budget_flops": budget,
        "switch_step": pick,
        "x_sft": x_sft,
        "sft": sft,
        "sft_curve": sft_points,
        "pure_sft_fit": None if pure_sft_fit is None else pure_sft_fit.to_dict(),
        "pure_sft_fit_error": pure_sft_error,
        "rl_runs": rl_runs,
        "rows": rows_to_json(rows),
        "summary": summary,
    })
    plot_paradigms(out / "paradigms.png", sft_x=sft_x, sft_y=sft_y, pure_sft_fit=pure_sft_fit, branches=branches,
                   fits=[row.fit for row in rows], title="Post-training paradigms at matched compute")
    findings = paradigm_findings(summary)
    report = _report(out, cfg, settings, sft, pick, x_sft, budget, sft_points, stages, rl_runs, rows, summary, pure_sft_fit,
                     pure_sft_error, findings, seconds)
    say(f"report: {report}")
    return report


def _switch_point(sft: dict[str, Any], settings: ParadigmSettings) -> tuple[int, float]:
    """SFT-then-RL's switch step (the phase monitor's pick, or --switch-step) and its SFT compute."""
    pick = settings.switch_step or sft["picked_step"]
    if pick is None:
        raise UserError(f"the phase monitor picked no checkpoint in {sft['run_dir']}: lengthen --sft-steps")
    if pick not in sft["curve"]["steps"]:
        raise UserError(f"--switch-step {pick} is not a validation step of {sft['run_dir']} ({sft['curve']['steps']})")
    x_sft = float(sft["curve"]["flops"][sft["curve"]["steps"].index(pick)])
    if x_sft >= float(sft["flops"]):
        raise UserError(
            f"SFT-then-RL would switch at step {pick}, the end of the SFT run, leaving no compute for RL: "
            "lengthen --sft-steps so the run goes past its validation-loss minimum, or give --switch-step"
        )
    return pick, x_sft


def _eval_every(cfg: Config, budget: float, points: int) -> int:
    """RL steps between evaluations so that about ``points`` evaluations fall inside ``budget``.

    An RL step's cost is estimated from its shape (Appendix C, Eq. 22: generation forward passes
    plus three passes per trained sequence) at the full response length; shorter responses only
    add evaluation points. With dynamic sampling every draw of ``gen_batch_prompts`` is counted;
    without it (GRPO, LUFFY, SRFT, UPT) one batch of ``train_batch_prompts``. Per prompt,
    ``rl.algo.rollouts_per_prompt`` sequences are generated (LUFFY / SRFT: n - N = 7, UPT: n = 8),
    LUFFY / SRFT's N expert trajectories get one forward pass too (Eq. 24), and n are trained
    (UPT's gated groups train on one expert instead: counted as n, an upper bound).
    """
    from transformers import AutoConfig

    from npu_retu.flops import ModelShape
    from npu_retu.models.modeling import resolve_path
    from npu_retu.trainer.rl import rl_step_flops

    shape = ModelShape.from_hf_config(
        AutoConfig.from_pretrained(str(resolve_path(cfg.model.path)), trust_remote_code=cfg.model.trust_remote_code)
    )
    rl, algo = cfg.rl, cfg.rl.algo
    length = rl.max_prompt_length // 2 + rl.max_response_length // 2
    prompts = rl.gen_batch_prompts * algo.max_draws if algo.dynamic_sampling else rl.train_batch_prompts
    forward = algo.rollouts_per_prompt + (algo.experts_per_prompt if algo.experts == "mixed" else 0)
    gen = [length] * (prompts * forward)
    train = [length] * (rl.train_batch_prompts * algo.n)
    per_step = rl_step_flops(shape, gen, train, rl.ppo_epochs)
    steps = max(1, int(budget / per_step))
    return max(1, round(steps / points))


def _summary(branches, rows, sft_x, sft_y, pure_sft_fit, budget, algorithms: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if sft_y:
        out["Pure-SFT"] = {
            "algorithm": "SFT",
            "start": sft_y[0],
            "final": sft_y[-1],
            "final_stderr": None,
            "best": max(sft_y),
            "compute_used": sft_x[-1],
            "A": None if pure_sft_fit is None else pure_sft_fit.A,
            "A_ci": None if pure_sft_fit is None else pure_sft_fit.a_ci,
            "scores": list(sft_y),
        }
    for branch, row in zip(branches, rows):
        out[branch.name] = {
            "algorithm": algorithms.get(branch.name),
            "start": branch.scores[0],
            "final": branch.scores[-1],
            "final_stderr": branch.score_stderr[-1] if branch.score_stderr else None,
            "best": max(branch.scores),
            "compute_used": branch.sft_flops + branch.rl_flops[-1],
            "A": row.A_post,
            "A_ci": row.a_ci,
            "scores": list(branch.scores),
        }
    out["budget"] = budget
    return out


def _paired(a_path: Path, b_path: Path) -> dict[str, float]:
    import json

    from npu_retu.eval.metrics import paired_difference

    a = json.loads(a_path.read_text(encoding="utf-8"))["scores"]
    b = json.loads(b_path.read_text(encoding="utf-8"))["scores"]
    difference, stderr = paired_difference(a, b)
    return {"difference": 100 * difference, "stderr": 100 * stderr}


def _last_rl_eval(rl_done: dict[str, Any]) -> Path:
    return Path(rl_done["run_dir"]) / "eval" / f"step-{rl_done['steps']:06d}.json"


def end_of_budget_difference(runs: Path, sft: dict[str, Any], sft_rl: dict[str, Any]) -> dict[str, float]:
    """SFT-then-RL's last evaluation minus Pure-SFT's (the SFT run's last checkpoint), paired over
    the same held-out problems: ``{difference, stderr}`` in points."""
    return _paired(_last_rl_eval(sft_rl), runs / "sft-eval" / f"step-{sft['steps']:06d}.json")


def rl_end_difference(rl_a: dict[str, Any], rl_b: dict[str, Any]) -> dict[str, float]:
    """Run a's last evaluation minus run b's, paired over the same held-out problems (points)."""
    return _paired(_last_rl_eval(rl_a), _last_rl_eval(rl_b))


def fluctuation(scores: list[float]) -> float | None:
    """Score fluctuation of an RL curve (§6.1's stability measure): the sample standard deviation
    (ddof = 1) of the differences of successive evaluation scores; differencing removes the curve's
    trend, so a steady rise is not counted as instability. None with fewer than 3 evaluations."""
    if len(scores) < 3:
        return None
    return statistics.stdev([b - a for a, b in zip(scores, scores[1:])])


def _z(paired: dict[str, float]) -> float:
    """Difference in standard errors; an unknown (NaN) or zero standard error: 0 when it cannot tell."""
    d, se = paired["difference"], paired["stderr"]
    if se > 0:
        return d / se
    return 0.0 if se != se or d == 0 else math.copysign(math.inf, d)


def _paired_text(name: str, paired: dict[str, float]) -> str:
    return f"minus {name} {paired['difference']:+.1f} points, standard error {paired['stderr']:.1f} ({_z(paired):.1f} s.e.)"


def paradigm_findings(summary: dict[str, Any]) -> list[Finding]:
    """The verdicts, for the paradigms in ``summary`` (keys: :data:`LABELS` values); a finding whose
    paradigms did not run is left out."""
    present = [LABELS[p] for p in PARADIGMS if LABELS[p] in summary]
    s_rl = summary.get("SFT-then-RL")
    findings = []
    if s_rl is not None:
        findings.append(_ceiling_finding(summary, present))
        findings.append(_end_of_budget_finding(summary, present))
        findings.append(Finding(
            "RL on top of SFT adds to the SFT score (positive RL plasticity PL_rl = A_post - P_sft)",
            (s_rl["A"] - s_rl["start"]) > 0 if s_rl["A"] == s_rl["A"] else None,
            f"P_sft {s_rl['start']:.1f}, A_post {s_rl['A']:.1f}, best observed {s_rl['best']:.1f}",
        ))
        syn = [LABELS[p] for p in SYN_ALGORITHMS if LABELS[p] in summary]
        if syn:
            findings.append(_above_syn_finding(summary, syn))
    if "SRFT" in summary and "Pure-RL" in summary:
        findings.append(_stability_finding(summary))
    return findings


def _ceiling_finding(summary: dict[str, Any], present: list[str]) -> Finding:
    ceilings = {k: summary[k]["A"] for k in present if summary[k]["A"] is not None and summary[k]["A"] == summary[k]["A"]}
    evidence = "fitted ceilings A: " + ", ".join(f"{k} {a:.1f} (CI {format_ci(summary[k]['A_ci'])})" for k, a in ceilings.items())
    held: bool | None = None
    others = {k: a for k, a in ceilings.items() if k != "SFT-then-RL"}
    if "SFT-then-RL" in ceilings and others:
        mine = summary["SFT-then-RL"]["A_ci"]
        above = {k for k, a in others.items() if a > ceilings["SFT-then-RL"]}
        if not above:
            overlapping = [k for k in others if not separated(mine, summary[k]["A_ci"])]
            held = None if overlapping else True
            if overlapping:
                evidence += f"; higher than every other, but the 95% intervals overlap with {', '.join(overlapping)}"
        else:
            best_other = max(others, key=others.get)
            held = False if separated(mine, summary[best_other]["A_ci"]) else None
            if held is None:
                evidence += f"; {best_other} is higher, but the intervals overlap"
    return Finding("sequential SFT-then-RL reaches the highest ceiling of the paradigms", held, evidence)


def _end_of_budget_finding(summary: dict[str, Any], present: list[str]) -> Finding:
    """SFT-then-RL's score at the end of C against every other paradigm's: paired over the same
    problems where both last evaluations are kept (Pure-SFT, Syn-SFT-RL), else as measured."""
    finals = {k: summary[k]["final"] for k in present}
    evidence = "score at the end of the budget: " + ", ".join(f"{k} {v:.1f}" for k, v in finals.items())
    paired = {"Pure-SFT": summary.get("end_vs_pure_sft"), **(summary.get("end_vs_syn") or {})}
    paired = {k: v for k, v in paired.items() if v and k in finals}
    if paired:
        evidence += "; SFT-then-RL, paired over the same problems: " + "; ".join(_paired_text(k, v) for k, v in paired.items())
    z = {k: _z(v) for k, v in paired.items()}
    unpaired_above = [k for k in finals if k not in ("SFT-then-RL", *paired) and finals[k] > finals["SFT-then-RL"]]
    held: bool | None
    if unpaired_above or any(v <= -2 for v in z.values()):
        held = False
    elif any(v < 2 for v in z.values()):  # within two standard errors: cannot tell the two apart
        held = None
    else:
        held = True
    return Finding("at the matched compute budget, SFT-then-RL scores highest", held, evidence)


def _above_syn_finding(summary: dict[str, Any], syn: list[str]) -> Finding:
    """Held when SFT-then-RL ends above every synchronized method by more than 2 paired standard
    errors, did not hold when below any by more than 2, else inconclusive."""
    pairs = summary.get("end_vs_syn") or {}
    parts, z = [], {}
    for name in syn:
        if pairs.get(name):
            z[name] = _z(pairs[name])
            parts.append(_paired_text(name, pairs[name]))
        else:
            parts.append(f"minus {name}: no paired difference")
    held: bool | None
    if any(v < -2 for v in z.values()):
        held = False
    elif len(z) == len(syn) and all(v > 2 for v in z.values()):
        held = True
    else:
        held = None
    evidence = "end of the budget, SFT-then-RL " + "; ".join(parts) + " (over the same held-out problems)"
    return Finding(f"SFT-then-RL ends the budget above every Syn-SFT-RL method ({', '.join(syn)})", held, evidence)


def _stability_finding(summary: dict[str, Any]) -> Finding:
    srft, rl = summary["SRFT"]["scores"], summary["Pure-RL"]["scores"]
    a, b = fluctuation(srft), fluctuation(rl)
    algorithm = summary["Pure-RL"].get("algorithm") or PURE_RL_ALGORITHM
    claim = (f"SRFT's score fluctuates more than Pure-RL's ({algorithm}): std of successive evaluation differences "
             f"(the paper: {PAPER_FLUCTUATION_RATIO}x higher)")
    if a is None or b is None:
        return Finding(claim, None, f"too few evaluations to tell (SRFT {len(srft)}, Pure-RL {len(rl)}; at least 3 each)")
    ratio = a / b if b > 0 else (math.inf if a > 0 else math.nan)
    evidence = (f"sample std (ddof 1) of successive score differences, in points: SRFT {a:.2f} over {len(srft)} evaluations, "
                f"Pure-RL {b:.2f} over {len(rl)}; ratio {ratio:.2f}x (paper {PAPER_FLUCTUATION_RATIO}x)")
    return Finding(claim, True if a > b else False if a < b else None, evidence)


def plot_paradigms(path: Path, *, sft_x: list[float], sft_y: list[float], pure_sft_fit, branches, fits, title: str) -> Path:
    """Score against total compute x_sft + x_rl: Pure-SFT (black, dashed points) and each RL paradigm
    in its own colour, points and Eq. 11 / 12 fit (from its start); the legend names each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from npu_retu.report.plots import _compute_axis, _curve_xs, save_png

    totals = list(sft_x) + [b.sft_flops + x for b in branches for x in b.rl_flops]
    scale, axis_label = _compute_axis(totals or [1.0], "total compute x_sft + x_rl")
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(9, 5), dpi=120)
    try:
        if sft_x:
            label = "Pure-SFT" + ("" if pure_sft_fit is None else f" (A {pure_sft_fit.A:.1f})")
            ax.plot([x / scale for x in sft_x], sft_y, linestyle="--", color="black", marker=".", linewidth=1.0, label=label)
            if pure_sft_fit is not None:
                xs = _curve_xs(max(sft_x))
                ax.plot(xs / scale, pure_sft_fit.predict(xs), color="black", linewidth=1.5, alpha=0.6)
        for i, (branch, fit) in enumerate(zip(branches, fits)):
            c = colours(i % 10)
            xs_points = [(branch.sft_flops + x) / scale for x in branch.rl_flops]
            label = branch.name + ("" if fit is None else f" (A {fit.A:.1f})")
            ax.plot(xs_points, branch.scores, marker="o", markersize=4, color=c, linestyle=":" if fit is None else "none",
                    label=label)
            if fit is not None:
                xs = _curve_xs(max(fit.x))
                ax.plot((branch.sft_flops + xs) / scale, fit.predict(xs), color=c, linewidth=1.5)
        ax.legend(fontsize=8, loc="lower right", framealpha=0.9)
        ax.set_xlim(left=0)
        ax.set_xlabel(axis_label)
        ax.set_ylabel("score")
        ax.set_title(title)
        ax.grid(alpha=0.25)
        fig.tight_layout()
        path = save_png(fig, path)
    finally:
        plt.close(fig)
    return path


def _switch_reason(settings: ParadigmSettings, sft: dict[str, Any]) -> str:
    if not settings.switch_step:
        return "the phase monitor's pick: the lowest-loss Stable checkpoint"
    return (f"given by --switch-step; the phase monitor's pick on this run is step {sft['picked_step']}"
            + (", its last step, which would leave no compute for RL" if sft["picked_step"] == sft["steps"] else ""))


def _setup_lines(cfg: Config, settings: ParadigmSettings, sft, pick, x_sft, budget, stages: list[RLStage]) -> list[str]:
    chosen = settings.paradigms
    by = {s.paradigm: s for s in stages}
    lines = [
        f"* Budget C = {budget:.4g} FLOPs (Appendix C) = one SFT run of {settings.sft_steps} steps of {cfg.sft.global_batch_size} "
        f"on `{settings.sft_data}` from the embedded tiny Qwen2 base.",
        f"* Paradigms run: {', '.join(LABELS[p] for p in chosen)}"
        + ("." if chosen == PARADIGMS else
           f" (--paradigms; not run: {', '.join(LABELS[p] for p in PARADIGMS if p not in chosen)}; the SFT run always runs, as it sets C)."),
    ]
    if "pure-sft" in chosen:
        lines.append(f"* Pure-SFT: that run's checkpoints (every {settings.save_every} steps) scored on the held-out problems.")
    if "pure-rl" in chosen:
        lines.append(f"* Pure-RL: `{PURE_RL_ALGORITHM}` RL from the base model for all of C (the paper's §6.1 Pure-RL baseline is "
                     "GRPO / DAPO_d, and its stability claim compares SRFT with DAPO_d).")
    syn = [by[p] for p in SYN_ALGORITHMS if p in by]
    if syn:
        how = []
        for s in syn:
            algo = common.with_rl_algorithm(cfg, s.algorithm).rl.algo
            how.append(f"{s.label}: {algo.rollouts_per_prompt} rollouts + {algo.experts_per_prompt} expert trajectory per prompt, "
                       f"{algo.n} trained" if algo.experts == "mixed" else
                       f"{s.label}: {algo.n} rollouts per prompt, a group with at most {algo.gate} correct trains on its expert (SFT)")
        lines.append(
            f"* Syn-SFT-RL: {', '.join(f'`{s.algorithm}`' for s in syn)}, each from the base model for all of C, on "
            f"`{', '.join(syn[0].train_files)}` (the Pure-RL prompts in the same order, each with an expert trajectory), "
            f"everything else as Pure-RL but without dynamic sampling. {'; '.join(how)}."
        )
        if "upt" in by:
            lines.append(f"* UPT's learning rate: {by['upt'].lr:g} = {UPT_LR_RATIO:g}x the configured RL lr {cfg.rl.optim.lr:g} "
                         "(the paper's ratio: 5e-6 for UPT against 1e-6 for the others, Appendix B.2.1).")
    if "sft-then-rl" in chosen:
        lines.append(
            f"* SFT-then-RL: SFT to step {pick} ({_switch_reason(settings, sft)}, "
            f"x_sft = {x_sft:.4g} FLOPs, {sft['curve']['phases'][sft['curve']['steps'].index(pick)]} sub-phase), then "
            f"`{cfg.rl.algorithm}` RL (the configured algorithm; the paper's §6.1 ran SFT -> DAPO_d, its later sections DAPO_dc) "
            f"for the remaining {budget - x_sft:.4g} FLOPs."
        )
    e = cfg.eval
    lines += [
        f"* RL: `{', '.join(cfg.rl.train_files)}`, {cfg.rl.train_batch_prompts} prompts x {cfg.rl.algo.n} samples per step, "
        f"lr {cfg.rl.optim.lr}; every run stops at its share of C (`rl.max_flops`).",
        f"* Score: avg@{e.n} on the first {e.max_problems or 'all'} problems of `{', '.join(e.files)}` (T={e.temperature}, top-p {e.top_p}, "
        f"max {e.max_new_tokens or cfg.rl.max_response_length} new tokens, seed {e.seed}), in percent.",
        "* Fits: Eq. 11 with P_start fixed to each curve's measured start (Eq. 12 for SFT-then-RL), first 85% of points fit, "
        "modified z-score (tau 3.5) then LTS (alpha 0.85), 95% bootstrap interval for A.",
        "* Fluctuation: the sample standard deviation (ddof 1) of the differences of successive evaluation scores along an "
        "RL curve (§6.1's stability measure; differencing removes the trend).",
        f"* Smaller than the paper: a tiny model, `{settings.sft_data}`, a budget of minutes; Pure-RL without the GRPO run.",
    ]
    return lines


def _report(out, cfg, settings, sft, pick, x_sft, budget, sft_points, stages, rl_runs, rows, summary, pure_sft_fit,
            pure_sft_error, findings, seconds) -> Path:
    lines = header("Experiment: post-training paradigms at matched compute (paper §6.1)", common.command_line(),
                   common.environment_line(), seconds)
    lines += ["## Setup (miniature)", ""]
    lines += _setup_lines(cfg, settings, sft, pick, x_sft, budget, stages)
    lines += [
        "",
        "## Results",
        "",
        "| paradigm | algorithm | start | end of budget | best | ceiling A (95% CI) | compute used | fluctuation |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in (LABELS[p] for p in PARADIGMS):
        if name not in summary:
            continue
        s = summary[name]
        a = "n/a" if s["A"] is None or s["A"] != s["A"] else f"{s['A']:.1f} ({format_ci(s['A_ci'])})"
        f = fluctuation(s["scores"]) if name != "Pure-SFT" else None
        lines.append(f"| {name} | {s.get('algorithm') or '-'} | {s['start']:.1f} | {s['final']:.1f} | {s['best']:.1f} | {a} | "
                     f"{s['compute_used']:.3g} | {'-' if f is None else f'{f:.2f}'} |")
    lines += ["", "Fluctuation: std of successive evaluation differences, in points (RL curves; - with fewer than 3 evaluations)."]
    capped = [f"{LABELS[p]} ({r['steps']} steps, {r['flops_used']:.3g} of {r['max_flops']:.3g} FLOPs)"
              for p, r in rl_runs.items() if r["flops_used"] < r["max_flops"]]
    if capped:
        lines += ["", f"Stopped on the step cap before their share of the budget: {', '.join(capped)}."]
    if pure_sft_error:
        lines += ["", f"Pure-SFT fit failed: {pure_sft_error}"]
    elif pure_sft_fit is not None:
        lines += ["", f"Pure-SFT fit (Eq. 11 over SFT FLOPs): A {pure_sft_fit.A:.1f}, B {pure_sft_fit.B:.2f}, C_mid {pure_sft_fit.C_mid:.3g}, "
                  f"R² {pure_sft_fit.r2_fit:.2f}, RMSE val {pure_sft_fit.rmse_val if pure_sft_fit.rmse_val is None else round(pure_sft_fit.rmse_val, 2)}."]
    if sft_points:
        lines += ["", "Pure-SFT points (SFT checkpoints; step 0 is the base model):", "",
                  "| SFT step | FLOPs | score | ± s.e. |", "|---:|---:|---:|---:|"]
        for p in sft_points:
            lines.append(f"| {p['step']} | {p['flops']:.3g} | {100 * p['avg_at_n']:.1f} | {100 * p['avg_at_n_stderr']:.1f} |")
    if rows:
        lines += ["", "The RL curves as a plasticity table (cf. Table 4; rows with SFT data `- (...)` start from the base model):", ""]
        lines += table_section(rows)
    lines += ["![paradigms](paradigms.png)", ""]
    lines += findings_section(findings)
    lines += ["Files: `plasticity.csv`, `results.json` (every number above), `runs/` (the runs themselves; not committed).", ""]
    return write_text_atomic(out / "report.md", "\n".join(lines))
