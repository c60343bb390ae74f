"""scripts/gpu_check.sh: the plan it prints with --dry-run (on any machine), its refusal without a
CUDA device, and its argument errors. The run itself needs a GPU (see the script's header)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60, env=env)


def test_dry_run_prints_each_step_with_its_share_of_the_limit(tmp_path):
    out = tmp_path / "gc"
    r = run("--dry-run", "--time-limit", "500", "--carry", ".gpu", "--out", str(out))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"gpu_check plan: limit 500s, output {out}, carried files .gpu"
    steps = {m.group(1): (int(m.group(2)), m.group(3)) for m in (re.match(r"(\w+)\s+(\d+)s  (.*)", l) for l in lines[1:6]) if m}
    assert list(steps) == ["setup", "tests", "kernels", "vllm", "rl"]
    assert [s for s, _ in steps.values()] == [50, 100, 200, 50, 75]  # 10/20/40/10/15 % of 500 s
    assert "--no-index --no-deps --target $SITE .gpu/wheels/*.whl" in steps["setup"][1]
    assert "-m gpu" in steps["tests"][1] and "tests/test_kernels_gpu.py" in steps["tests"][1]
    kernels = steps["kernels"][1]
    assert "--shapes 3584:152064,3072:128256 --tokens 4096,8192,16384,32768 --dtype bfloat16,float32" in kernels
    assert f"--max-seconds 170 --out {out}/kernels.csv" in kernels  # its share less 30 s for the CSV
    assert "bench rollout --engines transformers,vllm" in steps["vllm"][1]
    assert "bench rl model.dtype=bfloat16" in steps["rl"][1]
    assert not out.exists()  # a plan writes nothing


def test_without_a_cuda_device_it_stops_with_one_line(tmp_path):
    r = run("--out", str(tmp_path / "gc"), "--time-limit", "60")
    assert r.returncode == 2
    assert r.stderr.strip() == "gpu_check: no CUDA device here (nvidia-smi and torch.cuda); use --dry-run to see the plan"
    assert not (tmp_path / "gc").exists()


def test_bad_arguments_are_one_line_errors():
    r = run("--time-limit", "ten")
    assert r.returncode == 2 and r.stderr.strip() == "gpu_check: --time-limit takes whole seconds, got 'ten'"
    r = run("--fast")
    assert r.returncode == 2 and r.stderr.strip() == "gpu_check: unknown argument '--fast' (see --help)"
    assert run("--help").stdout.startswith("One prepared check of npu-retu on a CUDA machine")
