"""The text of ``npu-retu doctor``: the device, the versions of the stack, warnings, the Ray probe
and one line per check of a :func:`npu_retu.doctor.diagnose` report."""

from __future__ import annotations

from typing import Any


def doctor_text(report: dict[str, Any]) -> str:
    """The human report (the JSON of ``npu-retu doctor --json`` is ``report`` itself)."""
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
    lines += ["versions"] + [f"  {name:<16} {value if value is not None else 'not installed'}"
                             for name, value in report["versions"].items()]
    if report["warnings"]:
        lines += ["warnings"] + [f"  {w}" for w in report["warnings"]]
    ray = report.get("ray")
    if ray and ray["status"] != "skipped":
        lines += ["ray", f"  {'address':<16} {ray['address']}", f"  {'status':<16} {ray['message']}"]
    lines.append("checks")
    lines += [_check_line(check) for check in report["checks"]]
    return "\n".join(lines)


def _check_line(check: dict[str, Any]) -> str:
    verdict = "ok" if check["ok"] else "FAILED"
    head = f"  {check['name']:<44} on {check['device']}:"
    if "error" in check:
        return f"{head} {check['error']}  {verdict}"
    if "expected" in check:  # the all-reduce
        values = sorted(set(check["result"]))
        return (f"{head} sum of rank+1 = {', '.join(f'{v:g}' for v in values)} on every rank (expected {check['expected']:g}),"
                f" all-reduce {check['all_reduce_s'] * 1e3:.1f} ms, {check['seconds']:.1f} s with start-up  {verdict}")
    if "max_abs_err" not in check:
        return f"{head} {check['seconds']:.1f} s  {verdict}"
    return (f"{head} max |err| vs CPU float64 = {check['max_abs_err']:.2e}"
            f" (tolerance {check['tolerance']:.0e})  {verdict}")
