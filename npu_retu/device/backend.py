"""The backend: which device family this process runs on, and every call that differs between them.

Three backends share one small class. What differs is data (the names below) plus one injected
*accelerator module*: ``torch.cuda`` on NVIDIA, ``torch.npu`` (added by ``import torch_npu``) on
Ascend, none on CPU. Tests hand in fakes for both ``torch`` and the accelerator module, so the CUDA
and NPU branches run on a CPU-only machine.

Detection is lazy: nothing here imports torch or probes hardware at import time.
``get_backend()`` detects on its first call and caches; ``set_backend()`` overrides (tests, and the
``run.device`` config key).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import platform
import random
import re
import resource
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from npu_retu.errors import UserError

logger = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda", "npu")  # values of --device and of run.device

# Ascend chips before 910B (no bf16); note the first generation also had a "910B" bin with no digit
_FIRST_GEN_910 = re.compile(r"ascend910(pro|premium)?[ab]?")


class BackendUnavailable(UserError):
    """The requested backend cannot run here; the message says exactly what is missing."""


@dataclass(frozen=True)
class _Names:
    device_type: str  # torch device type string
    dist_backend: str  # torch.distributed process-group backend
    visible_devices_env: str | None  # env var that restricts the devices a process sees
    ray_resource: str | None  # Ray resource that counts these devices (GPU built in, NPU custom)
    kernel_impl: str  # which kernel family npu_retu.kernels dispatches to


_NAMES = {
    "cpu": _Names("cpu", "gloo", None, None, "reference"),
    "cuda": _Names("cuda", "nccl", "CUDA_VISIBLE_DEVICES", "GPU", "triton"),
    "npu": _Names("npu", "hccl", "ASCEND_RT_VISIBLE_DEVICES", "NPU", "ascend"),
}


class Backend:
    """One device family: its names, and the handful of calls that differ between families.

    ``accelerator`` is the module that owns the device calls (``torch.cuda`` / ``torch.npu``); it
    is None on CPU. ``extension`` is the module that had to be imported to enable the backend
    (``torch_npu``), kept for version reporting.
    """

    def __init__(self, name: str, *, torch_module: Any = None, accelerator: Any = None, extension: Any = None):
        if name not in _NAMES:
            raise UserError(f"unknown device backend {name!r}; choose one of: {', '.join(_NAMES)}")
        if name != "cpu" and accelerator is None:
            raise ValueError(f"backend {name!r} needs its accelerator module")
        names = _NAMES[name]
        self.name = name
        self.device_type = names.device_type
        self.dist_backend = names.dist_backend
        self.visible_devices_env = names.visible_devices_env
        self.ray_resource = names.ray_resource
        self.kernel_impl = names.kernel_impl
        self._torch_module = torch_module
        self.accelerator = accelerator
        self.extension = extension

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"

    @property
    def torch(self) -> Any:
        # imported on first use, so that constructing a CPU backend (or importing this module)
        # stays cheap for commands that never touch a tensor
        if self._torch_module is None:
            self._torch_module = importlib.import_module("torch")
        return self._torch_module

    @property
    def is_accelerator(self) -> bool:
        return self.accelerator is not None

    # ---- devices ------------------------------------------------------------------------------

    def device(self, index: int | None = None) -> Any:
        """The torch.device to put tensors on; ``index=None`` means the current device."""
        if not self.is_accelerator:
            return self.torch.device("cpu")
        if index is None:
            index = self.accelerator.current_device()
        return self.torch.device(self.device_type, index)

    def device_count(self) -> int:
        return int(self.accelerator.device_count()) if self.is_accelerator else 1

    def set_device(self, index: int) -> None:
        """Bind this process to device ``index`` (the local rank); a no-op on CPU."""
        if self.is_accelerator:
            self.accelerator.set_device(index)

    def synchronize(self) -> None:
        """Wait for queued device work (for timing); CPU work is already synchronous."""
        if self.is_accelerator:
            self.accelerator.synchronize()

    def visible_devices(self) -> str | None:
        """The value of the visible-devices variable, or None when unset (or on CPU)."""
        return os.environ.get(self.visible_devices_env) if self.visible_devices_env else None

    def ray_bundle(self, cpus: int) -> dict[str, float]:
        """One placement-group bundle for a worker that drives one device (CPU only on CPU)."""
        bundle: dict[str, float] = {"CPU": float(cpus)}
        if self.ray_resource:
            bundle[self.ray_resource] = 1.0
        return bundle

    def ray_actor_options(self, cpus: int) -> dict[str, Any]:
        """Ray actor options that claim one device: GPUs are Ray's built-in ``num_gpus``, NPUs a
        custom resource. Ray then narrows the visible-devices variable of the actor to its device."""
        if self.ray_resource == "GPU":
            return {"num_cpus": cpus, "num_gpus": 1}
        if self.ray_resource:
            return {"num_cpus": cpus, "resources": {self.ray_resource: 1}}
        return {"num_cpus": cpus}

    # ---- memory -------------------------------------------------------------------------------

    def memory_stats(self) -> dict[str, int]:
        """Bytes ``allocated_bytes``, ``reserved_bytes``, ``peak_allocated_bytes``.

        On an accelerator: the caching allocator's counters for the current device. On CPU there
        is no allocator to ask, so these are *process-wide* figures: current resident set size for
        allocated and reserved, and the peak RSS from ``getrusage`` for the peak.
        """
        if self.is_accelerator:
            return {
                "allocated_bytes": int(self.accelerator.memory_allocated()),
                "reserved_bytes": int(self.accelerator.memory_reserved()),
                "peak_allocated_bytes": int(self.accelerator.max_memory_allocated()),
            }
        rss = _current_rss_bytes()
        peak = max(_peak_rss_bytes(), rss)
        return {"allocated_bytes": rss, "reserved_bytes": rss, "peak_allocated_bytes": peak}

    def reset_peak_memory_stats(self) -> None:
        """Start a new peak window. On CPU the peak RSS is the process's lifetime maximum; Linux
        lets a process reset it (``/proc/self/clear_refs``), elsewhere this does nothing."""
        if self.is_accelerator:
            self.accelerator.reset_peak_memory_stats()
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # "5" resets the RSS high-water mark
        except OSError:
            pass

    # ---- randomness ---------------------------------------------------------------------------

    def manual_seed(self, seed: int) -> None:
        """Seed python ``random``, numpy, torch (CPU) and every device of the accelerator."""
        random.seed(seed)
        _numpy().random.seed(seed % 2**32)  # numpy only takes 32-bit seeds
        self.torch.manual_seed(seed)
        if self.is_accelerator:
            self.accelerator.manual_seed_all(seed)

    def rng_state(self) -> dict[str, Any]:
        """Every generator's state, made only of plain python values and CPU tensors, so that it
        pickles and also loads with ``torch.load(weights_only=True)`` inside a checkpoint."""
        version, internal, gauss_next = random.getstate()
        bit_generator, keys, pos, has_gauss, cached_gaussian = _numpy().random.get_state()
        state: dict[str, Any] = {
            "backend": self.name,
            "python": [version, list(internal), gauss_next],
            "numpy": [bit_generator, [int(k) for k in keys], int(pos), int(has_gauss), float(cached_gaussian)],
            "torch": self.torch.get_rng_state(),
            "accelerator": None,
        }
        if self.is_accelerator:
            state["accelerator"] = [s.cpu() for s in self.accelerator.get_rng_state_all()]
        return state

    def set_rng_state(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`rng_state` so that the following draws repeat exactly.

        Accelerator generators are restored only when the state comes from the same backend; a
        checkpoint moved to another device family (or device count) says so in a warning.
        """
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))
        np = _numpy()
        bit_generator, keys, pos, has_gauss, cached_gaussian = state["numpy"]
        np.random.set_state((bit_generator, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached_gaussian))
        self.torch.set_rng_state(state["torch"])

        saved = state.get("accelerator")
        if state.get("backend") != self.name:
            if saved or self.is_accelerator:
                logger.warning(
                    "RNG state was saved on backend %r and is restored on %r: python, numpy and torch CPU "
                    "generators restored, device generators left as seeded", state.get("backend"), self.name,
                )
            return
        if not self.is_accelerator or not saved:
            return
        count = self.device_count()
        if len(saved) != count:
            logger.warning("RNG state holds %d device generators, this process sees %d: restoring the first %d",
                           len(saved), count, min(len(saved), count))
        for index, device_state in enumerate(saved[:count]):
            self.accelerator.set_rng_state(device_state, index)

    # ---- the chip -----------------------------------------------------------------------------

    def chip_name(self) -> str:
        """The device name as the accelerator reports it ('NVIDIA H100 80GB HBM3', 'Ascend910B2'),
        or the CPU model on CPU."""
        if self.is_accelerator:
            return str(self.accelerator.get_device_name(self.accelerator.current_device()))
        return _cpu_model_name()

    def peak_flops(self, dtype: object = "bf16") -> float | None:
        """Dense peak FLOP/s of one device for ``dtype`` (the MFU denominator); None on CPU and
        for chips missing from :mod:`npu_retu.device.chips`."""
        if not self.is_accelerator:
            return None
        from npu_retu.device.chips import peak_flops_for

        return peak_flops_for(self.chip_name(), dtype)

    def supports_bf16(self) -> bool:
        """Whether bf16 compute is native here. PyTorch runs bf16 on any CPU (fast only with
        AVX512-BF16 / AMX); on an accelerator we ask it, and on Ascend fall back to the chip
        generation (910B and later have bf16; the first 910 has not)."""
        if not self.is_accelerator:
            return True
        ask = getattr(self.accelerator, "is_bf16_supported", None)
        if ask is not None:
            try:
                return bool(ask())
            except Exception as e:  # an old torch_npu without the query, or a driver hiccup
                logger.debug("is_bf16_supported() failed: %s", e)
        # first-generation names: Ascend910, Ascend910A, Ascend910ProA/ProB, Ascend910PremiumA
        return _FIRST_GEN_910.fullmatch(self.chip_name().strip().lower()) is None

    # ---- reporting ----------------------------------------------------------------------------

    def versions(
        self, *, include_missing: bool = False, run_command: Callable[[list[str]], str] | None = None
    ) -> dict[str, str | None]:
        """Versions of the whole stack, in a fixed order: python, torch, torch_npu, CANN, the CUDA
        that torch was built for, the device driver (NVIDIA's from nvidia-smi, Ascend's from
        npu-smi; queried on that backend only), then the optional packages.

        A component that is absent is left out, or is None with ``include_missing`` (the doctor
        prints those as 'not installed'). Packages are read from their metadata, never imported.
        ``run_command`` (argv -> stdout, raising on failure) is the injection point for the driver
        tools in tests.
        """
        torch_version = getattr(self.torch, "version", None)
        cuda_version = getattr(torch_version, "cuda", None)
        torch_npu_version = getattr(self.extension, "__version__", None) or _installed_version("torch_npu")
        found: dict[str, str | None] = {
            "python": platform.python_version(),
            "torch": str(getattr(self.torch, "__version__", "unknown")),
            "torch_npu": str(torch_npu_version) if torch_npu_version else None,
            "cann": _cann_version(self.extension) if self.name == "npu" else _cann_version_from_files(),
            "cuda": str(cuda_version) if cuda_version else None,
        }
        driver_key = _DRIVER_KEYS.get(self.name)
        if driver_key:
            found[driver_key] = driver_version(self.name, run_command or _run_tool)
        for package in _STACK_PACKAGES:
            found[package] = _installed_version(package)
        if include_missing:
            return found
        return {name: version for name, version in found.items() if version is not None}

    def describe(self, *, include_versions: bool = True) -> dict[str, Any]:
        """Everything ``npu-retu doctor`` and run reports print about the device (``versions``
        asks the driver tools, so callers that ask :meth:`versions` themselves can skip it)."""
        described = {
            "backend": self.name,
            "device_type": self.device_type,
            "chip": self.chip_name(),
            "device_count": self.device_count(),
            "dist_backend": self.dist_backend,
            "visible_devices_env": self.visible_devices_env,
            "visible_devices": self.visible_devices(),
            "ray_resource": self.ray_resource,
            "kernel_impl": self.kernel_impl,
            "supports_bf16": self.supports_bf16(),
            "peak_flops_bf16": self.peak_flops("bf16"),
        }
        if include_versions:
            described["versions"] = self.versions()
        return described


