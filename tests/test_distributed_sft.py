"""Distributed SFT: the Ray driver with 2 CPU workers, and DeepSpeed ZeRO on 2 gloo processes, both
give the single-process run's per-step losses (the update is the same: every rank trains on its
share of the step's micro-batches and the loss is normalised by the step's global token count)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from npu_retu.distributed.process_group import free_port

# `make test` installs the [distributed] extra; a bare `pytest` without it says what is missing
pytest.importorskip("ray", reason="needs Ray: pip install 'npu-retu[distributed]'")
pytest.importorskip("deepspeed", reason="needs DeepSpeed: pip install 'npu-retu[distributed]'")

REPO = Path(__file__).resolve().parents[1]
STEPS = 4


def write_config(tmp_path: Path, name: str, steps: int = STEPS) -> Path:
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(
        f"""
run: {{name: {name}, output_dir: "{tmp_path}", seed: 3, progress: false, device: cpu}}
model: {{path: "embedded:base"}}
data: {{train_files: ["embedded:sft-uniform-500"], val_files: ["embedded:sft-val"], max_length: 320}}
sft: {{global_batch_size: 8, micro_batch_size: 2, max_steps: {steps}, eval_every: 2, save_every: 2, eval_batch_size: 64,
      optim: {{lr: 1.0e-3, warmup_steps: 2, schedule: cosine, min_lr_ratio: 0.1}}}}
monitor: {{stop_on_decision: false}}
"""
    )
    return cfg


def sft_command(cfg: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "npu_retu", "sft", "--config", str(cfg), *overrides]


def run(cmd: list[str], env_extra: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def run_ranks(cmd: list[str], world_size: int, timeout: int = 900) -> list[subprocess.CompletedProcess]:
    """Start ``world_size`` copies of ``cmd`` as the ranks of one job (what torchrun does)."""
    port = free_port()
    procs = []
    for rank in range(world_size):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(cmd, proc.returncode, out, ""))
    return results


def metrics(run_dir: Path, key: str) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r[key] for r in rows if key in r}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The single-process run with the local engine."""
    tmp = tmp_path_factory.mktemp("reference")
    proc = run(sft_command(write_config(tmp, "ref")))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    losses = metrics(tmp / "ref", "train/loss")
    assert sorted(losses) == list(range(1, STEPS + 1))
    return {"loss": losses, "val": metrics(tmp / "ref", "val/loss"), "run_dir": tmp / "ref"}


def assert_same_losses(run_dir: Path, reference, tol: float) -> None:
    losses = metrics(run_dir, "train/loss")
    assert sorted(losses) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert losses[step] == pytest.approx(reference["loss"][step], abs=tol), f"train loss at step {step}"
    for step, val in metrics(run_dir, "val/loss").items():
        assert val == pytest.approx(reference["val"][step], abs=tol), f"validation loss at step {step}"
    # the losses do move: a run that did not train would not match a reference that does
    assert reference["loss"][STEPS] < reference["loss"][1] - 0.2


# ------------------------------------------------------------------------------------------------
# Ray: a local cluster, 2 CPU workers placed by the same driver a cluster uses. Each job runs in its
# own process (tests/ray_job.py says why), as `npu-retu sft ... cluster.launcher=ray` does.

RAY_JOB = REPO / "tests" / "ray_job.py"  # the CLI in a process of its own; says whether Ray is still up


