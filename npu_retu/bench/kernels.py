"""Microbenchmark of the two fused ops against plain PyTorch, torch.compile, Liger-Kernel and Cut
Cross-Entropy: the log-probs (``op=logprobs``: per-token log-prob of the target from hidden states
and the LM head) and the clipped policy loss from hidden states (``op=policy-loss``: npu-retu's
``fused_linear_policy_loss`` against logits -> log-softmax -> the clipped loss, and Liger's
``LigerFusedLinearGRPOLoss`` with the same clip, no KL).

For each implementation, shape and dtype it measures, on the current device:

* time of the forward (no grad: the old / reference log-probs) and of forward+backward (log-probs
  with gradients for ``hidden`` and ``weight``): median, p20 and p80 over ``repeats`` runs;
* effective TFLOP/s counting the LM-head matmuls only: ``2 T H V`` forward, ``6 T H V``
  forward+backward (the fused backward's recomputation of the logits is not counted: this is the
  useful work, the same number for every implementation), and its share of the chip's dense peak
  for the dtype (``npu_retu.device.chips``; none on a CPU);
* peak memory above the inputs (accelerators: the allocator's peak; CPU: peak resident set size);
* max |error| against float64 on the first ``check_rows`` tokens, of the log-probs and of ``dh``
  (each row of ``dh`` depends only on its own token, so a few rows can be checked exactly); for the
  policy loss, of the loss and ``dh`` of the same implementation run on those tokens alone.

An implementation that cannot run here is a row whose status says exactly why; ``max_seconds``
ends the run early with the rest marked "not run". Results go to a CSV with the chip, the versions
and the date (``npu-retu bench kernels``).
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

# the Qwen2.5-7B head and the Llama3.2-3B head (issue 20), 4k..32k tokens
ACCELERATOR_SHAPES = [(3584, 152064), (3072, 128256)]
ACCELERATOR_TOKENS = [4096, 8192, 16384, 32768]
CPU_SHAPES = [(256, 32000)]
CPU_TOKENS = [1024, 2048, 4096, 8192]
OPS = ("logprobs", "policy-loss")
CLIP = dict(clip_low=0.2, clip_high=0.28)  # DAPO_dc's clip for every policy-loss implementation
FIELDS = [
    "date", "chip", "device", "torch", "triton", "liger_kernel", "cut_cross_entropy", "op", "impl", "hidden", "vocab",
    "tokens", "dtype", "mode", "median_ms", "p20_ms", "p80_ms", "tflops", "pct_of_peak", "peak_mem_above_inputs_mib",
    "max_err_logp", "max_err_dh", "status",
]
FLOP_NOTE = "TFLOP/s count the LM-head matmuls only: 2*T*H*V forward, 6*T*H*V forward+backward"


def logprob_functions(backend) -> dict[str, Callable | str]:
    """name -> fn(hidden, weight, targets) -> log-probs, for everything that can run here; a string
    instead of a function says why that one cannot."""
    import importlib.util

    import torch

    from npu_retu.kernels import fused_linear_logprobs, plain_linear_logprobs

    fns = _fused(backend, lambda impl: lambda h, w, y: fused_linear_logprobs(h, w, y, impl=impl)[0])
    fns["plain"] = lambda h, w, y: plain_linear_logprobs(h, w, y)[0]
    try:
        compiled = torch.compile(lambda h, w, y: plain_linear_logprobs(h, w, y)[0])
        fns["plain-compiled"] = compiled
    except Exception as e:  # no compiler backend on this platform
        fns["plain-compiled"] = f"torch.compile unavailable: {e}"
    fns["liger"] = _liger_logprobs if liger_triton_reason(backend) is None else liger_triton_reason(backend)
    fns["cut-cross-entropy"] = _cce_logprobs if cce_reason(backend) is None else cce_reason(backend)
    return fns


def _fused(backend, make: Callable[[str], Callable]) -> dict[str, Callable | str]:
    """``fused-<impl>`` -> ``make(impl)`` for each kernel implementation that runs here, else why not."""
    from npu_retu.kernels import implementation_status

    fns: dict[str, Callable | str] = {}
    status = implementation_status()
    for impl in ("reference", "triton", "ascend"):
        if impl != "reference" and not backend.is_accelerator:
            fns[f"fused-{impl}"] = "no accelerator (the Triton interpreter is a correctness tool, not a speed one)"
        elif status[impl] is None or (impl == "ascend" and backend.kernel_impl == "ascend"):
            fns[f"fused-{impl}"] = make(impl)
        else:
            fns[f"fused-{impl}"] = status[impl]
    return fns


def liger_triton_reason(backend) -> str | None:
    """Why Liger's Triton kernels (fused linear cross-entropy) cannot run here, or None."""
    return _gpu_triton_reason(backend, "liger_kernel", "liger-kernel", "pip install 'npu-retu[bench]'",
                              "its fused linear cross-entropy is a Triton kernel for NVIDIA / AMD / Intel GPUs")


