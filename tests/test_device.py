"""The device layer: detection (with fake torch / accelerator modules for the CUDA and NPU branches),
error messages, caching, RNG state, memory stats, the peak-FLOPs table and `npu-retu doctor`."""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import logging
import pickle
import random
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import npu_retu.device.backend as backend_module
from npu_retu.device import (
    Backend,
    BackendUnavailable,
    chip_for_device_name,
    detect_backend,
    get_backend,
    peak_flops_for,
    reset_backend,
    set_backend,
)
from npu_retu.errors import UserError

# ------------------------------------------------------------------------------------------------
# fakes


class FakeAccelerator:
    """Stands in for torch.cuda / torch.npu: fixed answers, and a log of the calls that matter."""

    def __init__(self, name: str, count: int = 2, available: bool = True, bf16: bool | None = True):
        self.name, self.count, self.available = name, count, available
        self.calls: list[tuple] = []
        if bf16 is not None:
            self.is_bf16_supported = lambda: bf16

    def is_available(self):
        return self.available

    def device_count(self):
        return self.count

    def current_device(self):
        return 1

    def set_device(self, index):
        self.calls.append(("set_device", index))

    def get_device_name(self, index=None):
        return self.name

    def synchronize(self):
        self.calls.append(("synchronize",))

    def memory_allocated(self):
        return 1_000

    def memory_reserved(self):
        return 4_096

    def max_memory_allocated(self):
        return 3_000

    def reset_peak_memory_stats(self):
        self.calls.append(("reset_peak_memory_stats",))

    def manual_seed_all(self, seed):
        self.calls.append(("manual_seed_all", seed))

    def get_rng_state_all(self):
        return [torch.tensor([i, 42], dtype=torch.uint8) for i in range(self.count)]

    def set_rng_state(self, state, index):
        self.calls.append(("set_rng_state", index, state.tolist()))


class FakeTorch:
    """Real torch for everything except the attributes given (cuda, npu, version, device, ...)."""

    def __init__(self, **overrides):
        self.__dict__.update(overrides)

    def __getattr__(self, name):
        return getattr(torch, name)


def fake_importer(**modules):
    """An import_module that serves the given modules (an exception value is raised) and reports
    anything else as not installed."""

    def import_module(name):
        if name not in modules:
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        item = modules[name]
        if isinstance(item, BaseException):
            raise item
        return item() if callable(item) else item

    return import_module


def npu_setup(available=True, name="Ascend910B2", count=8, bf16: bool | None = True):
    """A fake torch plus an importer whose `import torch_npu` registers torch.npu, as the real one does."""
    fake_torch = FakeTorch(
        cuda=FakeAccelerator("NVIDIA H100 80GB HBM3", available=False),
        version=SimpleNamespace(cuda=None),
        device=lambda device_type, index=None: (device_type, index),  # real torch rejects "npu"
    )
    npu = FakeAccelerator(name, count=count, available=available, bf16=bf16)
    torch_npu = SimpleNamespace(__version__="2.5.1.post1", version=SimpleNamespace(cann="8.0.RC3"))

    def load_torch_npu():
        fake_torch.npu = npu
        return torch_npu

    return fake_torch, npu, fake_importer(torch_npu=load_torch_npu)


def cuda_setup(available=True, name="NVIDIA H100 80GB HBM3", built_for="12.4"):
    cuda = FakeAccelerator(name, count=4, available=available)
    return FakeTorch(cuda=cuda, version=SimpleNamespace(cuda=built_for)), cuda


NO_TORCH_NPU = fake_importer()  # torch_npu not installed


@pytest.fixture(autouse=True)
def _fresh_backend():
    reset_backend()
    yield
    reset_backend()


# ------------------------------------------------------------------------------------------------
# CPU


def test_cpu_backend_names_and_calls():
    backend = detect_backend("cpu")
    assert (backend.name, backend.device_type, backend.dist_backend) == ("cpu", "cpu", "gloo")
    assert (backend.visible_devices_env, backend.ray_resource, backend.kernel_impl) == (None, None, "reference")
    assert backend.device() == torch.device("cpu") and backend.device(3) == torch.device("cpu")
    assert backend.device_count() == 1
    assert backend.peak_flops() is None and backend.peak_flops("fp32") is None
    assert backend.supports_bf16() is True
    backend.synchronize()  # a no-op that must not fail


