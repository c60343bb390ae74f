"""The checks of ``npu-retu doctor``: which backend this machine gets, the versions of its whole
stack, whether the device computes correctly (a small matmul and the fused kernels checked against a
CPU float64 reference), whether the collectives work (a real all-reduce across the visible devices),
and whether a Ray cluster is reachable. Every check is a plain JSON-ready dict with ``name``,
``device`` and ``ok`` (and ``error`` when it failed); :func:`diagnose` returns the whole report, and
:mod:`npu_retu.report.doctor_text` prints it.

A Ray cluster that is not running is information, not a failure, unless an address was asked for.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

MATMUL_SIZE = 64
# fp32 allows TF32 (10-bit mantissa) in case a user enabled it; bf16 allows its 8-bit mantissa
# on inputs and output (entries are O(5) for a 64-long dot of U(-1, 1) values).
MATMUL_TOLERANCE = {"float32": 1e-2, "bfloat16": 1e-1}

CPU_WORLD_SIZE = 2  # ranks of the all-reduce on the CPU (gloo), where there is no device count
COLLECTIVE_TIMEOUT_S = 60.0
RAY_TIMEOUT_S = 15.0
RAY_INSTALL_HINT = "not installed (pip install 'npu-retu[distributed]')"
RAY_NO_CLUSTER = "no running Ray cluster (start one with scripts/launch.sh)"
_RAY_MARKER = "npu-retu-doctor-ray: "


def diagnose(
    device: str = "auto",
    *,
    collectives: bool = True,
    world_size: int | None = None,
    collective_timeout_s: float = COLLECTIVE_TIMEOUT_S,
    ray_address: str | None = None,
    ray_timeout_s: float = RAY_TIMEOUT_S,
    skip_ray: bool = False,
) -> dict[str, Any]:
    """The doctor's report: ``device`` (the backend's description), ``versions`` (the whole stack,
    None for what is missing), ``warnings`` (logged while picking the backend), ``checks`` (the
    matmuls and kernels, the all-reduce unless ``collectives`` is off, the Ray connection when an
    address was asked for), ``ray`` (what the probe found) and ``ok`` (every check passed).

    A ``device`` that cannot load raises the device layer's :class:`UserError`.
    """
    from npu_retu.device import detect_backend

    with collect_warnings("npu_retu.device") as warnings:
        backend = detect_backend(device)
    description = backend.describe(include_versions=False)
    versions = backend.versions(include_missing=True)
    checks = device_checks(backend)
    if collectives:
        checks.append(collective_check(backend, world_size, collective_timeout_s))
    ray_report = ray_status(backend, ray_address, ray_timeout_s, skip=skip_ray)
    ray_check = ray_report.pop("check")
    if ray_check is not None:
        checks.append(ray_check)
    report = {"device": description, "versions": versions, "warnings": warnings, "checks": checks, "ray": ray_report}
    report["ok"] = all(check["ok"] for check in report["checks"])
    return report


def device_checks(backend: Any) -> list[dict[str, Any]]:
    """The matmuls (float32, and bfloat16 where supported) and the fused kernels on the device."""
    checks = [matmul_check(backend, "float32")]
    if backend.supports_bf16():
        checks.append(matmul_check(backend, "bfloat16"))
    checks += kernel_checks(backend)
    return checks


def kernel_checks(backend: Any) -> list[dict[str, Any]]:
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


def matmul_check(backend: Any, dtype_name: str) -> dict[str, Any]:
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


# ------------------------------------------------------------------------------------------------
# collectives


def collective_world_size(backend: Any, requested: int | None = None) -> int:
    """Ranks of the all-reduce: one per visible device (at most ``requested``) on an accelerator,
    ``requested`` or :data:`CPU_WORLD_SIZE` processes on the CPU."""
    if backend.is_accelerator:
        count = backend.device_count()
        return min(count, requested) if requested else count
    return requested or CPU_WORLD_SIZE


def collective_check(
    backend: Any,
    world_size: int | None = None,
    timeout_s: float = COLLECTIVE_TIMEOUT_S,
    *,
    worker: Callable[..., None] | None = None,
) -> dict[str, Any]:
    """Spawn one process per rank, join the job's process group with the backend's collectives
    library (gloo / nccl / hccl) and all-reduce ``rank + 1`` on each rank's device with SUM (HCCL
    has no AVG on every version): every rank must hold W(W+1)/2.

    Never hangs: after ``timeout_s`` the ranks still running are terminated and the check fails
    saying which ranks did not answer. ``worker(backend_name, rank, world_size, port, timeout_s,
    results)`` is the per-rank function (the injection point for tests); it must be importable by
    a spawned process and put one dict with ``rank`` and ``value`` or ``error`` on ``results``.
    """
    import torch.multiprocessing as mp

    world = collective_world_size(backend, world_size)
    expected = world * (world + 1) / 2
    check: dict[str, Any] = {"name": f"all-reduce ({backend.dist_backend}, {world} rank{'s' if world != 1 else ''})",
                             "device": backend.device_type, "ranks": world, "expected": expected,
                             "result": None, "all_reduce_s": None, "seconds": 0.0, "ok": False}
    if world < 1:
        check["error"] = f"no visible {backend.device_type} device to run it on"
        return check

    start = time.perf_counter()
    context = mp.get_context("spawn")  # a fork would inherit an initialised device runtime
    results = context.Queue()
    from npu_retu.distributed.process_group import free_port

    port = free_port()
    processes = [
        context.Process(target=worker or _all_reduce_worker, args=(backend.name, rank, world, port, timeout_s, results),
                        name=f"doctor-all-reduce-rank{rank}")
        for rank in range(world)
    ]
    answers: dict[int, dict[str, Any]] = {}
    exited: dict[int, int] = {}  # exit codes of the ranks that ended on their own
    try:
        for process in processes:
            process.start()
        deadline = start + timeout_s
        while len(answers) < world and time.perf_counter() < deadline:
            try:
                answer = results.get(timeout=min(0.2, max(0.0, deadline - time.perf_counter())))
            except queue.Empty:
                # a rank that died without answering (a crash in the runtime) leaves the others
                # waiting for it until the timeout: stop now and say so
                if any(p.exitcode not in (None, 0) and i not in answers for i, p in enumerate(processes)):
                    break
                continue
            answers[answer["rank"]] = answer
            if "error" in answer:
                break  # the other ranks now wait for this one: no need to sit out the timeout
        if len(answers) == world and not any("error" in a for a in answers.values()):
            for process in processes:  # they finish by destroying the group: give them a moment
                process.join(timeout=max(1.0, deadline - time.perf_counter()))
    finally:
        exited = {i: p.exitcode for i, p in enumerate(processes) if p.pid is not None and p.exitcode is not None}
        _stop(processes)
        results.cancel_join_thread()
        results.close()
    check["seconds"] = time.perf_counter() - start

    errors = [f"rank {rank}: {answer['error']}" for rank, answer in sorted(answers.items()) if "error" in answer]
    missing = [rank for rank in range(world) if rank not in answers]
    if errors:
        check["error"] = "; ".join(errors)
    elif missing:
        crashed = [f"rank {i} exited with code {exited[i]}" for i in missing if exited.get(i, 0) != 0]
        if crashed:
            check["error"] = "; ".join(crashed) + " without an answer"
        else:
            check["error"] = (f"timed out after {timeout_s:g} s: rank{'s' if len(missing) > 1 else ''} "
                              f"{', '.join(map(str, missing))} did not answer (hung in the rendezvous at 127.0.0.1:{port} "
                              "or in the all-reduce; raise --collective-timeout on a slow start)")
    else:
        values = [answers[rank]["value"] for rank in range(world)]
        check["result"] = values
        check["all_reduce_s"] = max(answers[rank]["seconds"] for rank in range(world))
        check["device"] = answers[0].get("device", check["device"])
        check["ok"] = all(value == expected for value in values)
        if not check["ok"]:
            check["error"] = f"sums {values} differ from {expected:g}"
    return check


def _all_reduce_worker(backend_name: str, rank: int, world_size: int, port: int, timeout_s: float, results: Any) -> None:
    """One rank of :func:`collective_check` (runs in a spawned process)."""
    os.dup2(2, 1)  # keep the parent's stdout clean: `doctor --json` prints there
    try:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        import torch.distributed as dist

        from npu_retu.device import detect_backend
        from npu_retu.distributed.process_group import destroy_process_group, ensure_single_process_group, init_process_group

        backend = detect_backend(backend_name)  # the same family the parent checked
        init_process_group(backend, timeout_s=timeout_s)
        # one rank: init_process_group leaves it alone, but the doctor still wants the library
        ensure_single_process_group(backend, timeout_s=timeout_s)
        torch = backend.torch
        tensor = torch.full((1,), float(rank + 1), dtype=torch.float32, device=backend.device())
        backend.synchronize()
        start = time.perf_counter()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        backend.synchronize()
        seconds = time.perf_counter() - start
        results.put({"rank": rank, "value": float(tensor.item()), "seconds": seconds, "device": str(tensor.device)})
        destroy_process_group()
    except BaseException as e:  # report everything, KeyboardInterrupt included: the parent is waiting
        results.put({"rank": rank, "error": f"{type(e).__name__}: {_first_line(e)}"})


def _stop(processes: list[Any]) -> None:
    """Terminate the ranks still running, then kill the ones that ignore it."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        if process.pid is None:
            continue  # never started
        process.join(timeout=3)
        if process.is_alive():
            process.kill()
            process.join(timeout=3)