def cce_reason(backend) -> str | None:
    """Why Apple's Cut Cross-Entropy cannot run here, or None."""
    return _gpu_triton_reason(backend, "cut_cross_entropy", "cut-cross-entropy", "pip install cut-cross-entropy",
                              "its Triton kernels need an NVIDIA GPU")


def _gpu_triton_reason(backend, module: str, distribution: str, install: str, needs: str) -> str | None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        return f"{distribution} not installed ({install})"
    if not (backend.is_accelerator and backend.kernel_impl == "triton"):
        return f"{distribution} {_version(distribution)} is installed, but {needs} and this device is {backend.name}"
    return None


def _cce_logprobs(hidden, weight, targets):
    """Cut Cross-Entropy with no reduction: -CE = the log-prob of the target."""
    from cut_cross_entropy import linear_cross_entropy

    return -linear_cross_entropy(hidden, weight, targets, reduction="none")


def policy_loss_functions(backend) -> dict[str, Callable | str]:
    """name -> fn(hidden [B, T, H], weight, targets, old_logp, advantages [B, T], mask) -> loss, as for
    :func:`logprob_functions`."""
    import importlib.util

    import torch

    from npu_retu.algos.policy_loss import clipped_policy_loss as plain_loss
    from npu_retu.kernels import fused_linear_policy_loss, plain_linear_logprobs

    def plain(h, w, y, old, adv, mask):
        logp = plain_linear_logprobs(h, w, y)[0]
        return plain_loss(logp, old, adv, mask, **CLIP)[0]

    fns = _fused(backend, lambda impl: lambda h, w, y, old, adv, m: fused_linear_policy_loss(h, w, y, old, adv, m, impl=impl, **CLIP)[0])
    fns["plain"] = plain
    try:
        fns["plain-compiled"] = torch.compile(plain)
    except Exception as e:  # no compiler backend on this platform
        fns["plain-compiled"] = f"torch.compile unavailable: {e}"
    if importlib.util.find_spec("liger_kernel") is None:
        fns["liger-grpo"] = "liger-kernel not installed (pip install 'npu-retu[bench]')"
    else:  # chunked PyTorch (torch.compile'd where a compiler runs): it runs on any device
        fns["liger-grpo"] = _liger_grpo(compiled=backend.is_accelerator)
    return fns


def _liger_grpo(compiled: bool) -> Callable:
    """Liger's fused linear GRPO loss with the same clip, no KL, token-mean over the batch ("dapo")."""
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

    loss = LigerFusedLinearGRPOLoss(beta=0.0, use_ref_model=False, compiled=compiled, epsilon_low=CLIP["clip_low"],
                                    epsilon_high=CLIP["clip_high"], loss_type="dapo")
    return lambda h, w, y, old, adv, mask: loss(h, w, y, mask, adv[:, 0], old_per_token_logps=old)[0]