def test_auto_falls_back_to_cpu_when_nothing_else_loads():
    fake_torch, _ = cuda_setup(available=False, built_for=None)
    backend = detect_backend("auto", torch_module=fake_torch, import_module=NO_TORCH_NPU)
    assert backend.name == "cpu"


RSS_CHECK = """
import json, torch
from npu_retu.device import detect_backend
backend = detect_backend("cpu")
before = backend.memory_stats()
block = torch.ones(16 * 1024 * 1024, dtype=torch.float32)  # 64 MiB, every page written
after = backend.memory_stats()
print(json.dumps({"before": before, "after": after}))
"""


def test_cpu_memory_stats_follow_the_process_rss():
    # in a fresh process: in the suite's long-lived one the allocator may hand back pages that are
    # already resident (freed by earlier tests), and the RSS then does not grow at all
    out = subprocess.run([sys.executable, "-c", RSS_CHECK], capture_output=True, text=True, timeout=120, check=True)
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    before, after = stats["before"], stats["after"]
    grown = after["allocated_bytes"] - before["allocated_bytes"]
    assert 0.9 * 64 * 2**20 <= grown <= 1.5 * 64 * 2**20, grown
    assert after["reserved_bytes"] == after["allocated_bytes"]
    assert after["peak_allocated_bytes"] >= after["allocated_bytes"]


# ------------------------------------------------------------------------------------------------
# CUDA and NPU through fakes


def test_cuda_branch_with_a_fake_accelerator():
    fake_torch, cuda = cuda_setup()
    backend = detect_backend("auto", torch_module=fake_torch, import_module=NO_TORCH_NPU)
    assert backend.name == "cuda" and backend.accelerator is cuda
    assert (backend.device_type, backend.dist_backend, backend.kernel_impl) == ("cuda", "nccl", "triton")
    assert (backend.visible_devices_env, backend.ray_resource) == ("CUDA_VISIBLE_DEVICES", "GPU")
    assert backend.device(2) == torch.device("cuda", 2)
    assert backend.device() == torch.device("cuda", 1)  # the accelerator's current device
    assert backend.device_count() == 4
    assert backend.memory_stats() == {"allocated_bytes": 1_000, "reserved_bytes": 4_096, "peak_allocated_bytes": 3_000}
    backend.synchronize()
    backend.reset_peak_memory_stats()
    backend.manual_seed(1234)
    assert cuda.calls == [("synchronize",), ("reset_peak_memory_stats",), ("manual_seed_all", 1234)]
    assert backend.peak_flops() == pytest.approx(989.4e12)
    assert backend.peak_flops("fp32") == pytest.approx(67e12)


def test_npu_branch_with_a_fake_torch_npu(monkeypatch):
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    fake_torch, npu, importer = npu_setup()
    backend = detect_backend("auto", torch_module=fake_torch, import_module=importer)
    assert backend.name == "npu" and backend.accelerator is npu
    assert (backend.device_type, backend.dist_backend, backend.kernel_impl) == ("npu", "hccl", "ascend")
    assert (backend.visible_devices_env, backend.ray_resource) == ("ASCEND_RT_VISIBLE_DEVICES", "NPU")
    assert backend.device(5) == ("npu", 5)
    assert backend.device_count() == 8
    assert backend.memory_stats()["peak_allocated_bytes"] == 3_000
    backend.synchronize()
    backend.manual_seed(7)
    assert npu.calls == [("synchronize",), ("manual_seed_all", 7)]
    assert backend.peak_flops("bf16") == pytest.approx(376e12)
    assert backend.peak_flops("fp32") is None  # no published FP32 cube figure

    described = backend.describe()
    assert described["backend"] == "npu" and described["chip"] == "Ascend910B2"
    assert described["device_count"] == 8 and described["dist_backend"] == "hccl"
    assert described["visible_devices"] == "0,1,2,3,4,5,6,7"
    assert described["versions"]["torch_npu"] == "2.5.1.post1"
    assert described["versions"]["cann"] == "8.0.RC3"
    assert "cuda" not in described["versions"]  # the fake torch is not a CUDA build


def test_npu_wins_over_cuda_in_auto_mode():
    fake_torch, _, importer = npu_setup()
    fake_torch.cuda = FakeAccelerator("NVIDIA H100 80GB HBM3", available=True)
    assert detect_backend("auto", torch_module=fake_torch, import_module=importer).name == "npu"


