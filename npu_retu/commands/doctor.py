"""``npu-retu doctor``: which backend this machine gets, its versions, and whether the device computes
correctly (a small matmul checked against a CPU float64 reference).

Exit status: 0 when every check passes, 1 when one fails, 2 when the requested device cannot load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import platform
from typing import Any, Iterator

from npu_retu.device import DEVICE_CHOICES

HELP = "show the device backend, chip, versions, and check a matmul on the device against CPU float64"

MATMUL_SIZE = 64
# fp32 allows TF32 (10-bit mantissa) in case a user enabled it; bf16 allows its 8-bit mantissa
# on inputs and output (entries are O(5) for a 64-long dot of U(-1, 1) values).
MATMUL_TOLERANCE = {"float32": 1e-2, "bfloat16": 1e-1}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="backend to check (default: auto-detect)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from npu_retu.device import detect_backend

    with _collect_warnings("npu_retu.device") as warnings:
        backend = detect_backend(args.device)
    device = backend.describe()
    versions = {"python": platform.python_version(), "transformers": _transformers_version(), **device.pop("versions")}
    report = {"device": device, "versions": versions, "warnings": warnings, "checks": _run_checks(backend)}
    report["ok"] = all(check["ok"] for check in report["checks"])
    print(json.dumps(report, indent=2) if args.json else _format(report))
    return 0 if report["ok"] else 1


def _transformers_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformers")  # from metadata: importing transformers takes seconds
    except PackageNotFoundError:
        return "not installed"


def _run_checks(backend: Any) -> list[dict[str, Any]]:
    checks = [_matmul_check(backend, "float32")]
    if backend.supports_bf16():
        checks.append(_matmul_check(backend, "bfloat16"))
    checks += _kernel_checks(backend)
    return checks


def _kernel_checks(backend: Any) -> list[dict[str, Any]]:
    """The fused kernels on this device vs CPU float64: the device's own implementation, and the
    PyTorch reference beside it; an implementation that cannot load is a failed check saying why."""
    from npu_retu.kernels import implementation_status
    from npu_retu.kernels.parity import kernel_parity_checks

    status = implementation_status()
    dtypes = ["float32"] + (["bfloat16"] if backend.supports_bf16() else [])
    checks = []
    for impl in dict.fromkeys([backend.kernel_impl, "reference"]):
        reason = status.get(impl)
        if reason is not None and impl != "ascend":  # ascend falls back to the reference tiles itself
            checks.append({"name": f"kernels {impl}", "device": str(backend.device()), "max_abs_err": float("nan"),
                           "tolerance": 0.0, "ok": False, "error": reason})
            continue
        for dtype in dtypes:
            try:
                checks += kernel_parity_checks(backend.device(), impl, dtype)
            except Exception as e:  # report, do not crash the doctor
                checks.append({"name": f"kernels {impl} {dtype}", "device": str(backend.device()),
                               "max_abs_err": float("nan"), "tolerance": 0.0, "ok": False, "error": f"{type(e).__name__}: {e}"})
    return checks


def _matmul_check(backend: Any, dtype_name: str) -> dict[str, Any]:
    """Multiply two random matrices on the device in ``dtype_name`` and compare with float64 on CPU."""
    torch = backend.torch
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(MATMUL_SIZE, MATMUL_SIZE, generator=generator, dtype=torch.float64) * 2 - 1
    b = torch.rand(MATMUL_SIZE, MATMUL_SIZE, generator=generator, dtype=torch.float64) * 2 - 1
    reference = a @ b
    dtype = getattr(torch, dtype_name)
    device = backend.device()
    on_device = a.to(device=device, dtype=dtype) @ b.to(device=device, dtype=dtype)
    backend.synchronize()
    max_abs_err = float((on_device.to("cpu", torch.float64) - reference).abs().max())
    tolerance = MATMUL_TOLERANCE[dtype_name]
    return {
        "name": f"matmul {MATMUL_SIZE}x{MATMUL_SIZE} {dtype_name}",
        "device": str(device),
        "max_abs_err": max_abs_err,
        "tolerance": tolerance,
        "ok": max_abs_err <= tolerance,
    }


def _format(report: dict[str, Any]) -> str:
    device = report["device"]
    visible = "-"
    if device["visible_devices_env"]:
        value = device["visible_devices"]
        visible = f"{device['visible_devices_env']}={value if value is not None else '(unset)'}"
    peak = device["peak_flops_bf16"]
    rows = [
        ("backend", f"{device['backend']} (kernels: {device['kernel_impl']})"),
        ("chip", device["chip"]),
        ("device count", str(device["device_count"])),
        ("dist backend", device["dist_backend"]),
        ("visible devices", visible),
        ("ray resource", device["ray_resource"] or "-"),
        ("peak bf16", f"{peak / 1e12:.1f} TFLOP/s (dense, per device)" if peak else "- (not in the chip table)"),
        ("bf16", "supported" if device["supports_bf16"] else "not supported"),
    ]
    lines = ["device"] + [f"  {key:<16} {value}" for key, value in rows]
    lines += ["versions"] + [f"  {name:<16} {value}" for name, value in report["versions"].items()]
    if report["warnings"]:
        lines += ["warnings"] + [f"  {w}" for w in report["warnings"]]
    lines.append("checks")
    for check in report["checks"]:
        verdict = "ok" if check["ok"] else "FAILED"
        if "error" in check:
            lines.append(f"  {check['name']:<44} on {check['device']}: {check['error']}  {verdict}")
            continue
        lines.append(
            f"  {check['name']:<44} on {check['device']}: max |err| vs CPU float64 = {check['max_abs_err']:.2e}"
            f" (tolerance {check['tolerance']:.0e})  {verdict}"
        )
    return "\n".join(lines)


class _ListHandler(logging.Handler):
    def __init__(self, messages: list[str]):
        super().__init__(logging.WARNING)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _collect_warnings(logger_name: str) -> Iterator[list[str]]:
    """Capture warnings logged under ``logger_name`` (say, a broken accelerator stack that 'auto'
    skipped) so that the report lists them instead of a stray stderr line."""
    messages: list[str] = []
    handler = _ListHandler(messages)
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
