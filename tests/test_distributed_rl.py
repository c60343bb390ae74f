"""Data-parallel RL: the update on 2 and 3 ranks (local engine and DeepSpeed ZeRO-2) equals the
single-process update on the same rollouts; a 2-rank RL run through the Ray driver trains,
evaluates over all problems and checkpoints."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from npu_retu.distributed.process_group import free_port

pytest.importorskip("ray", reason="needs Ray: pip install 'npu-retu[distributed]'")
pytest.importorskip("deepspeed", reason="needs DeepSpeed: pip install 'npu-retu[distributed]'")

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "rl_update_rank.py"


def run_update(out: Path, world_size: int, engine: str) -> dict:
    port = free_port()
    procs = []
    for rank in range(world_size):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(out), engine], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for rank, proc in enumerate(procs):
        text, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"rank {rank}:\n{text}"
    import torch

    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return run_update(tmp_path_factory.mktemp("rl1") / "out.pt", 1, "local")


@pytest.mark.parametrize("world_size,engine", [(2, "local"), (3, "local"), (2, "deepspeed")])
def test_data_parallel_update_equals_single_process(tmp_path, single, world_size, engine):
    import torch

    result = run_update(tmp_path / "out.pt", world_size, engine)
    # the gradient: its norm before clipping (Adam's update is blind to a gradient's scale, so a
    # wrongly normalised loss shows here, not in the weights) and the mini-batch loss
    for row_single, row in zip(single["metrics"], result["metrics"]):
        for key in ("actor/pg_loss", "actor/grad_norm", "actor/entropy", "actor/clipfrac", "actor/logprob_drift",
                    "actor/advantage_abs_mean"):
            assert row[key] == pytest.approx(row_single[key], rel=1e-5, abs=1e-7), key
    assert single["metrics"][0]["actor/grad_norm"] > 0.1
    # the weights after two AdamW steps of lr 0.05 (Adam eps 1e-3, so float noise in near-zero
    # gradient entries is not blown up to a whole step): equal to 1e-5, 0.02 % of one step
    for name, expected in single["weights"].items():
        got = result["weights"][name]
        assert torch.allclose(got, expected, atol=1e-5, rtol=0), f"{name}: max diff {(got - expected).abs().max():.2e}"


def test_two_rank_rl_run_through_the_ray_driver(tmp_path):
    """2 CPU workers on a local Ray instance run GRPO for 2 steps: rank 0 logs the whole generation
    batch (both ranks' groups), evaluates all problems (each rank scored half) and checkpoints.
    The job runs in its own process (tests/ray_job.py says why), as `npu-retu rl ...
    cluster.launcher=ray` does."""
    cfg = tmp_path / "rl2.yaml"
    cfg.write_text("run: {name: rl2}\n")
    overrides = [
        f"run.output_dir={tmp_path}", "run.seed=5", "run.progress=false", "run.device=cpu",
        "model.path=embedded:base", "rl.train_files=[embedded:rl-easy-200]", "rl.algorithm=grpo",
        "rl.train_batch_prompts=4", "rl.gen_batch_prompts=4", "rl.mini_batch_prompts=2", "rl.micro_batch_size=4",
        "rl.algo.n=4", "rl.max_response_length=24", "rl.max_steps=2", "rl.eval_every=2", "rl.eval_at_start=false",
        "rl.save_every=2", "rl.reward.num_workers=1",
        "eval.files=[embedded:rl-test]", "eval.n=1", "eval.max_problems=5", "eval.max_new_tokens=16", "eval.ks=[1]",
        "cluster.launcher=ray", "cluster.ray_address=local", "cluster.num_workers=2",
    ]
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "ray_job.py"), "rl", "--config", str(cfg), *overrides],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    compute = re.search(r"^steps: 2, RL compute: (\S+) FLOPs", proc.stdout, re.M)
    assert compute and float(compute.group(1)) > 0, proc.stdout
    assert "ray initialized after the job: False" in proc.stdout
    run_dir = tmp_path / "rl2"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "rollout/accuracy" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert r["ds/groups_generated"] == 4  # 4 prompts: 2 generated on each rank, gathered
        assert r["reward/scored"] == 16  # 16 responses scored over both ranks' reward pools
    evals = json.loads((run_dir / "evals.json").read_text())
    assert [e["step"] for e in evals] == [2]
    assert evals[0]["num_problems"] == 5  # problems 0, 2, 4 on rank 0 and 1, 3 on rank 1
    point = json.loads((run_dir / "eval" / "step-000002.json").read_text())
    assert len(point["scores"]) == 5 and all(len(row) == 1 for row in point["scores"])
    assert (run_dir / "checkpoints" / "step-000002" / "model.safetensors").is_file()