@pytest.mark.parametrize(
    "chip, asks, expected",
    [("Ascend910B2", None, True), ("Ascend910ProA", None, False), ("Ascend910", None, False),
     ("Ascend910_9391", None, True), ("Ascend910B3", False, False)],
)
def test_npu_bf16_support(chip, asks, expected):
    fake_torch, _, importer = npu_setup(name=chip, bf16=asks)
    assert detect_backend("npu", torch_module=fake_torch, import_module=importer).supports_bf16() is expected


# ------------------------------------------------------------------------------------------------
# a backend that cannot load says what is missing


BROKEN_TORCH_NPU = [
    (ModuleNotFoundError("No module named 'torch_npu'", name="torch_npu"), "torch_npu not importable: No module named 'torch_npu'"),
    (OSError("libhccl.so: cannot open shared object file: No such file or directory"),
     "torch_npu not importable: libhccl.so: cannot open shared object file: No such file or directory"),
    (ImportError("torch_npu 2.5.1 needs torch 2.5.1, found 2.13.0"),
     "torch_npu not importable: torch_npu 2.5.1 needs torch 2.5.1, found 2.13.0"),
    (ModuleNotFoundError("No module named 'decorator'", name="decorator"), "torch_npu not importable: No module named 'decorator'"),
]


@pytest.mark.parametrize("error, message", BROKEN_TORCH_NPU)
def test_requested_npu_that_cannot_import_names_the_reason(error, message):
    fake_torch, _ = cuda_setup()
    with pytest.raises(BackendUnavailable) as caught:
        detect_backend("npu", torch_module=fake_torch, import_module=fake_importer(torch_npu=error))
    assert str(caught.value).startswith(message)
    assert isinstance(caught.value, UserError)


@pytest.mark.parametrize("error, message", BROKEN_TORCH_NPU[1:])
def test_auto_warns_about_a_broken_torch_npu_and_falls_back(error, message, caplog):
    fake_torch, _ = cuda_setup()
    with caplog.at_level(logging.WARNING, logger="npu_retu.device"):
        backend = detect_backend("auto", torch_module=fake_torch, import_module=fake_importer(torch_npu=error))
    assert backend.name == "cuda"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and message in warnings[0]


def test_auto_stays_quiet_when_torch_npu_is_simply_absent(caplog):
    fake_torch, _ = cuda_setup(available=False, built_for=None)
    with caplog.at_level(logging.WARNING, logger="npu_retu.device"):
        assert detect_backend("auto", torch_module=fake_torch, import_module=NO_TORCH_NPU).name == "cpu"
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_npu_imported_but_not_available(monkeypatch, caplog):
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "")
    fake_torch, _, importer = npu_setup(available=False)
    with pytest.raises(BackendUnavailable) as caught:
        detect_backend("npu", torch_module=fake_torch, import_module=importer)
    assert str(caught.value) == (
        "torch_npu imported but torch.npu.is_available() is False (driver / CANN not found? check "
        "ASCEND_HOME_PATH / npu-smi; ASCEND_RT_VISIBLE_DEVICES='' limits the visible devices)"
    )
    fake_torch, _, importer = npu_setup(available=False)
    with caplog.at_level(logging.WARNING, logger="npu_retu.device"):
        assert detect_backend("auto", torch_module=fake_torch, import_module=importer).name == "cpu"
    assert "torch.npu.is_available() is False" in caplog.records[0].getMessage()


