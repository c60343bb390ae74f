"""The device layer: the only package that knows cpu / cuda / npu apart.

Everything else asks it::

    from npu_retu.device import get_backend

    backend = get_backend()            # detected on first use, then cached
    model.to(backend.device(local_rank))
    dist.init_process_group(backend.dist_backend)

Importing this package imports neither torch nor torch_npu and probes no hardware.
"""

from npu_retu.device.backend import (
    DEVICE_CHOICES,
    Backend,
    BackendUnavailable,
    detect_backend,
    get_backend,
    reset_backend,
    set_backend,
)
from npu_retu.device.chips import CHIP_PEAK_FLOPS, chip_for_device_name, peak_flops_for
from npu_retu.device.npu_patches import apply_fused_ops

__all__ = [
    "CHIP_PEAK_FLOPS",
    "DEVICE_CHOICES",
    "Backend",
    "apply_fused_ops",
    "BackendUnavailable",
    "chip_for_device_name",
    "detect_backend",
    "get_backend",
    "peak_flops_for",
    "reset_backend",
    "set_backend",
]
