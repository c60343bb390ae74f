"""Peak dense FLOP/s per accelerator chip, the denominator of MFU (paper Appendix C counts the
numerator), and each chip's device memory (for ``npu-retu plan``).

Figures are *dense* (no 2:4 sparsity) tensor-core / cube-unit throughput in FLOP/s, per device as
PyTorch sees it: one GPU, or one Ascend die (an Atlas A3 / 910C package holds two dies and
``torch.npu`` reports each as its own device). ``fp32`` is the plain FP32 rate, which is what an
fp32 matmul gets while TF32 is off (PyTorch's default); ``tf32`` is listed separately.

Sources (checked against the vendor datasheets; the Ascend figures are the ones verl's and
MindSpeed's MFU tables and Huawei's product pages commonly cite):

* NVIDIA H100 datasheet (SXM5 / PCIe / NVL columns; sparse figures halved to dense).
* NVIDIA H200 datasheet (SXM and NVL columns; same tensor cores as H100, more and faster HBM).
* NVIDIA A100 datasheet (identical compute for SXM4 / PCIe and 40 / 80 GB).
* Huawei Ascend 910B SKUs (Atlas 800T A2 / 900 A2 PoD): fp16/bf16 cube throughput per chip.
* Atlas A3 (Ascend910_93xx, marketed as 910C): about 752 TFLOP/s fp16/bf16 per *package* is the
  commonly reported figure, i.e. two 910B2-class dies of ~376 each; we store the per-die value.
"""

from __future__ import annotations

import re

TERA = 1e12

# chip -> dtype -> dense peak FLOP/s (per device as torch sees it; see the module docstring)
CHIP_PEAK_FLOPS: dict[str, dict[str, float]] = {
    # --- NVIDIA (datasheets; per GPU) ---
    "H100-SXM": {"bf16": 989.4 * TERA, "fp16": 989.4 * TERA, "tf32": 494.7 * TERA, "fp32": 67.0 * TERA},
    "H100-PCIe": {"bf16": 756.0 * TERA, "fp16": 756.0 * TERA, "tf32": 378.0 * TERA, "fp32": 51.2 * TERA},
    "H100-NVL": {"bf16": 835.5 * TERA, "fp16": 835.5 * TERA, "tf32": 417.5 * TERA, "fp32": 60.0 * TERA},
    "H200": {"bf16": 989.4 * TERA, "fp16": 989.4 * TERA, "tf32": 494.7 * TERA, "fp32": 67.0 * TERA},
    "H200-NVL": {"bf16": 835.5 * TERA, "fp16": 835.5 * TERA, "tf32": 417.5 * TERA, "fp32": 60.0 * TERA},
    # H800 / A800 are the export variants: same compute as H100 / A100, slower interconnect.
    "H800-SXM": {"bf16": 989.4 * TERA, "fp16": 989.4 * TERA, "tf32": 494.7 * TERA, "fp32": 67.0 * TERA},
    "H800-PCIe": {"bf16": 756.0 * TERA, "fp16": 756.0 * TERA, "tf32": 378.0 * TERA, "fp32": 51.2 * TERA},
    "A100": {"bf16": 312.0 * TERA, "fp16": 312.0 * TERA, "tf32": 156.0 * TERA, "fp32": 19.5 * TERA},
    "A100-40GB": {"bf16": 312.0 * TERA, "fp16": 312.0 * TERA, "tf32": 156.0 * TERA, "fp32": 19.5 * TERA},
    "A800": {"bf16": 312.0 * TERA, "fp16": 312.0 * TERA, "tf32": 156.0 * TERA, "fp32": 19.5 * TERA},
    "A800-40GB": {"bf16": 312.0 * TERA, "fp16": 312.0 * TERA, "tf32": 156.0 * TERA, "fp32": 19.5 * TERA},
    # --- Huawei Ascend (per chip for 910B, per die for A3). No FP32 cube figure is published. ---
    "Ascend910B1": {"bf16": 414.0 * TERA, "fp16": 414.0 * TERA},  # 24 AI cores at the top clock
    "Ascend910B2": {"bf16": 376.0 * TERA, "fp16": 376.0 * TERA},  # 24 AI cores
    "Ascend910B2C": {"bf16": 376.0 * TERA, "fp16": 376.0 * TERA},  # B2 bin of the A2 PoD boards
    "Ascend910B3": {"bf16": 313.0 * TERA, "fp16": 313.0 * TERA},  # 20 AI cores
    "Ascend910B4": {"bf16": 280.0 * TERA, "fp16": 280.0 * TERA},  # 20 AI cores, lower clock, 32 GB
    # A3 dies with 24 AI cores (Ascend910_9391/9392/9381/9382): half the ~752 per package.
    "Ascend910_93-24core": {"bf16": 376.0 * TERA, "fp16": 376.0 * TERA},
    # A3 dies with 20 AI cores (Ascend910_9372/9362/9361): not published separately; scaled by
    # core count from the 24-core die (376 * 20/24 = 313, the same ratio as 910B3 : 910B2).
    "Ascend910_93-20core": {"bf16": 313.0 * TERA, "fp16": 313.0 * TERA},
}

