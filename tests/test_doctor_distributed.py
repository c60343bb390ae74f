"""`npu-retu doctor` beyond the device: the all-reduce across spawned ranks (gloo on CPU, for real),
its failure paths (a hung rank, a rank that errors, a rank that dies), the Ray probe (no Ray, no
cluster, an unreachable address, a real local cluster), and the versions of the whole stack with
the driver tools' output parsed from injected text for the CUDA and NPU branches.

The per-rank functions below are module-level so that a spawned process can import them.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import pytest

import npu_retu.device as device_package
import npu_retu.device.backend as backend_module
from npu_retu import doctor
from npu_retu.commands import doctor as doctor_command
from npu_retu.device import Backend, detect_backend
from npu_retu.report.doctor_text import doctor_text

STACK_KEYS = [
    "python", "torch", "torch_npu", "cann", "cuda",
    "triton", "triton-ascend", "vllm", "vllm-ascend", "deepspeed", "mindspeed", "ray",
    "transformers", "tokenizers", "safetensors", "math-verify", "numpy", "scipy",
]

NVIDIA_SMI = "550.54.15\n550.54.15\n"
NPU_SMI = """\
+------------------------------------------------------------------------------------------------+
| npu-smi 23.0.6                   Version: 23.0.6                                               |
+---------------------------+---------------+----------------------------------------------------+
| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
| Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
+===========================+===============+====================================================+
| 0     910B2               | OK            | 93.7        36                0    / 0             |
| 0                         | 0000:C1:00.0  | 0           0    / 0          3379 / 65536         |
+===========================+===============+====================================================+
"""


# ------------------------------------------------------------------------------------------------
# per-rank functions for the failure paths (run in spawned processes)


def _sleeping_worker(backend_name, rank, world_size, port, timeout_s, results):
    time.sleep(120)  # a rank stuck in the rendezvous: the doctor must not wait for it


def _raising_worker(backend_name, rank, world_size, port, timeout_s, results):
    if rank == 1:
        results.put({"rank": rank, "error": "RuntimeError: the collectives library failed to load"})
        return
    time.sleep(120)  # rank 0 would now wait for rank 1 forever


def _crashing_worker(backend_name, rank, world_size, port, timeout_s, results):
    if rank == 0:
        os._exit(3)  # dies without a word, as a segfaulting runtime would
    time.sleep(120)


# ------------------------------------------------------------------------------------------------
# fakes


class FakeAccelerator:
    def __init__(self, name: str, count: int):
        self.name, self.count = name, count

    def device_count(self):
        return self.count

    def current_device(self):
        return 0

    def get_device_name(self, index=None):
        return self.name

    def is_bf16_supported(self):
        return True


def fake_npu_backend(count: int = 8) -> Backend:
    fake_torch = SimpleNamespace(__version__="2.5.1", version=SimpleNamespace(cuda=None))
    torch_npu = SimpleNamespace(__version__="2.5.1.post1", version=SimpleNamespace(cann="8.0.RC3"))
    return Backend("npu", torch_module=fake_torch, accelerator=FakeAccelerator("Ascend910B2", count), extension=torch_npu)


def fake_cuda_backend(count: int = 4) -> Backend:
    fake_torch = SimpleNamespace(__version__="2.5.1+cu124", version=SimpleNamespace(cuda="12.4"))
    return Backend("cuda", torch_module=fake_torch, accelerator=FakeAccelerator("NVIDIA H100 80GB HBM3", count))


def fake_metadata(monkeypatch, missing=(), versions=None):
    """importlib.metadata.version that reports ``missing`` as absent and ``versions`` as given."""
    real = importlib.metadata.version
    versions = versions or {}

    def version(name):
        if name in missing:
            raise importlib.metadata.PackageNotFoundError(name)
        return versions.get(name) or real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)


def run_doctor(monkeypatch, *argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    doctor_command.add_arguments(parser)
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    code = doctor_command.run(parser.parse_args(list(argv)))
    return code, out.getvalue()


def no_device_checks(monkeypatch):
    """Skip the matmul and kernel checks (tested in test_device.py) to keep these tests short."""
    monkeypatch.setattr(doctor, "device_checks", lambda backend: [])


def foreign_ray_cluster() -> bool:
    """A Ray cluster someone else runs on this machine would answer 'auto'."""
    try:
        from ray._private.services import find_gcs_addresses

        return bool(find_gcs_addresses())
    except Exception:
        return False


# ------------------------------------------------------------------------------------------------
# the all-reduce


def test_doctor_runs_a_real_gloo_all_reduce(monkeypatch, capfd):
    fake_metadata(monkeypatch, missing={"vllm"})
    parser = argparse.ArgumentParser()
    doctor_command.add_arguments(parser)
    start = time.perf_counter()
    code = doctor_command.run(parser.parse_args(["--device", "cpu", "--json", "--skip-ray"]))
    # read at the file-descriptor level: the spawned ranks share it, and must print nothing there
    report = json.loads(capfd.readouterr().out)
    assert code == 0 and report["ok"] is True
    # the device checks come first, as before; the all-reduce is the last check
    assert report["checks"][0]["name"] == "matmul 64x64 float32"
    reduce = report["checks"][-1]
    assert reduce["name"] == "all-reduce (gloo, 2 ranks)" and reduce["ok"] is True
    assert reduce["result"] == [3.0, 3.0] and reduce["expected"] == 3
    assert reduce["device"] == "cpu" and 0 < reduce["all_reduce_s"] < reduce["seconds"]
    assert report["ray"]["status"] == "skipped"
    # the versions of the stack: a fixed list, null for what is missing
    assert list(report["versions"]) == STACK_KEYS
    assert report["versions"]["vllm"] is None and report["versions"]["numpy"] == importlib.metadata.version("numpy")

    lines = doctor_text(report).splitlines()
    assert "  vllm             not installed" in lines
    assert any(line.startswith("  all-reduce (gloo, 2 ranks)") and "= 3 on every rank (expected 3)" in line
               and line.endswith("  ok") for line in lines)
    assert time.perf_counter() - start < 40


def test_a_hung_rank_fails_the_check_within_the_timeout():
    start = time.perf_counter()
    check = doctor.collective_check(detect_backend("cpu"), timeout_s=3, worker=_sleeping_worker)
    elapsed = time.perf_counter() - start
    assert check["ok"] is False and check["result"] is None
    assert check["error"].startswith("timed out after 3 s: ranks 0, 1 did not answer")
    assert 3 <= elapsed < 3 + 8


def test_a_rank_that_reports_an_error_ends_the_check_at_once():
    start = time.perf_counter()
    check = doctor.collective_check(detect_backend("cpu"), timeout_s=60, worker=_raising_worker)
    assert check["ok"] is False
    assert check["error"] == "rank 1: RuntimeError: the collectives library failed to load"
    assert time.perf_counter() - start < 20  # well before the 60 s timeout


def test_a_rank_that_dies_ends_the_check_at_once():
    start = time.perf_counter()
    check = doctor.collective_check(detect_backend("cpu"), timeout_s=60, worker=_crashing_worker)
    assert check["ok"] is False and check["error"] == "rank 0 exited with code 3 without an answer"
    assert time.perf_counter() - start < 20


def test_world_size_follows_the_devices_and_the_option():
    assert doctor.collective_world_size(detect_backend("cpu")) == 2
    assert doctor.collective_world_size(detect_backend("cpu"), 3) == 3
    npu = fake_npu_backend(count=8)
    assert doctor.collective_world_size(npu) == 8
    assert doctor.collective_world_size(npu, 4) == 4
    assert doctor.collective_world_size(npu, 16) == 8  # capped by the visible devices
    check = doctor.collective_check(fake_npu_backend(count=0))
    assert check["ok"] is False and check["name"] == f"all-reduce ({npu.dist_backend}, 0 ranks)"
    assert check["error"] == f"no visible {npu.device_type} device to run it on"


def test_skip_collectives_and_bad_options(monkeypatch, capsys):
    no_device_checks(monkeypatch)
    code, text = run_doctor(monkeypatch, "--device", "cpu", "--json", "--skip-collectives", "--skip-ray")
    report = json.loads(text)
    assert code == 0 and report["checks"] == [] and report["ray"]["status"] == "skipped"
    parser = argparse.ArgumentParser()
    doctor_command.add_arguments(parser)
    for bad in (["--world-size", "0"], ["--collective-timeout", "-1"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    assert "must be" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# ray


def test_no_ray_cluster_is_information(monkeypatch):
    if foreign_ray_cluster():
        pytest.skip("a Ray cluster is running on this machine: 'auto' would find it")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    no_device_checks(monkeypatch)
    code, text = run_doctor(monkeypatch, "--device", "cpu", "--skip-collectives")
    assert code == 0
    lines = text.splitlines()
    assert lines[lines.index("ray"):lines.index("checks")] == [
        "ray",
        "  address          auto",
        "  status           no running Ray cluster (start one with scripts/launch.sh)",
    ]


def test_no_ray_cluster_report_with_the_probe_answer_recorded(monkeypatch):
    """The same report from Ray's own answer when nothing runs (deterministic where other Ray
    instances run on the machine and the test above must skip)."""
    answer = {"status": "unreachable", "error": "Could not find any running Ray instance. Please specify the one "
              "to connect to by setting `--address` flag or `RAY_ADDRESS` environment variable."}
    asked = []
    monkeypatch.setattr(doctor, "_run_ray_probe", lambda *a: asked.append(a) or answer)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    no_device_checks(monkeypatch)
    code, text = run_doctor(monkeypatch, "--device", "cpu", "--skip-collectives", "--json")
    report = json.loads(text)
    assert asked == [("auto", None, doctor.RAY_TIMEOUT_S)]  # CPU: no device resource to count
    assert code == 0 and report["checks"] == []
    assert report["ray"]["message"] == "no running Ray cluster (start one with scripts/launch.sh)"


def test_an_unreachable_ray_address_from_the_environment_is_information(monkeypatch):
    """$RAY_ADDRESS is a default, not a request: only --ray-address makes a dead cluster a failure."""
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    no_device_checks(monkeypatch)
    start = time.perf_counter()
    code, text = run_doctor(monkeypatch, "--device", "cpu", "--skip-collectives", "--json", "--ray-timeout", "6")
    report = json.loads(text)
    assert code == 0 and report["checks"] == []
    assert (report["ray"]["address"], report["ray"]["explicit"], report["ray"]["status"]) == ("127.0.0.1:1", False, "no cluster")
    assert report["ray"]["message"].startswith("no running Ray cluster (start one with scripts/launch.sh); ray said: ")
    assert time.perf_counter() - start < 6 + 3


def test_ray_not_installed_is_information(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    no_device_checks(monkeypatch)
    code, text = run_doctor(monkeypatch, "--device", "cpu", "--skip-collectives")
    assert code == 0
    assert "  status           not installed (pip install 'npu-retu[distributed]')" in text.splitlines()
    # asked for a cluster by address, a missing Ray is a failure
    code, text = run_doctor(monkeypatch, "--device", "cpu", "--skip-collectives", "--json", "--ray-address", "10.0.0.1:6379")
    report = json.loads(text)
    assert code == 1 and report["checks"][-1]["name"] == "ray connect 10.0.0.1:6379"
    assert report["checks"][-1]["error"] == "ray not installed (pip install 'npu-retu[distributed]')"


def test_an_explicit_unreachable_address_fails_quickly(monkeypatch):
    no_device_checks(monkeypatch)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # the option wins over the environment
    start = time.perf_counter()
    code, text = run_doctor(monkeypatch, "--device", "cpu", "--skip-collectives", "--ray-address", "127.0.0.1:1",
                            "--ray-timeout", "8")
    elapsed = time.perf_counter() - start
    assert code == 1
    failed = [line for line in text.splitlines() if line.startswith("  ray connect 127.0.0.1:1")]
    assert len(failed) == 1 and failed[0].endswith("FAILED") and "cannot connect to 127.0.0.1:1" in failed[0]
    assert elapsed < 8 + 3


def test_a_real_local_ray_cluster_is_seen(monkeypatch, tmp_path):
    """Start a one-node Ray instance (token authentication, as Ray now does by default, with the
    token in the environment so that nothing is written to ~/.ray), then point the doctor at it
    with a fake NPU backend: the resource it counts comes from the backend."""
    pytest.importorskip("ray")
    npu = fake_npu_backend()
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's unix sockets live under it
    head_code = (
        "import json, logging, sys, ray\n"
        "ray.init(num_cpus=1, resources={sys.argv[2]: 2}, include_dashboard=False, _temp_dir=sys.argv[1],\n"
        "         logging_level=logging.ERROR, log_to_driver=False)\n"
        "print(ray.get_runtime_context().gcs_address, flush=True)\n"
        "sys.stdin.read()\n"
        "ray.shutdown()\n"
    )
    with open(tmp_path / "head.err", "w") as err:
        head = subprocess.Popen([sys.executable, "-c", head_code, temp_dir, npu.ray_resource], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        address = head.stdout.readline().strip()
        assert address, f"the Ray head did not start: {(tmp_path / 'head.err').read_text()[-2000:]}"
        monkeypatch.setattr(device_package, "detect_backend", lambda prefer="auto": npu)
        no_device_checks(monkeypatch)
        start = time.perf_counter()
        code, text = run_doctor(monkeypatch, "--device", "npu", "--skip-collectives", "--ray-address", address)
        assert time.perf_counter() - start < 15
    finally:
        head.stdin.close()  # the head shuts Ray down and exits
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)
    lines = text.splitlines()
    assert code == 0, text
    assert f"  status           connected: 1 alive node; CPU 1, {npu.ray_resource} 2" in lines
    assert any(line.startswith(f"  ray connect {address}") and line.endswith("  ok") for line in lines)
    assert "  ascend-driver    not installed" in lines  # no npu-smi here
    assert "  torch_npu        2.5.1.post1" in lines and "  cann             8.0.RC3" in lines


def test_the_probe_explains_a_token_rejection(monkeypatch):
    error = ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379")
    error.__cause__ = RuntimeError("Failed to connect to GCS. Last connection error: Traceback (most recent call last):\n"
                                   "  File ...\nray.exceptions.AuthenticationError: InvalidAuthToken")
    assert doctor._is_auth_failure(error)
    assert doctor._first_line(error) == ("Failed to connect to Ray cluster at 10.0.0.1:6379 "
                                        "(ray.exceptions.AuthenticationError: InvalidAuthToken)")
    assert not doctor._is_auth_failure(ConnectionError("Could not find any running Ray instance."))


# ------------------------------------------------------------------------------------------------
# versions


def test_versions_cover_the_stack_in_order(monkeypatch):
    fake_metadata(monkeypatch, missing={"vllm", "scipy"}, versions={"deepspeed": "0.16.4"})
    backend = detect_backend("cpu")
    full = backend.versions(include_missing=True)
    assert list(full) == STACK_KEYS  # no driver on the CPU
    assert full["vllm"] is None and full["scipy"] is None and full["deepspeed"] == "0.16.4"
    present = backend.versions()
    assert "vllm" not in present and present["deepspeed"] == "0.16.4"
    assert list(present) == [key for key in STACK_KEYS if full[key] is not None]


def test_cuda_versions_read_the_driver_from_nvidia_smi(monkeypatch):
    fake_metadata(monkeypatch, missing={"torch_npu"})
    calls = []

    def run(argv):
        calls.append(argv)
        return NVIDIA_SMI

    versions = fake_cuda_backend().versions(include_missing=True, run_command=run)
    assert calls == [["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]]
    assert versions["cuda"] == "12.4" and versions["nvidia-driver"] == "550.54.15" and versions["torch_npu"] is None
    assert list(versions)[:6] == ["python", "torch", "torch_npu", "cann", "cuda", "nvidia-driver"]


def test_npu_versions_read_the_driver_from_npu_smi(monkeypatch, tmp_path):
    calls = []

    def run(argv):
        calls.append(argv)
        return NPU_SMI

    versions = fake_npu_backend().versions(include_missing=True, run_command=run)
    assert calls == [["npu-smi", "info"]]
    assert versions["ascend-driver"] == "23.0.6"
    assert (versions["torch_npu"], versions["cann"], versions["cuda"]) == ("2.5.1.post1", "8.0.RC3", None)
    assert "nvidia-driver" not in versions

    # npu-smi missing: the driver's version.info
    info = tmp_path / "version.info"
    info.write_text("Version=24.1.rc2\nascendhal_version=7.35.19\n")
    monkeypatch.setattr(backend_module, "_ASCEND_DRIVER_INFO", str(info))

    def missing(argv):
        raise FileNotFoundError(2, "No such file or directory", argv[0])

    assert fake_npu_backend().versions(run_command=missing)["ascend-driver"] == "24.1.rc2"
    monkeypatch.setattr(backend_module, "_ASCEND_DRIVER_INFO", str(tmp_path / "absent"))
    assert "ascend-driver" not in fake_npu_backend().versions(run_command=missing)


def test_driver_tool_output_parsing():
    parse_nvidia, parse_npu = backend_module.parse_nvidia_smi_driver, backend_module.parse_npu_smi_driver
    assert parse_nvidia("535.161.08\n") == "535.161.08"
    assert parse_nvidia("550.54.15\n550.90.07\n550.54.15\n") == "550.54.15, 550.90.07"  # mixed drivers: say so
    assert parse_nvidia("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n") is None
    assert parse_nvidia("") is None
    assert parse_npu(NPU_SMI) == "23.0.6"
    assert parse_npu("| npu-smi 23.0.rc3                                 Version: 23.0.rc3    |") == "23.0.rc3"
    assert parse_npu("| npu-smi 23.0.0                                             |") == "23.0.0"
    assert parse_npu("dcmi module initialize failed. ret is -8005") is None
