"""Progress of long stages: a line every N seconds off a terminal, with rate and ETA (npu_retu.report.progress)."""

from __future__ import annotations

import io

from npu_retu.report.progress import Progress, format_seconds


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_lines_every_interval_with_rate_and_eta():
    clock, out = Clock(), io.StringIO()
    progress = Progress(10, "rl steps", interval_s=30, stream=out, clock=clock)
    clock.now = 10.0
    progress.update(1)  # 10 s in: before the first interval, no line
    assert out.getvalue() == ""
    clock.now = 40.0
    progress.update(3, acc="0.500")  # 4 steps in 40 s: 10 s/step, 6 left -> ETA 60 s
    assert out.getvalue() == "rl steps: 4/10 (40%), 10 s/step, elapsed 40s, ETA 1m00s, acc 0.500\n"
    clock.now = 50.0
    progress.update(1)  # 10 s after the last line: none
    assert out.getvalue().count("\n") == 1
    clock.now = 100.0
    progress.update(5)
    progress.close()
    last = out.getvalue().splitlines()[-1]
    assert last == "rl steps: 10/10 (100%), 10 s/step, elapsed 1m40s, acc 0.500 (done)"


def test_a_resumed_stage_counts_its_rate_from_where_it_resumed():
    clock, out = Clock(), io.StringIO()
    progress = Progress(100, "sft steps", initial=50, interval_s=1, stream=out, clock=clock)
    clock.now = 2.0
    progress.update(4)  # 4 steps in 2 s since the resume: 2 step/s, 46 left -> 23 s
    assert out.getvalue() == "sft steps: 54/100 (54%), 2 step/s, elapsed 2s, ETA 23s\n"


def test_disabled_prints_only_written_lines():
    clock, out = Clock(), io.StringIO()
    progress = Progress(3, "x", enabled=False, interval_s=0.001, stream=out, clock=clock)
    clock.now = 5.0
    progress.update(3)
    progress.write("val loss 0.1")
    progress.close()
    assert out.getvalue() == "val loss 0.1\n"


def test_format_seconds():
    assert [format_seconds(s) for s in (0, 42.4, 185, 3720)] == ["0s", "42s", "3m05s", "1h02m"]