# ------------------------------------------------------------------------------------------------
# detection


def detect_backend(
    prefer: str = "auto",
    *,
    torch_module: Any = None,
    import_module: Callable[[str], Any] = importlib.import_module,
) -> Backend:
    """Pick the backend: NPU if torch_npu imports and sees a device, else CUDA, else CPU.

    ``prefer`` forces one ('cpu' | 'cuda' | 'npu'); a forced backend that cannot run raises
    :class:`BackendUnavailable` saying what is missing. In 'auto' mode a torch_npu that is
    installed but broken is reported as a warning before falling back, never skipped silently.
    ``torch_module`` and ``import_module`` are injection points for tests.
    """
    if prefer not in DEVICE_CHOICES:
        raise UserError(f"unknown device {prefer!r}; choose one of: {', '.join(DEVICE_CHOICES)}")
    if torch_module is None:
        torch_module = import_module("torch")
    if prefer == "cpu":
        return Backend("cpu", torch_module=torch_module)

    if prefer in ("auto", "npu"):
        try:
            return _load_npu(torch_module, import_module)
        except _NotInstalled as e:
            if prefer == "npu":
                raise
            logger.debug("NPU backend skipped: %s", e)  # the common case on CUDA and CPU machines
        except BackendUnavailable as e:
            if prefer == "npu":
                raise
            logger.warning("NPU backend skipped: %s; trying the next backend", e)

    if prefer in ("auto", "cuda"):
        try:
            return _load_cuda(torch_module)
        except BackendUnavailable as e:
            if prefer == "cuda":
                raise
            logger.debug("CUDA backend skipped: %s", e)

    return Backend("cpu", torch_module=torch_module)


