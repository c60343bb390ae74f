"""Microbenchmark of the log-prob path: fused kernels vs plain PyTorch, torch.compile and Liger-Kernel.

For each implementation and shape it measures, on the current device:

* time of the forward (no grad: the old / reference log-probs) and of forward+backward (log-probs
  with gradients for ``hidden`` and ``weight``): median, p20 and p80 over ``repeats`` runs;
* effective TFLOP/s counting the LM-head matmuls only: ``2 T H V`` forward, ``6 T H V``
  forward+backward (the fused backward's recomputation of the logits is not counted: this is the
  useful work, the same number for every implementation);
* peak memory above the inputs (accelerators: the allocator's peak; CPU: peak resident set size);
* max |error| against float64 on the first ``check_rows`` tokens, of the log-probs and of ``dh``
  (each row of ``dh`` depends only on its own token, so a few rows can be checked exactly).

Results go to a CSV with the chip, the versions and the date (``npu-retu bench kernels``).
"""

from __future__ import annotations

import csv
import datetime
import gc
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

ACCELERATOR_SHAPES = [(896, 151936), (3584, 152064), (4096, 128256)]
ACCELERATOR_TOKENS = [2048, 4096, 8192, 16384]
CPU_SHAPES = [(256, 32000)]
CPU_TOKENS = [1024, 2048, 4096, 8192]
FIELDS = [
    "date", "chip", "device", "torch", "triton", "liger_kernel", "impl", "hidden", "vocab", "tokens", "dtype", "mode",
    "median_ms", "p20_ms", "p80_ms", "tflops", "peak_mem_above_inputs_mib", "max_err_logp", "max_err_dh", "status",
]
FLOP_NOTE = "TFLOP/s count the LM-head matmuls only: 2*T*H*V forward, 6*T*H*V forward+backward"


def logprob_functions(backend) -> dict[str, Callable | str]:
    """name -> fn(hidden, weight, targets) -> log-probs, for everything that can run here; a string
    instead of a function says why that one cannot."""
    import importlib.util

    import torch

    from npu_retu.kernels import fused_linear_logprobs, implementation_status, plain_linear_logprobs

    fns: dict[str, Callable | str] = {}
    status = implementation_status()
    for impl in ("reference", "triton", "ascend"):
        if impl != "reference" and not backend.is_accelerator:
            fns[f"fused-{impl}"] = "no accelerator (the Triton interpreter is a correctness tool, not a speed one)"
        elif status[impl] is None or (impl == "ascend" and backend.kernel_impl == "ascend"):
            fns[f"fused-{impl}"] = lambda h, w, y, impl=impl: fused_linear_logprobs(h, w, y, impl=impl)[0]
        else:
            fns[f"fused-{impl}"] = status[impl]
    fns["plain"] = lambda h, w, y: plain_linear_logprobs(h, w, y)[0]
    try:
        compiled = torch.compile(lambda h, w, y: plain_linear_logprobs(h, w, y)[0])
        fns["plain-compiled"] = compiled
    except Exception as e:  # no compiler backend on this platform
        fns["plain-compiled"] = f"torch.compile unavailable: {e}"
    if importlib.util.find_spec("liger_kernel") is not None and backend.is_accelerator:
        fns["liger"] = _liger_logprobs
    else:
        fns["liger"] = "liger-kernel not installed (pip install -e .[bench]) or no accelerator"
    return fns


def _liger_logprobs(hidden, weight, targets):
    """Liger's fused linear cross-entropy with no reduction: -CE = the log-prob of the target."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return -liger_fused_linear_cross_entropy(hidden, weight, targets, reduction="none")


def run_kernel_bench(
    shapes: list[tuple[int, int]] | None = None,
    tokens: list[int] | None = None,
    dtype_name: str | None = None,
    impls: list[str] | None = None,
    repeats: int | None = None,
    check_rows: int = 64,
    out_csv: str | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run the benchmark, print one line per measurement, save the CSV; returns the rows."""
    import torch

    from npu_retu.device import get_backend

    backend = get_backend()
    accel = backend.is_accelerator
    shapes = shapes or (ACCELERATOR_SHAPES if accel else CPU_SHAPES)
    tokens = tokens or (ACCELERATOR_TOKENS if accel else CPU_TOKENS)
    dtype_name = dtype_name or ("bfloat16" if accel and backend.supports_bf16() else "float32")
    repeats = repeats or (10 if accel else 3)
    dtype = getattr(torch, dtype_name)
    device = backend.device()
    fns = logprob_functions(backend)
    if impls:
        unknown = sorted(set(impls) - set(fns))
        if unknown:
            raise ValueError(f"unknown implementation(s) {', '.join(unknown)}; choose from {', '.join(fns)}")
        fns = {k: v for k, v in fns.items() if k in impls}
    versions = backend.versions()
    common = {
        "date": datetime.date.today().isoformat(), "chip": backend.chip_name(), "device": str(device),
        "torch": torch.__version__, "triton": versions.get("triton", "-"), "liger_kernel": _version("liger-kernel"),
        "dtype": dtype_name,
    }
    log(f"bench kernels on {common['chip']} ({device}), {dtype_name}, {repeats} timed runs each; {FLOP_NOTE}")
    rows = []
    for hidden_size, vocab in shapes:
        for n_tokens in tokens:
            for name, fn in fns.items():
                for mode in ("forward", "forward+backward"):
                    row = {**common, "impl": name, "hidden": hidden_size, "vocab": vocab, "tokens": n_tokens, "mode": mode}
                    if isinstance(fn, str):
                        row["status"] = f"skipped: {fn}"
                    else:
                        row.update(_measure(backend, fn, hidden_size, vocab, n_tokens, dtype, mode, repeats, check_rows))
                    rows.append(row)
                    log(_format_row(row))
    if out_csv:
        path = Path(out_csv)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        with tmp.open("w", newline="") as f:
            f.write(f"# {FLOP_NOTE}; python {platform.python_version()}\n")
            writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(path)
        log(f"saved {len(rows)} rows to {path}")
    return rows