def test_requested_cuda_that_cannot_run(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fake_torch, _ = cuda_setup(available=False, built_for=None)
    with pytest.raises(BackendUnavailable, match=r"is a CPU-only build \(torch.version.cuda is None\)"):
        detect_backend("cuda", torch_module=fake_torch, import_module=NO_TORCH_NPU)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    fake_torch, _ = cuda_setup(available=False, built_for="12.4")
    with pytest.raises(BackendUnavailable) as caught:
        detect_backend("cuda", torch_module=fake_torch, import_module=NO_TORCH_NPU)
    assert "(CUDA 12.4) but torch.cuda.is_available() is False" in str(caught.value)
    assert "CUDA_VISIBLE_DEVICES='' limits the visible devices" in str(caught.value)


def test_unknown_device_name_lists_the_choices():
    with pytest.raises(UserError, match="unknown device 'tpu'; choose one of: auto, cpu, cuda, npu"):
        detect_backend("tpu")


def test_transfer_to_npu_is_never_imported():
    imported = []

    def recording_importer(name):
        imported.append(name)
        return fake_importer(torch_npu=SimpleNamespace())(name)

    fake_torch, _ = cuda_setup()
    fake_torch.npu = FakeAccelerator("Ascend910B1")
    detect_backend("npu", torch_module=fake_torch, import_module=recording_importer)
    assert imported == ["torch_npu"]


# ------------------------------------------------------------------------------------------------
# lazy, cached, overridable


def test_importing_the_device_layer_detects_nothing():
    code = "import sys, npu_retu.device as d; print('torch' in sys.modules, d.backend._current)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "None"]


def test_get_backend_detects_once_and_set_backend_overrides(monkeypatch):
    detections = []

    def counting_detect(prefer="auto", **kwargs):
        detections.append(prefer)
        return Backend("cpu")

    monkeypatch.setattr(backend_module, "detect_backend", counting_detect)
    first = get_backend()
    assert get_backend() is first and detections == ["auto"]

    fake_torch, cuda = cuda_setup()
    injected = Backend("cuda", torch_module=fake_torch, accelerator=cuda)
    assert set_backend(injected) is injected
    assert get_backend() is injected and detections == ["auto"]

    assert set_backend("cpu").name == "cpu" and detections == ["auto", "cpu"]
    reset_backend()
    get_backend()
    assert detections == ["auto", "cpu", "auto"]


# ------------------------------------------------------------------------------------------------
# randomness


def _draws():
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()


def test_rng_state_round_trip_repeats_the_draws(tmp_path):
    backend = detect_backend("cpu")
    backend.manual_seed(11)
    _draws()  # move away from the freshly seeded position
    state = backend.rng_state()
    expected = _draws()
    assert _draws() != expected  # the generators move on; the restore below must bring them back

    backend.set_rng_state(pickle.loads(pickle.dumps(state)))
    assert _draws() == expected

    torch.save(state, tmp_path / "rng.pt")  # as a checkpoint stores it, loadable without pickle code
    backend.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert _draws() == expected


def test_manual_seed_seeds_python_numpy_and_torch():
    backend = detect_backend("cpu")
    backend.manual_seed(3)
    first = _draws()
    backend.manual_seed(3)
    assert _draws() == first
    backend.manual_seed(4)
    assert _draws() != first


def test_accelerator_rng_state_is_saved_and_restored_per_device(caplog):
    fake_torch, cuda = cuda_setup()
    backend = Backend("cuda", torch_module=fake_torch, accelerator=cuda)
    state = backend.rng_state()
    assert [s.tolist() for s in state["accelerator"]] == [[0, 42], [1, 42], [2, 42], [3, 42]]
    backend.set_rng_state(state)
    assert cuda.calls == [("set_rng_state", i, [i, 42]) for i in range(4)]

    # the same state restored on CPU: host generators come back, the device part is reported
    with caplog.at_level(logging.WARNING, logger="npu_retu.device"):
        detect_backend("cpu").set_rng_state(state)
    assert "saved on backend 'cuda' and is restored on 'cpu'" in caplog.records[0].getMessage()


# ------------------------------------------------------------------------------------------------
# peak FLOPs


@pytest.mark.parametrize(
    "device_name, dtype, tflops",
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989.4),
        ("NVIDIA H100 80GB HBM3", torch.float16, 989.4),
        ("NVIDIA H100 80GB HBM3", "fp32", 67.0),
        ("NVIDIA H100 PCIe", "bf16", 756.0),
        ("NVIDIA H100 NVL", "bfloat16", 835.5),
        ("NVIDIA H200", "bf16", 989.4),
        ("NVIDIA A100-SXM4-80GB", "bf16", 312.0),
        ("NVIDIA A100-SXM4-40GB", "tf32", 156.0),
        ("NVIDIA A100-PCIE-40GB", "bf16", 312.0),
        ("NVIDIA A100 80GB PCIe", "fp32", 19.5),
        ("Ascend910B1", "bf16", 414.0),
        ("Ascend910B2", "fp16", 376.0),
        ("Ascend910B2C", "bf16", 376.0),
        ("Ascend910B3", "bf16", 313.0),
        ("Ascend910B4", "bf16", 280.0),
        ("Ascend910B4-1", "bf16", 280.0),
        ("Ascend910_9391", "bf16", 376.0),
        ("Ascend910_9362", "bf16", 313.0),
    ],
)
def test_peak_flops_for_real_device_names(device_name, dtype, tflops):
    assert peak_flops_for(device_name, dtype) == pytest.approx(tflops * 1e12)