class _NotInstalled(BackendUnavailable):
    """torch_npu is simply absent: expected on non-Ascend machines, so 'auto' stays quiet."""


def _load_npu(torch_module: Any, import_module: Callable[[str], Any]) -> Backend:
    # Plain `import torch_npu` registers torch.npu. Never `torch_npu.contrib.transfer_to_npu`:
    # it rewrites torch.cuda globally and breaks every CUDA code path in the process.
    try:
        torch_npu = import_module("torch_npu")
    except ModuleNotFoundError as e:
        if e.name == "torch_npu" or (e.name is None and "'torch_npu'" in str(e)):
            raise _NotInstalled(
                f"torch_npu not importable: {e} (install the Ascend extra: pip install 'npu-retu[ascend]', "
                "with the torch-npu build that matches your torch and CANN)"
            ) from None
        raise BackendUnavailable(f"torch_npu not importable: {e} (a dependency of torch_npu is missing)") from None
    except Exception as e:  # OSError for a missing CANN library, ImportError, RuntimeError on a version clash
        raise BackendUnavailable(
            f"torch_npu not importable: {e} (CANN environment not set? source "
            "<ascend-toolkit>/set_env.sh so that ASCEND_HOME_PATH and LD_LIBRARY_PATH point at CANN)"
        ) from None
    accelerator = getattr(torch_module, "npu", None)
    if accelerator is None:
        raise BackendUnavailable("torch_npu imported but torch.npu does not exist (torch and torch_npu versions do not match?)")
    available = _ask_available(accelerator)
    if available is not True:
        hint = _visible_hint("ASCEND_RT_VISIBLE_DEVICES")
        raise BackendUnavailable(
            f"torch_npu imported but torch.npu.is_available() is {available} "
            f"(driver / CANN not found? check ASCEND_HOME_PATH / npu-smi{hint})"
        )
    return Backend("npu", torch_module=torch_module, accelerator=accelerator, extension=torch_npu)


