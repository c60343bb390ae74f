"""Offline SFT sub-phase labelling of a validation-loss curve (paper §6.2.1, Eq. 13-17).

With ``L_min`` the global minimum of the curve and tolerances ``(delta, delta2)`` (paper: 0.02, 0.1):

    T_stable = {x | L(x) <= (1 + delta) L_min}                                   (Eq. 13)
    T_mild   = {x | (1 + delta) L_min < L(x) < (1 + delta2) L_min}
    T_severe = {x | L(x) >= (1 + delta2) L_min}
    Adaptive = {x | x < min T_stable}                                            (Eq. 14)
    Stable   = T_stable                                                          (Eq. 15)
    Mild     = {x | x > max T_stable and x in T_mild}                            (Eq. 16)
    Severe   = {x | x > max T_stable and x in T_severe}                          (Eq. 17)

``x`` is the position on the compute axis, so "before" and "after" are the order of the points.

**Unassigned.** Eq. 13-17 leave one kind of point in no set: a point strictly between the first and
the last stable point whose loss is above ``(1 + delta) L_min`` (a bump between two saturated
stretches). It is not Adaptive (it is after ``min T_stable``), not Stable (its loss is too high) and
not Mild/Severe (it is before ``max T_stable``). We label it :attr:`SubPhase.UNASSIGNED` rather than
forcing it into a set the paper does not put it in.

**Boundaries** are inclusive exactly as Eq. 13 writes them: ``L == (1 + delta) L_min`` is Stable and
``L == (1 + delta2) L_min`` is Severe. The comparisons allow a relative slack of
:data:`RELATIVE_SLACK` (1e-9) so that a loss written in decimal as exactly on the boundary (say
1.65 with ``L_min`` = 1.5 and delta2 = 0.1) is not pushed to the other side by binary rounding of
``1.1 * 1.5``; no real validation loss is meaningful at that precision.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from enum import Enum
from typing import Sequence

from npu_retu.errors import UserError

DEFAULT_DELTA = 0.02
DEFAULT_DELTA2 = 0.1
PICK_MODES = ("stable", "mild")

# Relative slack on the Eq. 13 boundaries; see the module docstring.
RELATIVE_SLACK = 1e-9


class SubPhase(str, Enum):
    """The sub-phase of one point of an SFT validation-loss curve (Eq. 14-17)."""

    ADAPTIVE = "adaptive"
    STABLE = "stable"
    MILD = "mild"
    SEVERE = "severe"
    UNASSIGNED = "unassigned"  # between two stable points but above (1 + delta) L_min; see above

    def __str__(self) -> str:
        return self.value


# --------------------------------------------------------------------------------------------
# the Eq. 13 bands


def check_tolerances(delta: float, delta2: float) -> None:
    """Raise :class:`UserError` unless ``0 < delta < delta2`` (both finite)."""
    if not (isinstance(delta, (int, float)) and math.isfinite(delta) and delta > 0):
        raise UserError(f"delta must be a finite number > 0, got {delta!r}")
    if not (isinstance(delta2, (int, float)) and math.isfinite(delta2) and delta2 > delta):
        raise UserError(f"delta2 must be a finite number > delta={delta}, got {delta2!r}")


def check_pick_mode(pick: str) -> None:
    if pick not in PICK_MODES:
        raise UserError(f"pick must be one of {', '.join(PICK_MODES)}; got {pick!r}")


def within_stable_band(loss: float, reference: float, delta: float) -> bool:
    """``loss <= (1 + delta) * reference`` (Eq. 13, T_stable), with the boundary slack."""
    return loss <= (1.0 + delta) * reference * (1.0 + RELATIVE_SLACK)


def within_severe_band(loss: float, reference: float, delta2: float) -> bool:
    """``loss >= (1 + delta2) * reference`` (Eq. 13, T_severe), with the boundary slack."""
    return loss >= (1.0 + delta2) * reference * (1.0 - RELATIVE_SLACK)


def check_losses(losses: Sequence[float]) -> list[float]:
    """Return the losses as floats; raise :class:`UserError` naming the first bad index.

    A validation loss must be finite and > 0: the bands are ratios to ``L_min``.
    """
    if len(losses) == 0:
        raise UserError("the validation-loss curve is empty; need at least one point")
    values = []
    for index, loss in enumerate(losses):
        if isinstance(loss, bool) or not isinstance(loss, numbers.Real):
            raise UserError(f"validation loss at index {index} is {loss!r}; expected a number")
        loss = float(loss)
        if not math.isfinite(loss) or loss <= 0:
            raise UserError(f"validation loss at index {index} is {loss!r}; losses must be finite and > 0")
        values.append(loss)
    return values


# --------------------------------------------------------------------------------------------
# labelling and picking


def label_curve(losses: Sequence[float], delta: float = DEFAULT_DELTA, delta2: float = DEFAULT_DELTA2) -> list[SubPhase]:
    """Label each point of a validation-loss curve with its sub-phase (Eq. 13-17).

    ``losses`` are in increasing compute order; ``L_min`` is their global minimum. Points before the
    first stable point are Adaptive whatever their loss; points after the last stable point are Mild
    or Severe; points in between that are not stable are Unassigned (see the module docstring).
    """
    check_tolerances(delta, delta2)
    values = check_losses(losses)
    l_min = min(values)
    stable = [within_stable_band(loss, l_min, delta) for loss in values]
    first_stable = stable.index(True)  # the minimum itself is always stable
    last_stable = len(stable) - 1 - stable[::-1].index(True)

    phases = []
    for index, loss in enumerate(values):
        if stable[index]:
            phases.append(SubPhase.STABLE)
        elif index < first_stable:
            phases.append(SubPhase.ADAPTIVE)
        elif index > last_stable:
            phases.append(SubPhase.SEVERE if within_severe_band(loss, l_min, delta2) else SubPhase.MILD)
        else:
            phases.append(SubPhase.UNASSIGNED)
    return phases


def pick_checkpoint(
    steps: Sequence[int],
    losses: Sequence[float],
    phases: Sequence[SubPhase | str],
    has_checkpoint: Sequence[bool],
    pick: str = "stable",
) -> int | None:
    """The step of the checkpoint to start RL from, or ``None`` when no point qualifies.

    * ``pick="stable"`` (the paper's robust default, "train SFT to saturation"): among the Stable
      points that have a checkpoint, the one with the lowest validation loss; on a tie, the earlier.
    * ``pick="mild"`` (the paper's option for small or easy data, where the ceiling peak can sit in
      the Mild sub-phase): the FIRST Mild point that has a checkpoint - the least overfit of them;
      when no Mild point has a checkpoint, the stable pick above.
    """
    check_pick_mode(pick)
    if not (len(steps) == len(losses) == len(phases) == len(has_checkpoint)):
        raise UserError(
            f"steps, losses, phases and has_checkpoint must have the same length; got "
            f"{len(steps)}, {len(losses)}, {len(phases)}, {len(has_checkpoint)}"
        )
    phases = [SubPhase(p) for p in phases]
    if pick == "mild":
        for step, phase, saved in zip(steps, phases, has_checkpoint):
            if phase is SubPhase.MILD and saved:
                return int(step)
    best_step, best_loss = None, math.inf
    for step, loss, phase, saved in zip(steps, losses, phases, has_checkpoint):
        if phase is SubPhase.STABLE and saved and loss < best_loss:  # strict <: ties keep the earlier
            best_step, best_loss = int(step), loss
    return best_step


# --------------------------------------------------------------------------------------------
# the report


@dataclass
class PhaseReport:
    """A labelled curve: one entry per validation point in compute order, plus the pick."""

    steps: list[int]
    flops: list[float]
    losses: list[float]
    phases: list[SubPhase]
    has_checkpoint: list[bool]
    L_min: float  # noqa: N815 - the paper's name
    L_min_step: int
    delta: float
    delta2: float
    thresholds: dict[str, float] = field(default_factory=dict)  # {"stable": (1+δ)L_min, "severe": (1+δ2)L_min}
    pick_mode: str = "stable"
    pick: int | None = None  # the step of the picked checkpoint

    @property
    def pick_phase(self) -> SubPhase | None:
        """The sub-phase of the picked point (a mild pick falls back to a stable one)."""
        if self.pick is None:
            return None
        return self.phases[self.steps.index(self.pick)]

    def ratios(self) -> list[float]:
        """Each loss divided by ``L_min``."""
        return [loss / self.L_min for loss in self.losses]

    def to_dict(self) -> dict:
        """A JSON-able dict (sub-phases as strings)."""
        return {
            "steps": list(self.steps),
            "flops": list(self.flops),
            "losses": list(self.losses),
            "phases": [p.value for p in self.phases],
            "has_checkpoint": list(self.has_checkpoint),
            "L_min": self.L_min,
            "L_min_step": self.L_min_step,
            "delta": self.delta,
            "delta2": self.delta2,
            "thresholds": dict(self.thresholds),
            "pick_mode": self.pick_mode,
            "pick": self.pick,
            "pick_phase": None if self.pick_phase is None else self.pick_phase.value,
        }


def build_report(
    steps: Sequence[int],
    flops: Sequence[float],
    losses: Sequence[float],
    has_checkpoint: Sequence[bool] | None = None,
    *,
    delta: float = DEFAULT_DELTA,
    delta2: float = DEFAULT_DELTA2,
    pick: str = "stable",
) -> PhaseReport:
    """Label a curve (:func:`label_curve`) and pick its checkpoint (:func:`pick_checkpoint`).

    ``has_checkpoint=None`` means every point has one.
    """
    check_pick_mode(pick)
    values = check_losses(losses)
    if has_checkpoint is None:
        has_checkpoint = [True] * len(values)
    if not (len(steps) == len(flops) == len(values) == len(has_checkpoint)):
        raise UserError(
            f"steps, flops, losses and has_checkpoint must have the same length; got "
            f"{len(steps)}, {len(flops)}, {len(values)}, {len(has_checkpoint)}"
        )
    phases = label_curve(values, delta, delta2)
    l_min = min(values)
    return PhaseReport(
        steps=[int(s) for s in steps],
        flops=[float(f) for f in flops],
        losses=values,
        phases=phases,
        has_checkpoint=[bool(h) for h in has_checkpoint],
        L_min=l_min,
        L_min_step=int(steps[values.index(l_min)]),
        delta=float(delta),
        delta2=float(delta2),
        thresholds={"stable": (1.0 + delta) * l_min, "severe": (1.0 + delta2) * l_min},
        pick_mode=pick,
        pick=pick_checkpoint(steps, values, phases, has_checkpoint, pick),
    )
