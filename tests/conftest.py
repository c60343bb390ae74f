"""Shared test setup: hardware markers skip with a reason; the benchmark data folder is optional."""

from __future__ import annotations

from pathlib import Path

import os

import pytest

# Tests that train from `embedded:base` use a quick 60-step pretraining of it (cached apart from the
# real base as `base-60steps`): they check mechanics (resume, checkpoints), not model quality.
os.environ.setdefault("NPU_RETU_BASE_STEPS", "60")

REPO = Path(__file__).resolve().parents[1]
# The real benchmark files live in ../shared beside a developer's checkout; a user's clone lacks it.
BENCHMARKS = REPO.parent / "shared" / "data" / "benchmarks"


def pytest_collection_modifyitems(config, items):
    from npu_retu.device import detect_backend

    available = {}
    for kind in ("gpu", "npu"):
        name = "cuda" if kind == "gpu" else "npu"
        try:
            detect_backend(prefer=name)
            available[kind] = None
        except Exception as e:  # BackendUnavailable: say why in the skip reason
            available[kind] = str(e)
    for item in items:
        for kind, reason in available.items():
            if reason is not None and kind in item.keywords:
                item.add_marker(pytest.mark.skip(reason=f"needs a {kind.upper()}: {reason}"))


@pytest.fixture
def benchmarks_dir() -> Path:
    if not BENCHMARKS.is_dir():
        pytest.skip(f"real benchmark files not found at {BENCHMARKS} (only a developer checkout has ../shared)")
    return BENCHMARKS