# ------------------------------------------------------------------------------------------------
# ray


def ray_status(backend: Any, address: str | None = None, timeout_s: float = RAY_TIMEOUT_S, *, skip: bool = False) -> dict[str, Any]:
    """Can this node reach a Ray cluster, and what does the cluster hold?

    ``address`` None means $RAY_ADDRESS, else 'auto' (a cluster started on this node). Ray missing
    or no cluster running is information; an unreachable ``address`` given explicitly adds a failed
    check under the key ``check``. The probe runs in a subprocess with Ray's GCS connect timeouts
    shortened and a hard ``timeout_s``: Ray retries an unreachable address for minutes, and one
    of its timeouts ends the whole process.
    """
    import importlib.util

    explicit = address is not None
    resolved = address if explicit else (os.environ.get("RAY_ADDRESS") or "auto")
    status: dict[str, Any] = {"address": resolved, "explicit": explicit, "status": "skipped", "message": "skipped",
                              "alive_nodes": None, "resources": None, "seconds": 0.0, "check": None}
    if skip:
        return status
    if importlib.util.find_spec("ray") is None:
        status.update(status="not installed", message=RAY_INSTALL_HINT)
        if explicit:
            status["check"] = _ray_check(resolved, False, f"ray {RAY_INSTALL_HINT}", 0.0)
        return status

    start = time.perf_counter()
    probe = _run_ray_probe(resolved, backend.ray_resource, timeout_s)
    status["seconds"] = time.perf_counter() - start
    if probe.get("status") == "connected":
        status.update(status="connected", alive_nodes=probe["alive_nodes"], resources=probe["resources"],
                      gcs_address=probe.get("gcs_address"))
        resources = ", ".join(f"{name} {value:g}" for name, value in probe["resources"].items())
        nodes = probe["alive_nodes"]
        status["message"] = f"connected: {nodes} alive node{'s' if nodes != 1 else ''}; {resources}"
        if explicit:
            status["check"] = _ray_check(resolved, True, None, status["seconds"])
        return status
    error = probe.get("error") or "no answer"
    if explicit:
        status.update(status="failed", message=f"cannot connect to {resolved}: {error}")
        status["check"] = _ray_check(resolved, False, status["message"], status["seconds"])
    else:
        # no cluster here: say so (with what ray said when it found one that does not answer)
        status.update(status="no cluster", message=RAY_NO_CLUSTER if probe.get("status") == "unreachable"
                      and "Could not find any running Ray instance" in error else f"{RAY_NO_CLUSTER}; ray said: {error}")
    return status


