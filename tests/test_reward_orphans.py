"""Reward workers never outlive their parent: not when it is SIGKILLed while they are stuck in a
hanging input, and not wrongly when the thread that made or fed the pool exits."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from npu_retu.reward import RewardPool

# Runs for minutes in math-verify with its timeouts disabled, inside C code that holds the GIL.
HANG = r"\boxed{\dfrac{5^{(5^{(5^{5^5})} - 4)} - 5}{16}}"

PARENT_SCRIPT = f"""
from npu_retu.reward import RewardPool

if __name__ == "__main__":
    pool = RewardPool(num_workers=2, timeout_s=600, start_timeout_s=60)
    pool.wait_ready()
    print(" ".join(str(worker.process.pid) for worker in pool._workers), flush=True)
    pool.score([({HANG!r}, ["1"]), ({HANG!r}, ["1"])])  # both workers stuck for minutes
"""

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG is Linux-only")


def process_state(pid: int) -> str | None:
    """The state letter of ``/proc/<pid>/stat`` (R running, S sleeping, Z zombie...); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]  # after "(comm)", which may itself contain spaces


def is_gone(pid: int) -> bool:
    """Dead: no process, or a zombie (dead, waiting to be reaped; an init that never reaps keeps it)."""
    return process_state(pid) in (None, "Z", "X")


def test_workers_die_within_seconds_of_a_sigkilled_parent(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT)
    stderr = (tmp_path / "stderr.txt").open("w")
    parent = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=stderr, text=True)
    workers: list[int] = []
    try:
        ready, _, _ = select.select([parent.stdout], [], [], 90)
        line = parent.stdout.readline() if ready else ""
        assert line, f"the parent printed no worker pids; its stderr:\n{(tmp_path / 'stderr.txt').read_text()}"
        workers = [int(pid) for pid in line.split()]
        assert len(workers) == 2
        # Wait until both are busy on the hanging input (running, not waiting for an item), then a bit
        # longer, so that they are deep inside math-verify when the parent dies.
        deadline = time.monotonic() + 15
        while not all(process_state(pid) == "R" for pid in workers):
            assert time.monotonic() < deadline, f"workers never busy: {[process_state(pid) for pid in workers]}"
            time.sleep(0.05)
        time.sleep(1.0)
        assert all(process_state(pid) == "R" for pid in workers), "a worker finished the hanging input?"

        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        killed_at = time.monotonic()
        while not all(is_gone(pid) for pid in workers) and time.monotonic() - killed_at < 5.0:
            time.sleep(0.05)
        survivors = {pid: process_state(pid) for pid in workers if not is_gone(pid)}
        assert survivors == {}, f"workers still alive 5 s after their parent was SIGKILLed (pid: state): {survivors}"
    finally:
        parent.kill()
        parent.wait()
        stderr.close()
        for pid in workers:  # never leave a hung worker spinning on a shared machine
            if not is_gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_workers_outlive_the_short_lived_threads_that_start_and_replace_them():
    """A worker's parent-death signal is tied to the thread that started it: a pool made on one thread
    and fed (with a hang, so a worker is replaced) from another must keep its workers when those
    threads end."""
    made: list[RewardPool] = []
    results: list = []

    def make() -> None:
        made.append(RewardPool(num_workers=2, timeout_s=1.0))
        made[0].wait_ready()  # live on until the workers have armed their signal (a real caller would)

    def score() -> None:
        results.extend(pool.score([(HANG, ["1"]), ("\\boxed{2}", ["2"])]))
        pool.wait_ready()  # the same for the replacement of the hung worker

    maker = threading.Thread(target=make)
    maker.start()
    maker.join(timeout=60)
    [pool] = made
    try:
        scorer = threading.Thread(target=score)
        scorer.start()
        scorer.join(timeout=60)
        assert [(r.score, r.status) for r in results] == [(0.0, "timeout"), (1.0, "ok")]
        assert pool.stats()["worker_restarts"] == 1  # the hung worker, replaced from the scorer thread
        pids = [worker.process.pid for worker in pool._workers]
        time.sleep(0.5)  # both threads are gone: a signal tied to them would have fired by now
        assert [worker.process.is_alive() for worker in pool._workers] == [True, True]
        results = pool.score([("\\boxed{3}", ["3"]), ("\\boxed{4}", ["5"])])
        assert [(r.score, r.status) for r in results] == [(1.0, "ok"), (0.0, "ok")]
        assert [worker.process.pid for worker in pool._workers] == pids
        assert pool.stats()["worker_restarts"] == 1
    finally:
        pool.close()
