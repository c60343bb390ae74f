"""The online SFT phase monitor: decides, at each validation point, whether SFT should go on.

The offline labels (Eq. 13-17, :mod:`npu_retu.monitor.phases`) need ``L_min``, the minimum of the
*whole* curve, which is unknown while SFT runs. The monitor works from the running minimum
``m_k = min(L_0, ..., L_k)`` over the validation points seen so far, with tolerances ``delta``
(Stable, paper 0.02) and ``delta2`` (Severe, paper 0.1) and a ``patience`` in validation points.
At point ``k`` with loss ``L`` and running minimum ``m = m_k`` the decision is, in this order:

* **severe**: if ``L >= (1 + delta2) * m`` -> ``rollback`` to the pick among the points seen so far
  (the offline rules applied to the history so far: the stable pick, i.e. the lowest-loss point
  with a checkpoint within ``(1 + delta) * m``; in mild mode, the mild point already switched at
  if there is one, otherwise that same stable pick);
* **pick="stable"**: saturation = the running minimum has not improved by a relative margin larger
  than ``delta`` over the last ``patience`` validation points (i.e. ``m_{k-patience} <= (1 + delta) *
  m_k``, with at least ``patience + 1`` points seen) and ``L <= (1 + delta2) * m`` -> ``switch`` to the
  best-so-far checkpoint (lowest loss with a checkpoint; it lies within the Stable band of ``m``
  unless the lowest points have none, and then the monitor waits: ``continue``);
* **pick="mild"**: ``switch`` at the first point after the running minimum with
  ``(1 + delta) * m < L < (1 + delta2) * m`` that has a checkpoint (it becomes the pick), counted only
  once the running minimum has saturated (as above) - a bump while the minimum is still falling by
  more than ``delta`` is noise of the Adaptive sub-phase, not overfitting; a severe point before
  that -> ``rollback`` to the stable pick;
* otherwise ``continue``.

A rollback with nothing to roll back to (no checkpoint in the Stable band yet) still says
``rollback`` with ``checkpoint_step=None``: the loss blew up and the trainer must decide what to do.

Each :class:`Decision` also carries ``phase``, the monitor's online estimate for the current point:
``severe`` if ``L >= (1 + delta2) m``; else ``adaptive`` while the running minimum is still improving
by more than ``delta`` (not saturated); else ``stable`` if ``L <= (1 + delta) m``; else ``mild``.

After a switch or rollback the monitor keeps accepting observations (the trainer goes on when
``monitor.stop_on_decision`` is false) and keeps deciding by the same rule, but
:attr:`PhaseMonitor.first_decision` stays the first non-``continue`` decision: that is the one the
pipeline acts on. ``state_dict()`` / ``load_state_dict()`` are plain JSON-able dicts for an exact
resume.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Literal

from npu_retu.errors import UserError
from npu_retu.monitor.phases import (
    DEFAULT_DELTA,
    DEFAULT_DELTA2,
    PhaseReport,
    build_report,
    check_pick_mode,
    check_tolerances,
    within_severe_band,
    within_stable_band,
)

Action = Literal["continue", "switch", "rollback"]
STATE_VERSION = 1


@dataclass(frozen=True)
class Decision:
    """What the monitor says after one validation point."""

    step: int  # the step of the validation point this decision is about
    action: Action
    checkpoint_step: int | None  # where RL should start from (switch / rollback), else None
    phase: str  # online estimate for this point: adaptive | stable | mild | severe
    reason: str  # one sentence, for the log

    def to_dict(self) -> dict:
        return asdict(self)


class PhaseMonitor:
    """Online Stable / Mild / Severe detection on the SFT validation loss (see the module docstring)."""

    def __init__(
        self,
        delta: float = DEFAULT_DELTA,
        delta2: float = DEFAULT_DELTA2,
        patience: int = 3,
        pick: str = "stable",
    ):
        check_tolerances(delta, delta2)
        check_pick_mode(pick)
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise UserError(f"patience must be an integer >= 1, got {patience!r}")
        self.delta = float(delta)
        self.delta2 = float(delta2)
        self.patience = patience
        self.pick = pick
        self.history: list[tuple[int, float, float, bool]] = []  # (step, flops, loss, has_checkpoint)
        self.first_decision: Decision | None = None
        self._running_min: list[float] = []  # m_k for every k in history
        self._mild_pick: int | None = None  # the mild point switched at (pick="mild")

    # ----------------------------------------------------------------------------------------
    # observing

    def observe(self, step: int, flops: float, val_loss: float, has_checkpoint: bool = True) -> Decision:
        """Record one validation point and decide: continue, switch to RL, or roll back."""
        val_loss = self._check_point(step, val_loss)
        step = int(step)
        self.history.append((step, float(flops), val_loss, bool(has_checkpoint)))
        m = min(val_loss, self._running_min[-1]) if self._running_min else val_loss
        self._running_min.append(m)

        decision = self._decide(step, val_loss, m, bool(has_checkpoint))
        if self.first_decision is None and decision.action != "continue":
            self.first_decision = decision
        return decision

    def _check_point(self, step: int, val_loss: float) -> float:
        if isinstance(step, bool) or not isinstance(step, numbers.Integral):
            raise UserError(f"phase monitor: step must be an integer, got {step!r}")
        if self.history and step <= self.history[-1][0]:
            raise UserError(
                f"phase monitor: step {step} is not after the last observed step {self.history[-1][0]}; "
                "validation points must come in increasing step order"
            )
        if isinstance(val_loss, bool) or not isinstance(val_loss, numbers.Real):
            raise UserError(f"phase monitor: validation loss at step {step} is {val_loss!r}; expected a number")
        val_loss = float(val_loss)
        if not math.isfinite(val_loss) or val_loss <= 0:
            raise UserError(f"phase monitor: validation loss at step {step} is {val_loss!r}; it must be finite and > 0")
        return val_loss

    def saturated(self) -> bool:
        """m_{k-patience} <= (1 + delta) m_k, with at least patience + 1 points seen."""
        k = len(self._running_min) - 1
        if k < self.patience:
            return False
        return within_stable_band(self._running_min[k - self.patience], self._running_min[k], self.delta)

    def _phase(self, loss: float, m: float) -> str:
        if within_severe_band(loss, m, self.delta2):
            return "severe"
        if not self.saturated():
            return "adaptive"
        if within_stable_band(loss, m, self.delta):
            return "stable"
        return "mild"

    def _decide(self, step: int, loss: float, m: float, has_checkpoint: bool) -> Decision:
        phase = self._phase(loss, m)
        ratio = f"{loss:.4g} = {loss / m:.4f} x running min {m:.4g}"

        if phase == "severe":
            target = self._mild_pick if self._mild_pick is not None else self.stable_pick()
            where = f"checkpoint of step {target}" if target is not None else "no checkpoint (none in the Stable band yet)"
            return Decision(step, "rollback", target, phase,
                            f"severe overfitting: loss {ratio} >= 1 + delta2 = {1 + self.delta2:g}; roll back to {where}.")

        if self.pick == "stable" and self.saturated():
            target = self.stable_pick()
            if target is None:
                return Decision(step, "continue", None, phase,
                                f"saturated (loss {ratio}) but no point in the Stable band has a checkpoint yet; waiting for one.")
            return Decision(step, "switch", target, phase,
                            f"saturated: the running min improved by at most delta = {self.delta:g} over the last "
                            f"{self.patience} points; switch to the best checkpoint so far (step {target}).")

        if self.pick == "mild":
            if phase == "mild" and (has_checkpoint or self._mild_pick is not None):
                if self._mild_pick is None:
                    self._mild_pick = step
                return Decision(step, "switch", self._mild_pick, phase,
                                f"mild overfitting after saturation: loss {ratio} in (1 + delta, 1 + delta2); "
                                f"switch to the checkpoint of step {self._mild_pick}.")
            if phase == "mild":
                return Decision(step, "continue", None, phase,
                                f"mild overfitting (loss {ratio}) but this point has no checkpoint; waiting for one.")

        if phase == "adaptive":
            why = f"the running min {m:.4g} is still improving by more than delta = {self.delta:g}"
            if len(self._running_min) <= self.patience:
                why = f"fewer than patience + 1 = {self.patience + 1} validation points so far"
            return Decision(step, "continue", None, phase, f"adaptive: {why}; continue SFT.")
        return Decision(step, "continue", None, phase, f"{phase}: loss {ratio}; continue SFT.")

    # ----------------------------------------------------------------------------------------
    # picks and reports over the history

    def stable_pick(self) -> int | None:
        """The offline stable pick over the history so far (L_min = the running minimum)."""
        if not self.history:
            return None
        return self.offline_report(pick="stable").pick

    def offline_report(self, pick: str | None = None) -> PhaseReport:
        """Eq. 13-17 applied to the history so far (the labels the finished curve would get now)."""
        if not self.history:
            raise UserError("phase monitor: no validation point observed yet")
        steps, flops, losses, saved = (list(column) for column in zip(*self.history))
        return build_report(steps, flops, losses, saved, delta=self.delta, delta2=self.delta2,
                            pick=self.pick if pick is None else pick)

    # ----------------------------------------------------------------------------------------
    # resume

    def state_dict(self) -> dict:
        """Everything needed to resume exactly, as a JSON-able dict."""
        return {
            "version": STATE_VERSION,
            "delta": self.delta,
            "delta2": self.delta2,
            "patience": self.patience,
            "pick": self.pick,
            "history": [list(point) for point in self.history],
            "mild_pick": self._mild_pick,
            "first_decision": None if self.first_decision is None else self.first_decision.to_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`. The settings must match this monitor's: a resumed run
        that changed ``delta`` / ``delta2`` / ``patience`` / ``pick`` would judge the old points by
        different rules than the ones that made its first decision."""
        if state.get("version") != STATE_VERSION:
            raise UserError(f"phase monitor state: version {state.get('version')!r} is not {STATE_VERSION}")
        for key in ("delta", "delta2", "patience", "pick"):
            if state.get(key) != getattr(self, key):
                raise UserError(
                    f"phase monitor state: monitor.{key} is {state.get(key)!r} in the checkpoint but "
                    f"{getattr(self, key)!r} in the config; resume with the same value"
                )
        self.history = [(int(s), float(f), float(loss), bool(c)) for s, f, loss, c in state["history"]]
        self._running_min = []
        for _, _, loss, _ in self.history:
            self._running_min.append(min(loss, self._running_min[-1]) if self._running_min else loss)
        self._mild_pick = state["mild_pick"]
        first = state["first_decision"]
        self.first_decision = None if first is None else Decision(**first)