def _load_cuda(torch_module: Any) -> Backend:
    accelerator = getattr(torch_module, "cuda", None)
    if accelerator is None:
        raise BackendUnavailable("torch has no torch.cuda module")
    available = _ask_available(accelerator)
    if available is not True:
        torch_version = getattr(torch_module, "__version__", "?")
        built_for = getattr(getattr(torch_module, "version", None), "cuda", None)
        if not built_for:
            raise BackendUnavailable(
                f"torch {torch_version} is a CPU-only build (torch.version.cuda is None); install a CUDA build of torch"
            )
        hint = _visible_hint("CUDA_VISIBLE_DEVICES")
        raise BackendUnavailable(
            f"torch {torch_version} (CUDA {built_for}) but torch.cuda.is_available() is {available} "
            f"(no GPU or driver visible? check nvidia-smi{hint})"
        )
    return Backend("cuda", torch_module=torch_module, accelerator=accelerator)


def _ask_available(accelerator: Any) -> object:
    """is_available(), or the exception text when asking fails (a broken driver can raise)."""
    try:
        return bool(accelerator.is_available())
    except Exception as e:
        return f"an error ({type(e).__name__}: {e})"


def _visible_hint(variable: str) -> str:
    value = os.environ.get(variable)
    return f"; {variable}={value!r} limits the visible devices" if value is not None else ""


# ------------------------------------------------------------------------------------------------
# the process-wide backend

_current: Backend | None = None
_lock = threading.Lock()


def get_backend() -> Backend:
    """The backend of this process: detected ('auto') on the first call, then cached."""
    global _current
    if _current is None:
        with _lock:
            if _current is None:
                _current = detect_backend("auto")
    return _current


def set_backend(backend_or_name: Backend | str) -> Backend:
    """Use this backend from now on: a :class:`Backend`, or a name from :data:`DEVICE_CHOICES`
    (detected, so 'npu' fails loudly when the NPU cannot load). Returns the backend in use."""
    global _current
    backend = backend_or_name if isinstance(backend_or_name, Backend) else detect_backend(backend_or_name)
    with _lock:
        _current = backend
    return backend


def reset_backend() -> None:
    """Forget the cached backend; the next get_backend() detects again."""
    global _current
    with _lock:
        _current = None