GIB = 2**30

# chip -> device memory (HBM) in bytes, per device as torch sees it, for `npu-retu plan`.
# The datasheet capacity read as GiB: NVIDIA's and Huawei's "80 GB" / "64 GB" are whole HBM stacks
# (5 x 16 GiB, 4 x 16 GiB), and what the driver then reports as the total (nvidia-smi's 81559 MiB on
# an H100, npu-smi's 65536 MB on a 910B) is within 0.5 % of it. Not all of it is usable: the runtime
# context, the caching allocator's fragmentation and communication buffers take a few GiB, which is
# why the planner compares against the capacity minus a headroom (npu_retu.plan).
# Sources: NVIDIA H100 datasheet (SXM5 80 GB HBM3, PCIe 80 GB HBM2e, NVL 94 GB), H200 datasheet
# (SXM and NVL 141 GB HBM3e), A100 datasheet (40 GB and 80 GB variants, same compute; the A100 key
# is the 80 GB part, A100-40GB the 40 GB one; likewise A800), H800 = H100 memory; Huawei Atlas 800T A2 /
# 900 A2 PoD product pages (Ascend 910B1/B2/B2C/B3: 64 GB HBM2e per chip; 910B4: 32 GB); Atlas A3 /
# 910C: 128 GB per package of two dies, 64 GB per die as torch_npu sees it.
CHIP_MEMORY_BYTES: dict[str, int] = {
    "H100-SXM": 80 * GIB,
    "H100-PCIe": 80 * GIB,
    "H100-NVL": 94 * GIB,
    "H200": 141 * GIB,
    "H200-NVL": 141 * GIB,
    "H800-SXM": 80 * GIB,
    "H800-PCIe": 80 * GIB,
    "A100": 80 * GIB,
    "A100-40GB": 40 * GIB,
    "A800": 80 * GIB,
    "A800-40GB": 40 * GIB,
    "Ascend910B1": 64 * GIB,
    "Ascend910B2": 64 * GIB,
    "Ascend910B2C": 64 * GIB,
    "Ascend910B3": 64 * GIB,
    "Ascend910B4": 32 * GIB,
    "Ascend910_93-24core": 64 * GIB,
    "Ascend910_93-20core": 64 * GIB,
}

