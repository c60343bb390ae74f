"""MFU as PaLM defines it (npu_retu.flops.step_mfu): the job's achieved FLOP/s over the peak of all its
chips, so the same work per chip gives the same MFU on 1, 2 or 4 ranks; the trainers log it per step
(``train/mfu``) from the step's FLOPs over all ranks, and a 2-rank gloo job divides by both chips."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from npu_retu.config import load_config
from npu_retu.device.backend import Backend
from npu_retu.distributed.process_group import free_port
from npu_retu.errors import UserError
from npu_retu.flops import mfu, step_mfu
from npu_retu.report.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
PEAK = 2.5e9  # a stand-in chip peak (FLOP/s): a CPU has none in the chip table, so no MFU is logged there


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_mfu_does_not_grow_with_world_size_for_the_same_work_per_rank(world_size):
    per_rank_flops, seconds, peak = 3.0e13, 2.0, 989.4e12  # an H100's bf16 peak
    # data parallel: every rank does its share in the same wall time; the step's FLOPs are all ranks'
    job_mfu = step_mfu(world_size * per_rank_flops, seconds, peak, world_size)
    assert job_mfu == pytest.approx(per_rank_flops / (seconds * peak), rel=1e-12)  # 1.516 %: one chip's MFU
    assert job_mfu == pytest.approx(0.015160703456640, rel=1e-12)
    # one chip's peak as the denominator (the old trainer line) reads world_size times higher
    assert mfu(world_size * per_rank_flops, seconds, peak) == pytest.approx(world_size * job_mfu, rel=1e-12)


def test_mfu_of_a_fixed_job_split_over_more_chips_is_unchanged_at_linear_speed_up():
    total = 8.0e15
    assert [step_mfu(total, 4.0 / n, 313e12, n) for n in (1, 2, 4)] == pytest.approx([total / (4.0 * 313e12)] * 3, rel=1e-12)


def test_no_mfu_without_a_peak_and_bad_counts_are_refused():
    assert step_mfu(1e12, 1.0, None, 1) is None  # a CPU: no peak in the chip table, nothing claimed
    with pytest.raises(UserError, match="num_chips must be >= 1"):
        step_mfu(1e12, 1.0, 1e12, 0)
    with pytest.raises(UserError, match="seconds must be > 0"):
        step_mfu(1e12, 0.0, 1e12, 1)


def test_cpu_backend_has_no_peak_so_a_cpu_run_logs_no_mfu():
    from npu_retu.device import get_backend

    backend = get_backend()
    if backend.is_accelerator:
        pytest.skip("an accelerator is present")
    assert backend.peak_flops("float32") is None


def sft_overrides(out: Path, name: str) -> list[str]:
    return [
        f"run.output_dir={out}", f"run.name={name}", "run.progress=false", "run.device=cpu", "run.loggers=[jsonl]",
        "data.train_files=[embedded:sft-uniform-500]", "data.max_length=320", "sft.global_batch_size=8",
        "sft.micro_batch_size=2", "sft.max_steps=2", "sft.eval_every=100", "sft.save_every=100", "monitor.enabled=false",
    ]


def assert_mfu_rows(rows: list[dict], world_size: int, count: int) -> None:
    train = [r for r in rows if "train/step_flops" in r]
    assert len(train) == count
    for r in train:
        assert r["train/mfu"] == pytest.approx(r["train/step_flops"] / (r["time/step_s"] * world_size * PEAK), rel=1e-12)


def test_sft_and_rl_log_mfu_per_step_from_the_step_flops_and_wall_time(tmp_path, monkeypatch):
    from test_rl_trainer import DigitReward, rl_overrides

    from npu_retu.trainer.rl import train_rl
    from npu_retu.trainer.sft import train_sft

    monkeypatch.setattr(Backend, "peak_flops", lambda self, dtype="bf16": PEAK)
    result = train_sft(load_config(None, sft_overrides(tmp_path, "sft")), quiet=True)
    assert_mfu_rows(read_metrics(result.run_dir / "metrics.jsonl"), 1, 2)
    rl = train_rl(load_config(None, rl_overrides(tmp_path, "rl", **{"rl.max_steps": 2, "rl.save_every": 2})),
                  quiet=True, reward=DigitReward(), save_checkpoints=False)
    rows = read_metrics(rl.run_dir / "metrics.jsonl")
    assert_mfu_rows(rows, 1, 2)  # the whole RL step: generation (forward) + update, Eq. 22


RANK_SCRIPT = """
import sys
from npu_retu.device.backend import Backend
Backend.peak_flops = lambda self, dtype="bf16": {peak!r}  # a stand-in chip, as on an accelerator
from npu_retu.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_two_gloo_ranks_divide_the_step_flops_by_both_chips_peak(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT.format(peak=PEAK))
    config = tmp_path / "two.yaml"
    config.write_text("run: {seed: 0}\n")  # the defaults, as load_config(None) has them; the overrides do the rest
    cmd = [sys.executable, str(script), "sft", "--config", str(config), *sft_overrides(tmp_path, "two")]
    port = free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outs)
    assert "2 ranks (gloo)" in outs[0]
    rows = read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert_mfu_rows(rows, 2, 2)
    # the numerator is the whole step's FLOPs (both ranks' micro-batches): what one process counts
    # for the same step, so only the denominator grows with the ranks
    from npu_retu.trainer.sft import train_sft

    one = train_sft(load_config(None, sft_overrides(tmp_path, "one")), quiet=True)
    flops_one = [r["train/step_flops"] for r in read_metrics(one.run_dir / "metrics.jsonl") if "train/step_flops" in r]
    assert [r["train/step_flops"] for r in rows if "train/step_flops" in r] == pytest.approx(flops_one, rel=1e-12)


def test_bench_sft_and_rl_report_the_mfu(tmp_path, monkeypatch, capsys):
    import argparse

    from npu_retu.bench.rl import bench_rl
    from npu_retu.bench.sft import bench_sft

    monkeypatch.setattr(Backend, "peak_flops", lambda self, dtype="bf16": PEAK)
    sft = bench_sft(argparse.Namespace(
        config="demo_cpu", steps=2, warmup=1, out=str(tmp_path / "sft.json"),
        overrides=["sft.global_batch_size=8", "sft.micro_batch_size=4", "data.train_files=[embedded:sft-uniform-500]"]))
    assert sft["mfu"] == pytest.approx(sft["achieved_flops_per_s"] / PEAK, rel=1e-12)
    assert f"MFU         {100 * sft['mfu']:.1f} % of" in capsys.readouterr().out
    rl = bench_rl(argparse.Namespace(
        config="demo_cpu", steps=1, warmup=1, out=str(tmp_path / "rl.json"), model=None,
        overrides=["rl.train_files=[embedded:rl-easy-200]", "rl.train_batch_prompts=4", "rl.gen_batch_prompts=4",
                   "rl.mini_batch_prompts=2", "rl.micro_batch_size=4", "rl.algo.n=4", "rl.algo.max_draws=1",
                   "rl.max_response_length=16"]))
    saved = json.loads((tmp_path / "rl.json").read_text())
    assert saved["mfu_median"] == rl["mfu_median"] and saved["peak_flops_per_chip"] == PEAK
    # one timed step: its train/mfu is that step's FLOPs over its wall time and the peak
    assert rl["mfu_median"] == pytest.approx(rl["step_flops_median"] / (rl["step_s_median"] * PEAK), rel=1e-12)
    assert f"MFU (median): {100 * rl['mfu_median']:.2f} %" in capsys.readouterr().out