def _measure(backend, fn, hidden_size, vocab, n_tokens, dtype, mode, repeats, check_rows) -> dict[str, Any]:
    import torch

    device = backend.device()
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(n_tokens, hidden_size, generator=gen).to(device=device, dtype=dtype)
    weight = (torch.randn(vocab, hidden_size, generator=gen) / hidden_size**0.5).to(device=device, dtype=dtype)
    targets = torch.randint(0, vocab, (n_tokens,), generator=gen).to(device)
    backward = mode == "forward+backward"
    if backward:
        hidden.requires_grad_()
        weight.requires_grad_()

    def once():
        if not backward:
            with torch.no_grad():
                return fn(hidden, weight, targets), None
        hidden.grad = weight.grad = None
        logp = fn(hidden, weight, targets)
        logp.sum().backward()
        return logp.detach(), hidden.grad

    try:
        logp, grad_h = once()  # warm-up (compilation, autotuning)
        backend.synchronize()
        del logp, grad_h
        gc.collect()
        before = backend.memory_stats()["allocated_bytes"]
        backend.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            backend.synchronize()
            t0 = time.perf_counter()
            logp, grad_h = once()
            backend.synchronize()
            times.append(time.perf_counter() - t0)
        peak = backend.memory_stats()["peak_allocated_bytes"]
    except (RuntimeError, MemoryError) as e:  # out of memory is a result, not a crash
        return {"status": f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"}
    err_logp, err_dh = _errors(hidden, weight, targets, logp, grad_h, check_rows)
    times.sort()
    median = statistics.median(times)
    flops = (6 if backward else 2) * n_tokens * hidden_size * vocab
    return {
        "median_ms": round(median * 1e3, 3),
        "p20_ms": round(_quantile(times, 0.2) * 1e3, 3),
        "p80_ms": round(_quantile(times, 0.8) * 1e3, 3),
        "tflops": float(f"{flops / median / 1e12:.4g}"),  # 4 significant digits: tiny CPU shapes stay > 0
        "peak_mem_above_inputs_mib": round(max(0, peak - before) / 2**20, 1),
        "max_err_logp": f"{err_logp:.2e}",
        "max_err_dh": f"{err_dh:.2e}" if err_dh is not None else "",
        "status": "ok",
    }


def _errors(hidden, weight, targets, logp, grad_h, rows):
    """max |error| vs float64 on the first ``rows`` tokens: log-probs, and dh of sum(log-probs)."""
    import torch

    h = hidden[:rows].detach().cpu().double().requires_grad_()
    w = weight.detach().cpu().double()
    y = targets[:rows].cpu()
    want = torch.log_softmax(h @ w.T, dim=-1).gather(-1, y[:, None]).squeeze(-1)
    err_logp = float((logp[:rows].cpu().double() - want.detach()).abs().max())
    if grad_h is None:
        return err_logp, None
    (want_dh,) = torch.autograd.grad(want.sum(), [h])
    return err_logp, float((grad_h[:rows].cpu().double() - want_dh).abs().max())


def _quantile(sorted_values: list[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "-"


def _format_row(row: dict[str, Any]) -> str:
    head = f"{row['impl']:<16} H={row['hidden']:<5} V={row['vocab']:<6} T={row['tokens']:<6} {row['mode']:<17}"
    if row.get("status") != "ok":
        return f"{head} {row.get('status')}"
    return (
        f"{head} median {row['median_ms']:>9.1f} ms (p20 {row['p20_ms']:.1f}, p80 {row['p80_ms']:.1f})"
        f"  {row['tflops']:>7.3f} TFLOP/s  peak +{row['peak_mem_above_inputs_mib']:>8.1f} MiB"
        f"  err logp {row['max_err_logp']}" + (f" dh {row['max_err_dh']}" if row["max_err_dh"] else "")
    )


if __name__ == "__main__":  # python -m npu_retu.bench.kernels: the default run, saved beside the other benches
    run_kernel_bench(out_csv="runs/bench/kernels.csv")