# (pattern on the lower-cased device name, chip). First match wins, so specific names come first:
# "H100 NVL" and "H100 PCIe" before the bare "H100" that the SXM part reports
# ('NVIDIA H100 80GB HBM3'), "910B2C" before "910B2", "H200 NVL" before "H200".
_NAME_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"h100.*nvl"), "H100-NVL"),
    (re.compile(r"h100.*pcie"), "H100-PCIe"),
    (re.compile(r"h100"), "H100-SXM"),
    (re.compile(r"h200.*nvl"), "H200-NVL"),
    (re.compile(r"h200"), "H200"),  # also 'NVIDIA GH200 480GB' (an H100/H200-class GPU)
    (re.compile(r"h800.*pcie"), "H800-PCIe"),
    (re.compile(r"h800"), "H800-SXM"),
    (re.compile(r"a100.*40\s*gb"), "A100-40GB"),  # 'NVIDIA A100-SXM4-40GB', 'NVIDIA A100-PCIE-40GB'
    (re.compile(r"a100"), "A100"),  # 'NVIDIA A100-SXM4-80GB', 'NVIDIA A100 80GB PCIe', ...
    (re.compile(r"a800.*40\s*gb"), "A800-40GB"),
    (re.compile(r"a800"), "A800"),
    (re.compile(r"ascend\s*910\s*b1"), "Ascend910B1"),
    (re.compile(r"ascend\s*910\s*b2c"), "Ascend910B2C"),
    (re.compile(r"ascend\s*910\s*b2"), "Ascend910B2"),
    (re.compile(r"ascend\s*910\s*b3"), "Ascend910B3"),
    (re.compile(r"ascend\s*910\s*b4"), "Ascend910B4"),  # also 'Ascend910B4-1'
    (re.compile(r"ascend\s*910_93[89]\d"), "Ascend910_93-24core"),
    (re.compile(r"ascend\s*910_93[67]\d"), "Ascend910_93-20core"),
    (re.compile(r"(ascend\s*)?910c"), "Ascend910_93-24core"),
]

# accepted spellings of each dtype key (torch dtypes are accepted through str(dtype))
_DTYPE_ALIASES = {
    "bf16": "bf16", "bfloat16": "bf16",
    "fp16": "fp16", "float16": "fp16", "half": "fp16",
    "fp32": "fp32", "float32": "fp32", "float": "fp32",
    "tf32": "tf32",
}


def chip_for_device_name(device_name: str) -> str | None:
    """The key in :data:`CHIP_PEAK_FLOPS` for a device name as the accelerator reports it
    (``'NVIDIA H100 80GB HBM3'``, ``'Ascend910B2'``), or None when the chip is not in the table."""
    name = device_name.strip().lower()
    for pattern, chip in _NAME_PATTERNS:
        if pattern.search(name):
            return chip
    return None


def normalize_dtype(dtype: object) -> str:
    """'bf16' / 'bfloat16' / torch.bfloat16 -> 'bf16' (likewise fp16, fp32, tf32)."""
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPE_ALIASES:
        # a programming error rather than user input: the caller passes a dtype it chose
        raise ValueError(f"unknown dtype {dtype!r} for a peak-FLOPs lookup; use one of {sorted(set(_DTYPE_ALIASES))}")
    return _DTYPE_ALIASES[key]


def peak_flops_for(chip_name: str | None, dtype: object = "bf16") -> float | None:
    """Dense peak FLOP/s of one device for ``dtype``, or None for a CPU, an unknown chip, or a
    dtype the vendor publishes no figure for (fp32 on Ascend).

    ``chip_name`` is a device name as reported by the accelerator (or a key of
    :data:`CHIP_PEAK_FLOPS`). MFU = achieved FLOP/s / this value.
    """
    dtype_key = normalize_dtype(dtype)
    if not chip_name:
        return None
    chip = chip_name if chip_name in CHIP_PEAK_FLOPS else chip_for_device_name(chip_name)
    if chip is None:
        return None
    return CHIP_PEAK_FLOPS[chip].get(dtype_key)


def chip_key(chip_name: str | None) -> str | None:
    """The table key for a chip key or a device name as the accelerator reports it, or None."""
    if not chip_name:
        return None
    return chip_name if chip_name in CHIP_PEAK_FLOPS else chip_for_device_name(chip_name)


def memory_bytes_for(chip_name: str | None) -> int | None:
    """Device memory (HBM) of one device in bytes, or None for a CPU or an unknown chip.

    ``chip_name`` is a key of :data:`CHIP_MEMORY_BYTES` or a device name as the accelerator reports it.
    """
    chip = chip_key(chip_name)
    return None if chip is None else CHIP_MEMORY_BYTES.get(chip)