def run_ray_job(cfg: Path, *overrides: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """`npu-retu sft --config cfg` on 2 workers of a private Ray instance, in a new process."""
    cmd = [sys.executable, str(RAY_JOB), "sft", "--config", str(cfg),
           "cluster.launcher=ray", "cluster.ray_address=local", "cluster.num_workers=2", *overrides]
    return run(cmd, env_extra=env_extra)


def test_ray_driver_two_cpu_workers_match_single_process(tmp_path, reference):
    proc = run_ray_job(write_config(tmp_path, "ray"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"run folder: {tmp_path / 'ray'}" in proc.stdout and f"steps: {STEPS}," in proc.stdout
    assert_same_losses(tmp_path / "ray", reference, tol=1e-5)
    # the HF checkpoint written by rank 0 loads, and rank 1 wrote nothing of its own
    checkpoints = sorted(p.name for p in (tmp_path / "ray" / "checkpoints").iterdir())
    assert checkpoints == ["step-000002", "step-000004"]
    # clean shutdown: the driver stopped the Ray instance it started
    assert "ray initialized after the job: False" in proc.stdout


def test_ray_worker_failure_reports_its_traceback_without_hanging(tmp_path):
    import time

    # the ranks cannot read their data: the first rank to raise ends the job with its traceback
    start = time.monotonic()
    proc = run_ray_job(write_config(tmp_path, "fail"), "cluster.timeout_s=600",
                       f"data.train_files=[{tmp_path / 'missing-rank-data.jsonl'}]")
    assert time.monotonic() - start < 120  # far below the 600 s collective timeout
    assert proc.returncode == 2, proc.stdout + proc.stderr  # a user error, reported as one
    message = proc.stderr
    assert "npu-retu sft: error: rank " in message and " of 2 failed:" in message
    # the worker's own frames and exception, not just Ray's wrapper
    assert 'npu_retu/trainer/sft.py", line' in message and "in load_sft_data" in message
    assert "UserError: file or folder not found" in message and "missing-rank-data.jsonl" in message
    assert "ray initialized after the job: False" in proc.stdout


def test_ray_rank_killed_mid_job_ends_the_job_instead_of_hanging(tmp_path, kill_during_save):
    import time

    # rank 0 is SIGKILLed while writing checkpoint 2; rank 1 waits for it at a barrier, which only
    # the 600 s collective timeout would end: the driver must notice the dead rank and stop the job
    start = time.monotonic()
    proc = run_ray_job(write_config(tmp_path, "killed"), "cluster.timeout_s=600",
                       env_extra=kill_during_save(2))
    assert time.monotonic() - start < 180
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "npu-retu sft: error: rank 0 of 2 died" in proc.stderr
    assert "ray initialized after the job: False" in proc.stdout


# ------------------------------------------------------------------------------------------------
# DeepSpeed ZeRO on 2 CPU processes over gloo


def test_deepspeed_zero2_two_gloo_ranks_match_single_process(tmp_path, reference):
    cfg = write_config(tmp_path, "zero2")
    results = run_ranks(sft_command(cfg, "engine.name=deepspeed", "engine.zero_stage=2"), world_size=2)
    for rank, proc in enumerate(results):
        assert proc.returncode == 0, f"rank {rank}:\n{proc.stdout}"
    assert "engine deepspeed, 2 ranks (gloo)" in results[0].stdout
    assert_same_losses(tmp_path / "zero2", reference, tol=1e-5)
    state = tmp_path / "zero2" / "checkpoints" / "step-000004" / "deepspeed" / "state"
    # ZeRO-2 shards the optimizer states: one file per rank
    assert sorted(p.name for p in state.glob("*optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]

    # exact resume: drop the last checkpoint, resume from step 2, steps 3-4 repeat to the digit
    full = metrics(tmp_path / "zero2", "train/loss")
    shutil.rmtree(tmp_path / "zero2" / "checkpoints" / "step-000004")
    results = run_ranks(sft_command(cfg, "engine.name=deepspeed", "engine.zero_stage=2", "--resume"), world_size=2)
    for rank, proc in enumerate(results):
        assert proc.returncode == 0, f"rank {rank}:\n{proc.stdout}"
    assert "resumed from" in results[0].stdout
    resumed = metrics(tmp_path / "zero2", "train/loss")
    for step in (3, 4):
        assert resumed[step] == pytest.approx(full[step], abs=1e-6), f"step {step} after resume"


@pytest.mark.slow
def test_deepspeed_zero3_exports_a_loadable_hf_checkpoint(tmp_path, reference):
    import torch
    from transformers import AutoModelForCausalLM

    cfg = write_config(tmp_path, "zero3")
    results = run_ranks(sft_command(cfg, "engine.name=deepspeed", "engine.zero_stage=3"), world_size=2)
    for rank, proc in enumerate(results):
        assert proc.returncode == 0, f"rank {rank}:\n{proc.stdout}"
    assert_same_losses(tmp_path / "zero3", reference, tol=1e-5)
    # the gathered weights equal the single-process run's weights at the same step
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "zero3" / "checkpoints" / "step-000004")
    theirs = AutoModelForCausalLM.from_pretrained(reference["run_dir"] / "checkpoints" / "step-000004")
    for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-5), name


@pytest.mark.slow
@pytest.mark.parametrize("name,override", [
    # ZeRO-Offload: optimizer states and the AdamW step on the host (DeepSpeed's CPU Adam, built on
    # first use), the same update as torch AdamW
    ("offload", "engine.offload_optimizer=cpu"),
    # the paper configs' fused loss: log-probs from the fused kernel, no full logits
    ("fused", "sft.kernels=auto"),
])
def test_deepspeed_zero2_variants_match_single_process(tmp_path, reference, name, override):
    cfg = write_config(tmp_path, name)
    results = run_ranks(sft_command(cfg, "engine.name=deepspeed", "engine.zero_stage=2", override), world_size=2)
    for rank, proc in enumerate(results):
        assert proc.returncode == 0, f"rank {rank}:\n{proc.stdout}"
    assert_same_losses(tmp_path / name, reference, tol=1e-5)
