"""Shared test setup: hardware markers skip with a reason; the benchmark data folder is optional;
fault injection for the resume tests (``kill_during_save``)."""

from __future__ import annotations

from pathlib import Path

import os

import pytest

# Tests that train from `embedded:base` use a quick 60-step pretraining of it (cached apart from the
# real base as `base-60steps`): they check mechanics (resume, checkpoints), not model quality.
os.environ.setdefault("NPU_RETU_BASE_STEPS", "60")


def _backend_reason(name: str) -> str | None:
    from npu_retu.device import detect_backend

    try:
        detect_backend(prefer=name)
        return None
    except Exception as e:  # BackendUnavailable: say why in the skip reason
        return str(e)


# Without a GPU the Triton kernels run on Triton's CPU interpreter. The switch is read when a kernel
# is defined, so it is set here, before any test imports npu_retu.kernels.triton.
if _backend_reason("cuda") is not None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
# The real benchmark files live in ../shared beside a developer's checkout; a user's clone lacks it.
BENCHMARKS = REPO.parent / "shared" / "data" / "benchmarks"


def pytest_collection_modifyitems(config, items):
    available = {"gpu": _backend_reason("cuda"), "npu": _backend_reason("npu")}
    for item in items:
        for kind, reason in available.items():
            if reason is not None and kind in item.keywords:
                item.add_marker(pytest.mark.skip(reason=f"needs a {kind.upper()}: {reason}"))


@pytest.fixture
def benchmarks_dir() -> Path:
    if not BENCHMARKS.is_dir():
        pytest.skip(f"real benchmark files not found at {BENCHMARKS} (only a developer checkout has ../shared)")
    return BENCHMARKS


@pytest.fixture
def kill_during_save():
    """``kill_during_save(step)`` -> the environment for a training process (and every process it
    starts) that SIGKILLs itself while checkpoint ``step`` is half-written: model files on disk,
    trainer state not yet (tests/fault_injection/sitecustomize.py)."""

    def environment(step: int) -> dict[str, str]:
        path = [str(REPO / "tests" / "fault_injection"), os.environ.get("PYTHONPATH", "")]
        return {"PYTHONPATH": os.pathsep.join(p for p in path if p), "NPU_RETU_TEST_KILL_DURING_SAVE": str(step)}

    return environment