def _ray_check(address: str, ok: bool, error: str | None, seconds: float) -> dict[str, Any]:
    check: dict[str, Any] = {"name": f"ray connect {address}", "device": "-", "ok": ok, "seconds": seconds}
    if error:
        check["error"] = error
    return check


def _run_ray_probe(address: str, resource: str | None, timeout_s: float) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # ray.init prefers it over its address argument
    # One GCS connection attempt (RAY_gcs_server_port_wait_time_s) bounded by short channel and
    # Python-client timeouts: an unreachable address then fails in seconds instead of minutes.
    # The user's own settings win.
    env.setdefault("RAY_gcs_server_port_wait_time_s", "1")
    env.setdefault("RAY_gcs_rpc_server_connect_timeout_s", "1")
    env.setdefault("RAY_py_gcs_connect_timeout_s", str(max(1, min(5, int(timeout_s / 3)))))
    package_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    code = "import sys; from npu_retu.doctor import _ray_probe_main; _ray_probe_main(sys.argv[1], sys.argv[2])"
    try:
        done = subprocess.run([sys.executable, "-c", code, address, resource or ""], capture_output=True, text=True,
                              timeout=timeout_s, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "error": f"no answer within {timeout_s:g} s (raise --ray-timeout for a slow cluster)"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(_RAY_MARKER):
            return json.loads(line[len(_RAY_MARKER):])
    said = [line for line in done.stderr.splitlines() if line.strip()]
    return {"status": "error", "error": f"the probe exited with code {done.returncode}" + (f": {said[-1].strip()}" if said else "")}


def _ray_probe_main(address: str, resource: str) -> None:
    """Runs in the probe subprocess: connect, count, disconnect; one JSON line on stdout."""
    result: dict[str, Any]
    try:
        import ray

        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        try:
            total = ray.cluster_resources()
            names = ["CPU"] + ([resource] if resource else [])
            context = ray.get_runtime_context()
            result = {
                "status": "connected",
                "gcs_address": getattr(context, "gcs_address", None),
                "alive_nodes": sum(1 for node in ray.nodes() if node.get("Alive")),
                "resources": {name: float(total.get(name, 0.0)) for name in names},
            }
        finally:
            ray.shutdown()
    except ConnectionError as e:
        result = {"status": "unreachable", "error": _first_line(e)}
        if _is_auth_failure(e):
            result["error"] += (f"; the cluster wants a token: set RAY_AUTH_MODE=token (now "
                                f"{os.environ.get('RAY_AUTH_MODE', 'unset')}) and RAY_AUTH_TOKEN or ~/.ray/auth_token")
    except Exception as e:
        result = {"status": "error", "error": f"{type(e).__name__}: {_first_line(e)}"}
    print(_RAY_MARKER + json.dumps(result), flush=True)


def _is_auth_failure(error: BaseException) -> bool:
    """Ray's token authentication rejected us (the text of the error or of its cause says so):
    since Ray 2.5x a cluster started by ray.init() uses tokens, and a driver that connects to an
    explicit address sends one only with RAY_AUTH_MODE=token."""
    texts = [str(error), str(error.__cause__ or "")]
    return any(word in text for text in texts for word in ("InvalidAuthToken", "Unauthenticated", "AuthenticationError"))


def _first_line(error: BaseException) -> str:
    """The first line of an error's text, with the first line of its cause (Ray wraps the reason
    a connection failed in a generic ConnectionError)."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    cause = error.__cause__
    if cause is not None:  # its text can embed a traceback: the last line is the error itself
        cause_lines = [line.strip() for line in str(cause).strip().splitlines() if line.strip()]
        text += f" ({cause_lines[-1] if cause_lines else type(cause).__name__})"
    return text


# ------------------------------------------------------------------------------------------------
# warnings


class _ListHandler(logging.Handler):
    def __init__(self, messages: list[str]):
        super().__init__(logging.WARNING)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def collect_warnings(logger_name: str) -> Iterator[list[str]]:
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