# ------------------------------------------------------------------------------------------------
# helpers


def _numpy() -> Any:
    import numpy

    return numpy


def _current_rss_bytes() -> int:
    try:  # Linux: resident pages are the second field of statm
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return _peak_rss_bytes()  # best available figure where /proc is missing


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _installed_version(distribution: str) -> str | None:
    """A package's version from its metadata, without importing it."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cann_version(torch_npu: Any) -> str | None:
    """CANN version from torch_npu's own API (it moved between releases), else the toolkit files."""
    if torch_npu is not None:
        getter = getattr(getattr(torch_npu, "utils", None), "get_cann_version", None)
        if getter is not None:
            try:
                version = getter(module="CANN")
                if version:
                    return str(version)
            except Exception as e:
                logger.debug("torch_npu.utils.get_cann_version failed: %s", e)
        version = getattr(getattr(torch_npu, "version", None), "cann", None)
        if version:
            return str(version)
    return _cann_version_from_files()


def _cann_version_from_files() -> str | None:
    """Read `version=...` from the toolkit's install info, found through the variables that CANN's
    set_env.sh exports (or the default install path)."""
    roots = [os.environ.get(v) for v in ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH")]
    roots.append("/usr/local/Ascend/ascend-toolkit/latest")
    arch = platform.machine()
    for root in filter(None, roots):
        for relative in (f"{arch}-linux/ascend_toolkit_install.info", "version.cfg", "compiler/version.info"):
            try:
                text = (Path(root) / relative).read_text()
            except OSError:
                continue
            for line in text.splitlines():
                key, sep, value = line.partition("=")
                if sep and key.strip().lower() == "version" and value.strip():
                    return value.strip()
    return None


# the optional stack the doctor reports, by distribution name (metadata only: importing vllm or
# deepspeed takes seconds and can fail for reasons that have nothing to do with its version)
_STACK_PACKAGES = (
    "triton", "triton-ascend", "vllm", "vllm-ascend", "deepspeed", "mindspeed", "ray",
    "transformers", "tokenizers", "safetensors", "math-verify", "numpy", "scipy",
)
_DRIVER_KEYS = {"cuda": "nvidia-driver", "npu": "ascend-driver"}
_ASCEND_DRIVER_INFO = "/usr/local/Ascend/driver/version.info"
_TOOL_TIMEOUT_S = 15.0


def _run_tool(argv: list[str]) -> str:
    """stdout of a device tool; raises when it is missing, fails or hangs (a wedged driver can)."""
    import subprocess

    done = subprocess.run(argv, capture_output=True, text=True, timeout=_TOOL_TIMEOUT_S, check=True)
    return done.stdout


def driver_version(backend_name: str, run_command: Callable[[list[str]], str] = _run_tool) -> str | None:
    """The device driver's version: NVIDIA's from ``nvidia-smi --query-gpu=driver_version``,
    Ascend's from the banner of ``npu-smi info`` (else the driver's version.info); None when the
    tool is missing or says nothing we can read, and for the CPU."""
    if backend_name == "cuda":
        try:
            return parse_nvidia_smi_driver(run_command(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]))
        except Exception as e:  # missing tool, non-zero exit, timeout
            logger.debug("nvidia-smi failed: %s", e)
            return None
    if backend_name == "npu":
        try:
            version = parse_npu_smi_driver(run_command(["npu-smi", "info"]))
            if version:
                return version
        except Exception as e:
            logger.debug("npu-smi info failed: %s", e)
        try:
            return _key_value(Path(_ASCEND_DRIVER_INFO).read_text(), "version")
        except OSError:
            return None
    return None


def parse_nvidia_smi_driver(output: str) -> str | None:
    """One line per GPU, all the same driver: '550.54.15'. Differing lines are all reported."""
    versions = list(dict.fromkeys(line.strip() for line in output.splitlines() if line.strip()))
    versions = [v for v in versions if re.fullmatch(r"[0-9][0-9A-Za-z.\-]*", v)]
    return ", ".join(versions) or None


def parse_npu_smi_driver(output: str) -> str | None:
    """The banner of ``npu-smi info``: '| npu-smi 23.0.6      Version: 23.0.6   |' (the Version
    field is the driver's; the tool's own number, which ships with it, is the fallback)."""
    match = re.search(r"\bVersion:\s*([0-9][^\s|]*)", output) or re.search(r"npu-smi\s+([0-9][^\s|]*)", output)
    return match.group(1) if match else None


def _key_value(text: str, key: str) -> str | None:
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip().lower() == key and value.strip():
            return value.strip()
    return None
