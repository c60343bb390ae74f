"""SFT resumes exactly after SIGKILL: the same per-step losses as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def sft_config(tmp_path: Path, name: str) -> Path:
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(
        f"""
run: {{name: {name}, output_dir: "{tmp_path}", seed: 3, progress: false}}
model: {{path: "embedded:base"}}
data: {{train_files: ["embedded:sft-uniform-1k"], val_files: ["embedded:sft-val"], max_length: 320}}
sft: {{global_batch_size: 8, micro_batch_size: 4, max_steps: 12, eval_every: 4, save_every: 4, eval_batch_size: 64,
      optim: {{lr: 1.0e-3, warmup_steps: 3, schedule: cosine, min_lr_ratio: 0.1}}}}
monitor: {{stop_on_decision: false}}
"""
    )
    return cfg


def run_sft(cfg: Path, *extra: str, env_extra=None, wait=True):
    env = dict(os.environ, **(env_extra or {}))
    cmd = [sys.executable, "-m", "npu_retu", "sft", "--config", str(cfg), *extra]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if wait:
        out, _ = proc.communicate(timeout=600)
        return proc.returncode, out
    return proc


def train_losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    losses = {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}
    steps = [r["step"] for r in rows if "train/loss" in r]
    assert len(steps) == len(set(steps)), "a step was logged twice after resume"
    return losses


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    rc, out = run_sft(sft_config(tmp, "ref"))
    assert rc == 0, out
    losses = train_losses(tmp / "ref")
    assert sorted(losses) == list(range(1, 13))
    return losses


def test_sigkill_mid_training_then_resume_matches(tmp_path, reference):
    cfg = sft_config(tmp_path, "killed")
    proc = run_sft(cfg, wait=False)
    ckpt = tmp_path / "killed" / "checkpoints" / "step-000008"
    deadline = time.time() + 300
    while not ckpt.is_dir() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert ckpt.is_dir(), proc.stdout.read() if proc.poll() is not None else "no checkpoint at step 8"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    rc, out = run_sft(cfg, "--resume")
    assert rc == 0, out
    assert "resumed from" in out
    resumed = train_losses(tmp_path / "killed")
    assert sorted(resumed) == list(range(1, 13))
    for step in range(1, 13):
        assert resumed[step] == pytest.approx(reference[step], rel=0, abs=1e-6), f"step {step}"


def test_half_written_checkpoint_is_never_resumed(tmp_path, reference, kill_during_save):
    cfg = sft_config(tmp_path, "halfsaved")
    rc, out = run_sft(cfg, env_extra=kill_during_save(8))
    assert rc == -signal.SIGKILL, out
    root = tmp_path / "halfsaved" / "checkpoints"
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["step-000004"]
    assert any(p.name.startswith(".tmp-step-000008") for p in root.iterdir())
    rc, out = run_sft(cfg, "--resume")
    assert rc == 0, out
    assert "step-000004 (step 4)" in out
    resumed = train_losses(tmp_path / "halfsaved")
    for step in range(1, 13):
        assert resumed[step] == pytest.approx(reference[step], rel=0, abs=1e-6), f"step {step}"
    assert not any(p.name.startswith(".tmp-") for p in root.iterdir())