def _liger_logprobs(hidden, weight, targets):
    """Liger's fused linear cross-entropy with no reduction: -CE = the log-prob of the target."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return -liger_fused_linear_cross_entropy(hidden, weight, targets, reduction="none")


def run_kernel_bench(
    shapes: list[tuple[int, int]] | None = None,
    tokens: list[int] | None = None,
    dtype_name: str | list[str] | None = None,
    impls: list[str] | None = None,
    repeats: int | None = None,
    check_rows: int = 64,
    out_csv: str | None = None,
    log: Callable[[str], None] = print,
    ops: tuple[str, ...] = ("logprobs",),
    max_seconds: float | None = None,
) -> list[dict[str, Any]]:
    """Run the benchmark, print one line per measurement, save the CSV; returns the rows.

    ``dtype_name`` is one dtype or a list (default: bf16 and fp32 on an accelerator, fp32 on a CPU);
    ``ops`` any of :data:`OPS`; after ``max_seconds`` the remaining measurements are rows marked
    "not run: time limit" (the CSV is still written)."""
    import torch

    from npu_retu.device import get_backend

    backend = get_backend()
    accel = backend.is_accelerator
    shapes = shapes or (ACCELERATOR_SHAPES if accel else CPU_SHAPES)
    tokens = tokens or (ACCELERATOR_TOKENS if accel else CPU_TOKENS)
    if dtype_name is None:
        dtype_names = ["bfloat16", "float32"] if accel and backend.supports_bf16() else ["float32"]
    else:
        dtype_names = [dtype_name] if isinstance(dtype_name, str) else list(dtype_name)
    repeats = repeats or (10 if accel else 3)
    unknown_ops = sorted(set(ops) - set(OPS))
    if unknown_ops or not ops:
        raise ValueError(f"unknown op(s) {', '.join(unknown_ops) or '(none given)'}; choose from {', '.join(OPS)}")
    tables = {"logprobs": logprob_functions(backend), "policy-loss": policy_loss_functions(backend)}
    tables = {op: tables[op] for op in OPS if op in ops}
    if impls:
        known = {name for table in tables.values() for name in table}
        unknown = sorted(set(impls) - known)
        if unknown:
            raise ValueError(f"unknown implementation(s) {', '.join(unknown)}; choose from {', '.join(sorted(known))}")
        tables = {op: {k: v for k, v in table.items() if k in impls} for op, table in tables.items()}
    versions = backend.versions()
    common = {
        "date": datetime.date.today().isoformat(), "chip": backend.chip_name(), "device": str(backend.device()),
        "torch": torch.__version__, "triton": versions.get("triton", "-"), "liger_kernel": _version("liger-kernel"),
        "cut_cross_entropy": _version("cut-cross-entropy"),
    }
    log(f"bench kernels on {common['chip']} ({common['device']}), {', '.join(dtype_names)}, {repeats} timed runs each; {FLOP_NOTE}")
    started = time.perf_counter()
    rows = []
    for dtype_name_ in dtype_names:
        dtype = getattr(torch, dtype_name_)
        peak = backend.peak_flops(dtype)
        for hidden_size, vocab in shapes:
            for n_tokens in tokens:
                for op, table in tables.items():
                    for name, fn in table.items():
                        modes = ("forward", "forward+backward") if op == "logprobs" else ("forward+backward",)
                        for mode in modes:
                            row = {**common, "op": op, "impl": name, "hidden": hidden_size, "vocab": vocab, "tokens": n_tokens,
                                   "dtype": dtype_name_, "mode": mode}
                            if max_seconds is not None and time.perf_counter() - started > max_seconds:
                                row["status"] = f"not run: time limit ({max_seconds:.0f} s) reached"
                            elif isinstance(fn, str):
                                row["status"] = f"skipped: {fn}"
                            else:
                                measure = _measure if op == "logprobs" else _measure_policy_loss
                                row.update(measure(backend, fn, hidden_size, vocab, n_tokens, dtype, mode, repeats, check_rows))
                                if peak and row.get("status") == "ok":
                                    row["pct_of_peak"] = round(100 * row["tflops"] * 1e12 / peak, 1)
                            rows.append(row)
                            log(_format_row(row))
    if out_csv:
        path = Path(out_csv)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        with tmp.open("w", newline="") as f:
            f.write(f"# {FLOP_NOTE}; pct_of_peak against the chip's dense peak for the dtype; python {platform.python_version()}\n")
            writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(path)
        log(f"saved {len(rows)} rows to {path}")
    return rows


def _inputs(backend, hidden_size, vocab, n_tokens, dtype):
    import torch

    device = backend.device()
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(n_tokens, hidden_size, generator=gen).to(device=device, dtype=dtype)
    weight = (torch.randn(vocab, hidden_size, generator=gen) / hidden_size**0.5).to(device=device, dtype=dtype)
    targets = torch.randint(0, vocab, (n_tokens,), generator=gen).to(device)
    return hidden, weight, targets


def _timed(backend, once, repeats) -> tuple[Any, list[float], int, int]:
    """(the last result, the sorted times, allocated bytes before, peak bytes) of ``repeats`` runs after a warm-up."""
    result = once()  # warm-up (compilation, autotuning)
    backend.synchronize()
    del result
    gc.collect()
    before = backend.memory_stats()["allocated_bytes"]
    backend.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        backend.synchronize()
        t0 = time.perf_counter()
        result = once()
        backend.synchronize()
        times.append(time.perf_counter() - t0)
    return result, sorted(times), before, backend.memory_stats()["peak_allocated_bytes"]


def _figures(times, before, peak, flops) -> dict[str, Any]:
    median = statistics.median(times)
    return {
        "median_ms": round(median * 1e3, 3),
        "p20_ms": round(_quantile(times, 0.2) * 1e3, 3),
        "p80_ms": round(_quantile(times, 0.8) * 1e3, 3),
        "tflops": float(f"{flops / median / 1e12:.4g}"),  # 4 significant digits: tiny CPU shapes stay > 0
        "peak_mem_above_inputs_mib": round(max(0, peak - before) / 2**20, 1),
        "status": "ok",
    }


def _failed(e: BaseException) -> dict[str, Any]:  # out of memory is a result, not a crash
    return {"status": f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"}


def _measure(backend, fn, hidden_size, vocab, n_tokens, dtype, mode, repeats, check_rows) -> dict[str, Any]:
    import torch

    hidden, weight, targets = _inputs(backend, hidden_size, vocab, n_tokens, dtype)
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
        (logp, grad_h), times, before, peak = _timed(backend, once, repeats)
    except (RuntimeError, MemoryError) as e:
        return _failed(e)
    err_logp, err_dh = _errors(hidden, weight, targets, logp, grad_h, check_rows)
    out = _figures(times, before, peak, (6 if backward else 2) * n_tokens * hidden_size * vocab)
    out.update(max_err_logp=f"{err_logp:.2e}", max_err_dh=f"{err_dh:.2e}" if err_dh is not None else "")
    return out


def _loss_inputs(targets, seed=1):
    """old log-probs near -3, one advantage per sequence (+1 for the first of the two, -1 for the
    second), every token in the mask; ``targets`` is ``[2, T/2]`` (or ``[1, T]`` for an odd T)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    b, n = targets.shape
    old = (-3.0 + 0.3 * torch.randn(b, n, generator=gen)).to(targets.device)
    adv = torch.tensor([1.0, -1.0][:b])[:, None].expand(b, n).contiguous().to(targets.device)
    return old, adv, torch.ones(b, n, device=targets.device)


