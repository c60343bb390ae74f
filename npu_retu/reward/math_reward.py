"""Binary math reward: math-verify on the final answer, in worker processes with a hard timeout.

Why processes: math-verify's own timeout is ``signal.alarm``, which raises off the main thread and
does not stop every input (``\\boxed{\\dfrac{5^{(5^{(5^{5^5})} - 4)} - 5}{16}}`` runs for minutes
with it disabled). So verification runs with math-verify's timeouts switched off inside worker
processes; a worker that overruns its item's wall-clock budget is killed with SIGKILL and replaced,
and the item scores 0 with status ``timeout``.

Layers, bottom up:

* ``evaluate(response, ground_truths) -> RewardResult`` and ``score_one(...) -> float``: the pure
  scoring function, run inside a worker (or in-process by the benchmark).
* ``RewardPool``: N spawned workers, one item at a time each, hard per-item timeout, restarts.
* ``MathReward``: the ``Reward`` interface of DESIGN (``score(batch) -> list[float]``).
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from npu_retu.reward.extract import final_answer_text, truncate_for_log

logger = logging.getLogger(__name__)

STATUSES = ("ok", "no_answer", "timeout", "gold_unparsable", "error")


@dataclass(frozen=True)
class RewardResult:
    """One scored item. ``score`` is exactly 0.0 or 1.0; ``prediction`` is the extracted final answer
    shortened for logs (None when there was none); ``detail`` says what went wrong, if anything."""

    score: float
    status: str
    prediction: str | None
    detail: str | None = None


# --------------------------------------------------------------------------------------------
# scoring one item (runs inside a worker process)


@functools.cache
def _math_verify():
    """math-verify, imported on first use: it takes ~1 s and only workers and benchmarks need it."""
    import math_verify

    # It warns once that its timeout is disabled; we disable it on purpose (the pool enforces one).
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    return math_verify


def _as_latex(answer: str) -> str:
    """An answer as math-verify's LaTeX extractor reads it best: ``$\\boxed{...}$``.

    Surrounding ``$`` are dropped first (some golds are written ``$\\frac12$``); an answer that is
    already boxed is not boxed twice.
    """
    answer = answer.strip().strip("$").strip()
    if "\\boxed" not in answer:
        answer = "\\boxed{" + answer + "}"
    return "$" + answer + "$"


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> tuple:
    """A gold answer parsed once per worker (golds repeat across a prompt's n rollouts).

    Returns a tuple (cacheable); empty when math-verify finds nothing it can parse.
    """
    mv = _math_verify()
    return tuple(mv.parse(_as_latex(gold), parsing_timeout=None))


def evaluate(response: str, ground_truths: str | Sequence[str]) -> RewardResult:
    """Score ``response`` against any of ``ground_truths`` with math-verify; never raises.

    No timeout here: a caller that can meet hanging inputs must run this in a ``RewardPool``.
    A gold that math-verify cannot parse is reported (status ``gold_unparsable``), not silently
    scored as a wrong answer, unless another gold of the list matched.
    """
    golds = [ground_truths] if isinstance(ground_truths, str) else list(ground_truths)
    prediction = None
    try:
        answer = final_answer_text(response)
        prediction = truncate_for_log(answer) if answer is not None else None
        if not golds:
            return RewardResult(0.0, "gold_unparsable", prediction, "empty ground-truth list")
        parsed = [_parse_gold(gold) for gold in golds]
        bad = [truncate_for_log(gold, 80) for gold, p in zip(golds, parsed) if not p]
        detail = f"math-verify cannot parse gold {bad}" if bad else None
        if len(bad) == len(golds):
            return RewardResult(0.0, "gold_unparsable", prediction, detail)
        if answer is None:
            return RewardResult(0.0, "no_answer", None)
        mv = _math_verify()
        pred = mv.parse(_as_latex(answer), parsing_timeout=None)
        # verify(gold, target) is not symmetric: the gold goes first.
        if pred and any(mv.verify(list(gold), pred, timeout_seconds=None) for gold in parsed if gold):
            return RewardResult(1.0, "ok", prediction)
        if bad:  # the unparsable gold might have matched: the 0 is not trustworthy
            return RewardResult(0.0, "gold_unparsable", prediction, detail)
        return RewardResult(0.0, "ok", prediction)
    except Exception as e:  # a math-verify or sympy bug on one item must not stop training
        return RewardResult(0.0, "error", prediction, truncate_for_log(f"{type(e).__name__}: {e}", 200))


def score_one(response: str, ground_truths: str | Sequence[str]) -> float:
    """1.0 if the final answer of ``response`` equals one of ``ground_truths`` (math-verify), else 0.0."""
    return evaluate(response, ground_truths).score


# --------------------------------------------------------------------------------------------
# the worker process


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _exit_when_orphaned(parent_pid: int) -> None:
    """Make sure this worker dies with its parent (even a SIGKILLed one), even while it is stuck.

    A worker may be deep inside one sympy call that holds the GIL for minutes (a bignum power of
    the HANG input), so nothing that needs the GIL can be relied on. On Linux the kernel does it:
    ``PR_SET_PDEATHSIG`` sends us SIGKILL when our parent dies. It fires when the parent *thread*
    that started us exits, not the process, which is why ``RewardPool`` starts every worker from one
    thread that lives as long as the pool. A parent that died before the ``prctl`` call sends no
    signal, hence the ``getppid`` check right after it.

    Elsewhere (and should ``prctl`` fail) a watchdog thread polls ``getppid``: best effort, since it
    needs the GIL, which pure-Python loops hand over regularly but a long C call does not.
    """
    if sys.platform.startswith("linux"):
        try:
            prctl = ctypes.CDLL(None, use_errno=True).prctl
            prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
            if prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        except (OSError, AttributeError) as e:
            logger.warning("reward worker: prctl(PR_SET_PDEATHSIG) failed (%s); a hung worker may outlive its parent", e)
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(0)

    def watch():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(0)

    threading.Thread(target=watch, name="orphan-watchdog", daemon=True).start()


def _worker_main(conn, parent_pid: int) -> None:
    """Import and warm math-verify, say ``ready``, then score ``(job, response, golds)`` until None."""
    # Ctrl-C goes to the whole process group; the parent decides, and kills us if need be.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_when_orphaned(parent_pid)
    # Warm-up: the first parse loads the LaTeX grammar (~1 s); that must not count against an item.
    evaluate("\\boxed{\\frac{1}{2}}", ["0.5"])
    conn.send("ready")
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent closed its end
            return
        if message is None:
            return
        job, response, golds = message
        conn.send((job, evaluate(response, golds)))


# --------------------------------------------------------------------------------------------
# the pool


class _Worker:
    """Parent-side handle of one worker: its process, its pipe end and what it is doing."""

    def __init__(self, process, conn, start_deadline: float) -> None:
        self.process = process
        self.conn = conn
        self.state = "starting"  # -> "idle" on its ready message; "busy" while it holds an item
        self.deadline = start_deadline  # start-up deadline while starting, item deadline while busy
        self.job: int | None = None

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()  # SIGKILL: a hung sympy loop ignores nothing else reliably
        self.process.join(timeout=10)
        self.conn.close()


class _Spawner:
    """One daemon thread that starts every worker of a pool, and lives as long as the pool.

    A worker's parent-death signal fires when the *thread* that started it exits, and ``score``
    (which replaces killed workers) may run on a short-lived thread of the trainer; so workers are
    never started from the caller's thread. Daemon, because Python stops its non-daemon helper
    threads (a ``ThreadPoolExecutor``'s) at exit *before* joining the user's threads, which may
    still be scoring.
    """

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="reward-spawner", daemon=True)
        self._thread.start()

    def run(self, start: Callable[[], _Worker]) -> _Worker:
        """``start()`` on the spawner thread; its result, or its exception raised here."""
        if not self._thread.is_alive():
            raise RuntimeError("RewardPool is closed")
        future: Future = Future()
        self._requests.put((start, future))
        return future.result()

    def stop(self) -> None:
        self._requests.put(None)  # no join: this may run on the spawner thread itself (a GC there)

    def _serve(self) -> None:
        while (request := self._requests.get()) is not None:
            start, future = request
            try:
                future.set_result(start())
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                future.set_exception(e)
            del start, future, request  # hold no reference to the pool between requests


def _shutdown(workers: list[_Worker], spawner: _Spawner) -> None:
    """Ask every worker to exit, then kill the ones that do not (a busy worker may be hung)."""
    for worker in workers:
        if worker.state == "idle":
            try:
                worker.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
    deadline = time.monotonic() + 2.0
    for worker in workers:
        if worker.state == "idle":
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
        worker.kill()
    workers.clear()
    spawner.stop()


_STAT_KEYS = ("scored", "correct", "ok", "no_answer", "timeouts", "errors", "gold_unparsable", "worker_restarts")


class RewardPool:
    """``num_workers`` math-verify worker processes with a hard wall-clock timeout per item.

    Workers are spawned (not forked: the parent holds torch threads) at construction, import and
    warm math-verify, and are reused. ``score`` waits for them to be ready (up to
    ``start_timeout_s``) before handing out items; each item then has ``timeout_s`` seconds of its
    worker's time, after which the worker is killed and replaced and the item scores 0.0 with status
    ``timeout``. ``score`` may be called from several threads: calls are served one after another
    (each uses all workers). Workers die with the process that made the pool, even when it is
    SIGKILLed while they are stuck in a hanging input (see :func:`_exit_when_orphaned`).

    Spawned workers re-import the main module, so a script that makes a pool at top level needs
    the usual ``if __name__ == "__main__":`` guard (the ``npu-retu`` entry points have it).
    """

    def __init__(self, num_workers: int = 2, timeout_s: float = 5.0, start_timeout_s: float = 120.0) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1 (a hard timeout needs a worker process), got {num_workers}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.num_workers = num_workers
        self.timeout_s = float(timeout_s)
        self.start_timeout_s = float(start_timeout_s)
        self._ctx = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._jobs = itertools.count()
        self._stats = dict.fromkeys(_STAT_KEYS, 0)  # keys fixed up front: stats() may copy it any time
        self._warned_golds: set[str] = set()
        self._closed = False
        self._spawner = _Spawner()  # starts every worker, replacements included (see _Spawner)
        self._workers: list[_Worker] = [self._spawn() for _ in range(num_workers)]
        # Workers die with the pool even if close() is never called.
        self._finalizer = weakref.finalize(self, _shutdown, self._workers, self._spawner)

    # -- public API --------------------------------------------------------------------------

    def score(self, items: Iterable[tuple[str, str | Sequence[str]]]) -> list[RewardResult]:
        """Score ``(response, ground_truths)`` items; results in the order of ``items``."""
        items = [_check_item(i, item) for i, item in enumerate(items)]
        results: list[RewardResult | None] = [None] * len(items)
        with self._lock:
            if self._closed:
                raise RuntimeError("RewardPool is closed")
            pending = deque(range(len(items)))
            owner: dict[int, int] = {}  # job id -> index in `items`, for this call's jobs in flight
            while pending or owner:
                self._dispatch(items, pending, owner)
                self._collect(items, owner, results)
        return results  # type: ignore[return-value]  # every slot is filled when the loop ends

    def wait_ready(self) -> None:
        """Block until every worker has started (at most ``start_timeout_s``), e.g. before timing."""
        with self._lock:
            if self._closed:
                raise RuntimeError("RewardPool is closed")
            while any(w.state == "starting" for w in self._workers):
                self._collect([], {}, [])

    def stats(self) -> dict[str, int]:
        """Counts since construction: items scored, per status, and worker restarts."""
        return dict(self._stats)

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        with self._lock:
            self._closed = True
            self._finalizer()

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------

    def _spawn(self) -> _Worker:
        return self._spawner.run(self._start_worker)

    def _start_worker(self) -> _Worker:
        """Start one worker process; runs on the spawner thread only."""
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_worker_main, args=(child_conn, os.getpid()), name="npu-retu-reward-worker", daemon=True
        )
        process.start()
        child_conn.close()  # only the child holds its end, so its death reads as EOF here
        return _Worker(process, parent_conn, time.monotonic() + self.start_timeout_s)

    def _replace(self, worker: _Worker) -> None:
        """Kill ``worker`` and start a fresh one in its slot; it becomes usable once ready."""
        worker.kill()
        fresh = self._spawn()
        worker.process, worker.conn, worker.state = fresh.process, fresh.conn, fresh.state
        worker.deadline, worker.job = fresh.deadline, None
        self._stats["worker_restarts"] += 1

    def _dispatch(self, items, pending: deque, owner: dict[int, int]) -> None:
        """Hand pending items to idle workers."""
        for worker in self._workers:
            if not pending:
                return
            if worker.state != "idle":
                continue
            index = pending.popleft()
            job = next(self._jobs)
            try:
                worker.conn.send((job, *items[index]))
            except (BrokenPipeError, OSError):  # died while idle: the item was never seen, retry it
                pending.appendleft(index)
                self._replace(worker)
                continue
            worker.state, worker.job = "busy", job
            worker.deadline = time.monotonic() + self.timeout_s
            owner[job] = index

    def _collect(self, items, owner: dict[int, int], results: list) -> None:
        """Wait for the next message or deadline; record results, kill and replace overrunning workers."""
        waiting = [w for w in self._workers if w.state != "idle"]
        if not waiting:
            return
        wait_s = max(0.0, min(w.deadline for w in waiting) - time.monotonic())
        ready = set(multiprocessing.connection.wait([w.conn for w in waiting], timeout=wait_s))
        for worker in waiting:
            if worker.conn in ready:
                self._receive(worker, items, owner, results)
        now = time.monotonic()
        for worker in waiting:
            if worker.state == "idle" or worker.deadline > now:
                continue
            if worker.state == "starting":
                self._replace(worker)  # keep the pool usable for a later call
                raise RuntimeError(
                    f"a reward worker did not start within {self.start_timeout_s:.0f} s "
                    "(importing math-verify); is the machine overloaded?"
                )
            index = owner.pop(worker.job, None)  # None: a stale job of an interrupted call
            self._replace(worker)
            if index is not None:
                answer = final_answer_text(items[index][0])
                self._record(results, index, RewardResult(
                    0.0, "timeout", truncate_for_log(answer) if answer is not None else None,
                    f"verification exceeded {self.timeout_s:g} s; worker killed",
                ))

    def _receive(self, worker: _Worker, items, owner: dict[int, int], results: list) -> None:
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):  # the worker died (crash, out of memory)
            if worker.state == "starting":
                code = worker.process.exitcode
                self._replace(worker)
                raise RuntimeError(
                    f"a reward worker exited during start-up (exit code {code}); see its stderr. Workers are "
                    "spawned: a script that makes a RewardPool needs an `if __name__ == '__main__':` guard"
                ) from None
            index = owner.pop(worker.job, None)
            code = worker.process.exitcode
            self._replace(worker)
            if index is not None:
                self._record(results, index, RewardResult(0.0, "error", None, f"worker died (exit code {code})"))
            return
        if worker.state == "starting":  # its "ready"
            worker.state = "idle"
            return
        job, result = message
        worker.state, worker.job = "idle", None
        index = owner.pop(job, None)
        if index is not None:
            self._record(results, index, result)

    def _record(self, results: list, index: int, result: RewardResult) -> None:
        results[index] = result
        self._stats["scored"] += 1
        self._stats["correct"] += result.score == 1.0
        key = {"timeout": "timeouts", "error": "errors"}.get(result.status, result.status)
        self._stats[key] += 1
        if result.status == "gold_unparsable" and result.detail not in self._warned_golds:
            if len(self._warned_golds) < 1000:  # warn once per distinct gold (the set is bounded)
                self._warned_golds.add(result.detail)
            logger.warning("reward: %s; such items score 0.0", result.detail)


def _check_item(position: int, item) -> tuple[str, list[str]]:
    """``(response, ground_truths)`` with the golds as a list of str; a wrong type fails here, not in a worker."""
    try:
        response, golds = item
    except (TypeError, ValueError):
        raise TypeError(f"item {position}: expected (response, ground_truths), got {type(item).__name__}") from None
    golds = [golds] if isinstance(golds, str) else list(golds)
    if not isinstance(response, str) or not all(isinstance(g, str) for g in golds):
        raise TypeError(f"item {position}: response must be str and ground_truths str or list of str")
    return response, golds


# --------------------------------------------------------------------------------------------
# the Reward interface


class MathReward:
    """``Reward`` of DESIGN: ``score(batch of (response, ground_truth)) -> list[float]``, hard timeout.

    Uses ``pool`` if given (and leaves it open on ``close``), else owns a new ``RewardPool``.
    """

    name = "math_verify"

    def __init__(self, pool: RewardPool | None = None, *, num_workers: int = 2, timeout_s: float = 5.0) -> None:
        self._owns_pool = pool is None
        self.pool = pool if pool is not None else RewardPool(num_workers=num_workers, timeout_s=timeout_s)

    def score(self, batch: Iterable[tuple[str, str | Sequence[str]]]) -> list[float]:
        return [result.score for result in self.pool.score(batch)]

    def score_detailed(self, batch: Iterable[tuple[str, str | Sequence[str]]]) -> list[RewardResult]:
        return self.pool.score(batch)

    def stats(self) -> dict[str, int]:
        return self.pool.stats()

    def close(self) -> None:
        if self._owns_pool:
            self.pool.close()

    def __enter__(self) -> MathReward:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