@pytest.mark.parametrize("device_name", ["NVIDIA GeForce RTX 4090", "AMD EPYC 7763 64-Core Processor", "", None])
def test_peak_flops_unknown_is_none(device_name):
    assert peak_flops_for(device_name, "bf16") is None


def test_peak_flops_chip_matching_and_bad_dtype():
    assert chip_for_device_name("NVIDIA H100 PCIe") == "H100-PCIe"  # not the SXM part
    assert chip_for_device_name("Ascend910B2C") == "Ascend910B2C"  # not 910B2
    assert peak_flops_for("Ascend910B2", "fp32") is None
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        peak_flops_for("Ascend910B2", "int8")


# ------------------------------------------------------------------------------------------------
# npu-retu doctor


def _doctor(monkeypatch, *, device="cpu", as_json=True):
    from npu_retu.commands import doctor

    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    # the all-reduce and the Ray probe have their own tests (test_doctor_distributed.py)
    code = doctor.run(argparse.Namespace(device=device, json=as_json, skip_collectives=True, skip_ray=True))
    return code, out.getvalue()


def test_doctor_json_reports_the_backend_and_the_matmul_error(monkeypatch):
    code, text = _doctor(monkeypatch)
    report = json.loads(text)
    assert code == 0 and report["ok"] is True
    assert report["device"]["backend"] == "cpu" and report["device"]["dist_backend"] == "gloo"
    assert report["versions"]["torch"] == torch.__version__
    assert set(report["versions"]) >= {"python", "torch", "transformers"}
    fp32, bf16 = report["checks"][:2]
    # float32 over 64-term dots of U(-1, 1) entries: rounding stays far below 1e-4; bf16 (8-bit
    # mantissa) must show its rounding, i.e. the device really computed in bf16
    assert fp32["name"] == "matmul 64x64 float32" and fp32["max_abs_err"] < 1e-4
    assert bf16["name"] == "matmul 64x64 bfloat16" and 1e-3 < bf16["max_abs_err"] < 0.1
    # then the fused kernels (reference on CPU) against float64: 9 checks per dtype, all passing
    kernels = report["checks"][2:]
    assert len(kernels) == 18 and all(c["ok"] for c in kernels)
    by_name = {c["name"]: c for c in kernels}
    assert by_name["logprobs reference float32"]["max_abs_err"] < 1e-4
    assert by_name["linear policy loss d/dW (rel.) reference bfloat16"]["max_abs_err"] < 3e-2


def test_doctor_reports_a_kernel_that_breaks(monkeypatch):
    from npu_retu.kernels import reference

    real = reference.chunk_stats

    def off_by_a_bit(*args, **kwargs):
        logp, lse, entropy = real(*args, **kwargs)
        return logp + 1e-3, lse, entropy

    monkeypatch.setattr(reference, "chunk_stats", off_by_a_bit)
    code, text = _doctor(monkeypatch)
    report = json.loads(text)
    failed = sorted(c["name"] for c in report["checks"] if not c["ok"])
    # the shifted log-probs fail fp32's 1e-4, and the fused loss built on them; bf16 allows 5e-2
    assert code == 1 and "logprobs reference float32" in failed
    assert failed and all(name.endswith("float32") for name in failed)


def test_doctor_fails_a_check_over_its_tolerance(monkeypatch):
    from npu_retu import doctor

    monkeypatch.setattr(doctor, "MATMUL_TOLERANCE", {"float32": 1e-12, "bfloat16": 1e-12})
    code, text = _doctor(monkeypatch, as_json=False)
    assert code == 1
    assert "dist backend     gloo" in text
    assert text.count("FAILED") == 2


@pytest.mark.skipif(importlib.util.find_spec("torch_npu") is not None, reason="torch_npu is installed here")
def test_doctor_for_a_missing_backend_prints_one_error_line(capsys):
    from npu_retu.cli import main

    assert main(["doctor", "--device", "npu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("npu-retu doctor: error: torch_npu not importable: No module named 'torch_npu'")