def _two_sequences(x):
    """``[T, ...]`` -> ``[2, T/2, ...]`` (``[1, T, ...]`` for an odd T)."""
    return x.reshape(2, x.shape[0] // 2, *x.shape[1:]) if x.shape[0] % 2 == 0 else x[None]


def _measure_policy_loss(backend, fn, hidden_size, vocab, n_tokens, dtype, mode, repeats, check_rows) -> dict[str, Any]:
    hidden, weight, targets = _inputs(backend, hidden_size, vocab, n_tokens, dtype)
    hidden, targets = _two_sequences(hidden).requires_grad_(), _two_sequences(targets)
    weight.requires_grad_()
    old, adv, mask = _loss_inputs(targets)

    def once():
        hidden.grad = weight.grad = None
        loss = fn(hidden, weight, targets, old, adv, mask)
        loss.backward()
        return loss.detach()

    try:
        _, times, before, peak = _timed(backend, once, repeats)
        err_loss, err_dh = _policy_errors(fn, hidden, weight, targets, check_rows)
    except (RuntimeError, MemoryError) as e:
        return _failed(e)
    out = _figures(times, before, peak, 6 * n_tokens * hidden_size * vocab)
    out.update(max_err_logp=f"{err_loss:.2e}", max_err_dh=f"{err_dh:.2e}")  # for this op: the loss's error
    return out


def _policy_errors(fn, hidden, weight, targets, rows):
    """|loss error| and max |dh error| of ``fn`` on the first ``rows`` tokens as a batch of their
    own, against the clipped loss computed in float64 on the CPU."""
    import torch

    from npu_retu.algos.policy_loss import clipped_policy_loss

    h = hidden[:, : max(1, rows // hidden.shape[0])].detach().clone().requires_grad_()
    y = targets[:, : h.shape[1]]
    old, adv, mask = _loss_inputs(y)
    loss = fn(h, weight.detach(), y, old, adv, mask)
    (dh,) = torch.autograd.grad(loss, [h])
    h64 = h.detach().cpu().double().requires_grad_()
    logp = torch.log_softmax(h64 @ weight.detach().cpu().double().T, dim=-1).gather(-1, y.cpu()[..., None]).squeeze(-1)
    want = clipped_policy_loss(logp, old.cpu().double(), adv.cpu().double(), mask.cpu().double(), **CLIP)[0]
    (want_dh,) = torch.autograd.grad(want, [h64])
    return abs(float(loss.detach().cpu().double() - want.detach())), float((dh.cpu().double() - want_dh).abs().max())


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
    head = (f"{row['op']:<11} {row['impl']:<17} {row['dtype']:<8} H={row['hidden']:<5} V={row['vocab']:<6} T={row['tokens']:<6} "
            f"{row['mode']:<17}")
    if row.get("status") != "ok":
        return f"{head} {row.get('status')}"
    return (
        f"{head} median {row['median_ms']:>9.1f} ms (p20 {row['p20_ms']:.1f}, p80 {row['p80_ms']:.1f})"
        f"  {row['tflops']:>7.3f} TFLOP/s" + (f" ({row['pct_of_peak']}% of peak)" if row.get("pct_of_peak") else "")
        + f"  peak +{row['peak_mem_above_inputs_mib']:>8.1f} MiB"
        + f"  err {'logp' if row['op'] == 'logprobs' else 'loss'} {row['max_err_logp']}" + (f" dh {row['max_err_dh']}" if row["max_err_dh"] else "")
    )


if __name__ == "__main__":  # python -m npu_retu.bench.kernels: the default run, saved beside the other benches
    run_kernel_bench(out_csv="runs/bench/kernels.csv", ops=OPS)
