"""Progress of long stages (SFT and RL steps, evaluations, the embedded build, experiment stages).

On a terminal: a tqdm bar with rate and ETA. Anywhere else (CI logs, ``nohup``, a pipe): one line on
stderr every ``interval_s`` seconds with the same facts, and one when the stage ends::

    rl steps: 12/40 (30%), 0.21 step/s, elapsed 57s, ETA 2m13s, reward 0.41

``interval_s`` defaults to ``NPU_RETU_PROGRESS_INTERVAL`` (seconds; 30 when unset, 0 for no lines).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

DEFAULT_INTERVAL_S = 30.0


def default_interval() -> float:
    """``NPU_RETU_PROGRESS_INTERVAL`` in seconds (30 when unset or not a number)."""
    try:
        return max(0.0, float(os.environ.get("NPU_RETU_PROGRESS_INTERVAL", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def format_seconds(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """``total`` units of work (``initial`` already done, e.g. after a resume) called ``desc``.

    ``update(n, **facts)`` counts ``n`` more units and shows ``facts`` (``loss="0.41"``) beside the
    rate; ``write(text)`` prints a line without breaking the bar; ``close()`` ends the stage (a last
    line off a terminal). Disabled (``enabled=False``), it prints nothing but ``write``'s lines.
    """

    def __init__(self, total: int, desc: str, *, unit: str = "step", initial: int = 0, enabled: bool = True,
                 interval_s: float | None = None, stream: TextIO | None = None, clock=time.monotonic) -> None:
        self.total, self.desc, self.unit, self.done = total, desc, unit, initial
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.interval_s = default_interval() if interval_s is None else interval_s
        self.facts: dict[str, Any] = {}
        self.enabled = enabled
        self._started = clock()
        self._initial = initial
        self._last_line = self._started
        self._closed = False
        self._bar = None
        if enabled and _is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, file=self.stream)

    def update(self, n: int = 1, **facts: Any) -> None:
        self.done += n
        self.facts.update(facts)
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            if facts:
                self._bar.set_postfix(self.facts, refresh=False)
            return
        now = self.clock()
        if self.interval_s > 0 and now - self._last_line >= self.interval_s:
            self._last_line = now
            self._print(self.line(now))

    def write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            self._print(text)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self.interval_s > 0 and self.done > self._initial:
            self._print(self.line(self.clock()) + " (done)" if self.done >= self.total else self.line(self.clock()))

    def line(self, now: float) -> str:
        """``desc: done/total (pct), rate unit/s, elapsed E, ETA T, facts`` at time ``now``."""
        elapsed = now - self._started
        counted = self.done - self._initial
        rate = counted / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {self.done}/{self.total}" + (f" ({100 * self.done / self.total:.0f}%)" if self.total else "")]
        if rate > 0:
            parts.append(f"{rate:.3g} {self.unit}/s" if rate >= 1 else f"{1 / rate:.3g} s/{self.unit}")
        parts.append(f"elapsed {format_seconds(elapsed)}")
        if rate > 0 and self.done < self.total:
            parts.append(f"ETA {format_seconds((self.total - self.done) / rate)}")
        parts += [f"{key} {value}" for key, value in self.facts.items()]
        return ", ".join(parts)

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
