"""The SFT phase monitor: offline Eq. 13-17 labels, checkpoint picks, online decisions, resume.

Every expected label and decision below is worked out by hand in the comments next to the curve.
"""

from __future__ import annotations

import json
import math

import pytest

from npu_retu.errors import UserError
from npu_retu.monitor import Decision, PhaseMonitor, SubPhase, build_report, label_curve, pick_checkpoint

A, S, M, V, U = SubPhase.ADAPTIVE, SubPhase.STABLE, SubPhase.MILD, SubPhase.SEVERE, SubPhase.UNASSIGNED

# U-shaped curve, delta = 0.02, delta2 = 0.1: L_min = 1.0 (index 5), stable band <= 1.02, severe >= 1.1.
# T_stable = {4, 5, 6}; before 4 -> Adaptive; after 6: 1.03, 1.06 Mild; 1.12, 1.3 Severe.
U_LOSSES = [2.0, 1.5, 1.2, 1.05, 1.01, 1.0, 1.015, 1.03, 1.06, 1.12, 1.3]
U_PHASES = [A, A, A, A, S, S, S, M, M, V, V]
U_STEPS = [100 * (i + 1) for i in range(len(U_LOSSES))]


# --------------------------------------------------------------------------------------------
# offline labels


def test_u_shaped_curve_covers_all_four_sub_phases():
    assert label_curve(U_LOSSES) == U_PHASES
    assert label_curve(U_LOSSES, 0.02, 0.1) == U_PHASES


def test_tolerances_move_the_bands():
    # delta = 0.05, delta2 = 0.2: stable <= 1.05 -> {3..7}; after 7: 1.06, 1.12 Mild (< 1.2), 1.3 Severe.
    assert label_curve(U_LOSSES, delta=0.05, delta2=0.2) == [A, A, A, S, S, S, S, S, M, M, V]


def test_monotone_decreasing_curve_is_adaptive_then_stable_only():
    # L_min = 1.05 (the last point); stable band <= 1.071, so 1.1 is still Adaptive.
    losses = [3.0, 2.0, 1.5, 1.2, 1.1, 1.05]
    assert label_curve(losses) == [A, A, A, A, A, S]
    report = build_report([1, 2, 3, 4, 5, 6], [0.0] * 6, losses)
    assert report.L_min == 1.05 and report.L_min_step == 6 and report.pick == 6


def test_excursion_between_stable_points_is_unassigned():
    # Stable = {1, 2, 4}; index 3 (1.05 > 1.02) is after min T_stable and before max T_stable.
    assert label_curve([2.0, 1.0, 1.01, 1.05, 1.015, 1.2]) == [A, S, S, U, S, V]


def test_boundaries_are_inclusive_as_eq13_writes_them():
    # (1+0.02)*1.0 = 1.02 -> Stable (<=); 1.0201 -> Mild; 1.0999 -> Mild; (1+0.1)*1.0 = 1.1 -> Severe (>=).
    assert label_curve([1.5, 1.0, 1.02, 1.0201, 1.0999, 1.1]) == [A, S, S, M, M, V]
    # Before the first stable point every point is Adaptive, even one in the severe band.
    assert label_curve([1.1, 1.5, 1.0]) == [A, A, S]


def test_decimal_boundaries_survive_binary_rounding():
    # With L_min = 1.5: 1.02 * 1.5 and 1.1 * 1.5 are the decimals 1.53 and 1.65; the second is not exact
    # in binary, and a loss logged as 1.65 must still be Severe.
    assert (1 + 0.1) * 1.5 != 1.65
    assert label_curve([2.0, 1.5, 1.53, 1.64, 1.65]) == [A, S, S, M, V]


def test_single_point_is_stable():
    assert label_curve([0.7]) == [S]


@pytest.mark.parametrize("bad, index", [([1.0, 0.9, math.nan], 2), ([1.0, 0.0], 1), ([-1.0], 0), ([1.0, math.inf], 1), ([1.0, "x"], 1)])
def test_bad_losses_name_the_index(bad, index):
    with pytest.raises(UserError, match=rf"index {index}\b"):
        label_curve(bad)


def test_bad_tolerances_and_empty_curve():
    with pytest.raises(UserError, match="delta2"):
        label_curve([1.0], delta=0.1, delta2=0.1)
    with pytest.raises(UserError, match="delta must be"):
        label_curve([1.0], delta=0.0)
    with pytest.raises(UserError, match="empty"):
        label_curve([])


# --------------------------------------------------------------------------------------------
# picks


def test_stable_pick_is_the_lowest_stable_loss_with_a_checkpoint():
    saved = [True] * len(U_LOSSES)
    assert pick_checkpoint(U_STEPS, U_LOSSES, U_PHASES, saved) == 600  # index 5, loss 1.0
    saved[5] = False  # then 1.01 (step 500) beats 1.015 (step 700)
    assert pick_checkpoint(U_STEPS, U_LOSSES, U_PHASES, saved) == 500
    saved[4] = saved[6] = False  # no stable point has a checkpoint
    assert pick_checkpoint(U_STEPS, U_LOSSES, U_PHASES, saved) is None


def test_stable_pick_tie_goes_to_the_earlier_point():
    losses = [2.0, 1.0, 1.01, 1.0, 1.3]
    phases = label_curve(losses)
    assert phases == [A, S, S, S, V]
    assert pick_checkpoint([1, 2, 3, 4, 5], losses, phases, [True] * 5) == 2
    assert pick_checkpoint([1, 2, 3, 4, 5], losses, phases, [True, False, True, True, True]) == 4


def test_mild_pick_is_the_first_mild_checkpoint_else_the_stable_pick():
    saved = [True] * len(U_LOSSES)
    assert pick_checkpoint(U_STEPS, U_LOSSES, U_PHASES, saved, pick="mild") == 800  # 1.03
    saved[7] = False
    assert pick_checkpoint(U_STEPS, U_LOSSES, U_PHASES, saved, pick="mild") == 900  # 1.06
    saved[8] = False  # no mild checkpoint: fall back to the stable pick
    assert pick_checkpoint(U_STEPS, U_LOSSES, U_PHASES, saved, pick="mild") == 600
    # severe checkpoints are never picked
    only_severe = [i >= 9 for i in range(len(U_LOSSES))]
    assert pick_checkpoint(U_STEPS, U_LOSSES, U_PHASES, only_severe, pick="mild") is None
    with pytest.raises(UserError, match="pick must be one of stable, mild"):
        pick_checkpoint(U_STEPS, U_LOSSES, U_PHASES, saved, pick="severe")


def test_report_fields_and_json():
    flops = [s * 1e16 for s in U_STEPS]
    report = build_report(U_STEPS, flops, U_LOSSES, pick="mild")
    assert report.L_min == 1.0 and report.L_min_step == 600
    assert report.thresholds == {"stable": pytest.approx(1.02), "severe": pytest.approx(1.1)}
    assert report.pick == 800 and report.pick_phase is M
    assert report.ratios()[9] == pytest.approx(1.12)
    d = json.loads(json.dumps(report.to_dict()))
    assert d["phases"] == [p.value for p in U_PHASES]
    assert d["pick"] == 800 and d["pick_phase"] == "mild" and d["pick_mode"] == "mild"
    assert d["flops"][0] == 1e18 and d["has_checkpoint"] == [True] * 11
    with pytest.raises(UserError, match="same length"):
        build_report(U_STEPS, flops[:-1], U_LOSSES)


# --------------------------------------------------------------------------------------------
# online decisions
#
# A noisy curve, patience = 3, delta = 0.02, delta2 = 0.1. Running min m and the saturation test
# m_{k-3} <= 1.02 m_k:
#   k  step  loss   ckpt  m      m_{k-3}  saturated
#   0  100   2.00   yes   2.00   -        no (fewer than 4 points)
#   1  200   1.60   no    1.60   -        no
#   2  300   1.65   yes   1.60   -        no  <- a 3% bump: in the mild band of m, but Adaptive noise
#   3  400   1.30   no    1.30   2.00     no
#   4  500   1.15   yes   1.15   1.60     no
#   5  600   1.08   no    1.08   1.60     no
#   6  700   1.06   yes   1.06   1.30     no
#   7  800   1.05   no    1.05   1.15     no
#   8  900   1.055  yes   1.05   1.08     no  (1.08 > 1.071)
#   9  1000  1.06   yes   1.05   1.06     yes (1.06 <= 1.071); 1.06 <= 1.071 -> stable
#  10  1100  1.075  no    1.05   1.05     yes; 1.075 in (1.071, 1.155) -> mild
#  11  1200  1.09   yes   1.05   1.05     yes; mild
#  12  1300  1.20   yes   1.05   1.05     1.20 >= 1.155 -> severe
# Stable band of m = 1.05 with checkpoints: 700 (1.06), 900 (1.055), 1000 (1.06) -> best is 900.
NOISY = [
    (100, 2.00, True), (200, 1.60, False), (300, 1.65, True), (400, 1.30, False), (500, 1.15, True),
    (600, 1.08, False), (700, 1.06, True), (800, 1.05, False), (900, 1.055, True), (1000, 1.06, True),
    (1100, 1.075, False), (1200, 1.09, True), (1300, 1.20, True),
]


def feed(monitor: PhaseMonitor, points) -> list[Decision]:
    return [monitor.observe(step, step * 1e15, loss, saved) for step, loss, saved in points]


def summary(decisions: list[Decision]) -> list[tuple]:
    return [(d.step, d.action, d.checkpoint_step, d.phase) for d in decisions]


def test_online_stable_switches_at_saturation_to_the_best_checkpoint():
    monitor = PhaseMonitor(pick="stable")
    decisions = feed(monitor, NOISY)
    assert summary(decisions) == [(s, "continue", None, "adaptive") for s, _, _ in NOISY[:9]] + [
        (1000, "switch", 900, "stable"),
        (1100, "switch", 900, "mild"),
        (1200, "switch", 900, "mild"),
        (1300, "rollback", 900, "severe"),
    ]
    assert monitor.first_decision == decisions[9]
    assert "saturated" in decisions[9].reason and "step 900" in decisions[9].reason
    # The online pick agrees with the offline labels of the finished curve (L_min = 1.05).
    report = monitor.offline_report()
    assert report.phases == [A, A, A, A, A, A, S, S, S, S, M, M, V]
    assert report.pick == 900


def test_online_mild_switches_at_the_first_mild_point_with_a_checkpoint():
    monitor = PhaseMonitor(pick="mild")
    decisions = feed(monitor, NOISY)
    assert summary(decisions) == [(s, "continue", None, "adaptive") for s, _, _ in NOISY[:9]] + [
        (1000, "continue", None, "stable"),
        (1100, "continue", None, "mild"),  # mild, but no checkpoint at 1100
        (1200, "switch", 1200, "mild"),
        (1300, "rollback", 1200, "severe"),  # after the mild switch the mild pick is the pick
    ]
    assert decisions[2].phase == "adaptive" and decisions[2].action == "continue"  # the early bump
    assert monitor.first_decision == decisions[11]
    assert monitor.offline_report().pick == 1200  # offline mild rule: first mild checkpoint


# Sudden blow-up: m at k=5 is 1.08, 1.5 >= 1.188 -> severe before saturation (m_{k-3}: 2.0, 1.5 vs 1.1016).
# Stable band <= 1.1016: 40 (1.1) and 50 (1.08, no checkpoint) -> roll back to 40.
BLOW_UP = [(10, 2.0, True), (20, 1.5, True), (30, 1.2, True), (40, 1.1, True), (50, 1.08, False), (60, 1.5, True)]


@pytest.mark.parametrize("pick", ["stable", "mild"])
def test_online_rollback_on_a_sudden_blow_up(pick):
    monitor = PhaseMonitor(pick=pick)
    decisions = feed(monitor, BLOW_UP)
    assert [d.action for d in decisions] == ["continue"] * 5 + ["rollback"]
    assert decisions[-1].checkpoint_step == 40 and decisions[-1].phase == "severe"
    assert monitor.first_decision == decisions[-1]


def test_rollback_with_nothing_to_roll_back_to():
    monitor = PhaseMonitor()
    decisions = feed(monitor, [(step, loss, False) for step, loss, _ in BLOW_UP])
    assert decisions[-1].action == "rollback" and decisions[-1].checkpoint_step is None
    assert "no checkpoint" in decisions[-1].reason


def test_saturated_but_no_stable_checkpoint_waits():
    # m stays 1.0 from k=1; saturated at k=4 (m_1 = 1.0 <= 1.02). Only 1.015 at k=4 has a checkpoint.
    monitor = PhaseMonitor(patience=3)
    decisions = feed(monitor, [(1, 2.0, False), (2, 1.0, False), (3, 1.01, False), (4, 1.0, False), (5, 1.015, False), (6, 1.01, True)])
    assert [d.action for d in decisions] == ["continue"] * 5 + ["switch"]
    assert decisions[4].reason.startswith("saturated") and "no point in the Stable band" in decisions[4].reason
    assert decisions[5].checkpoint_step == 6


def test_patience_counts_validation_points():
    # patience 1: saturated as soon as m_{k-1} <= 1.02 m_k: at k=2 (1.0 vs 1.0)
    decisions = feed(PhaseMonitor(patience=1), [(1, 2.0, True), (2, 1.0, True), (3, 1.01, True)])
    assert [(d.action, d.checkpoint_step) for d in decisions] == [("continue", None), ("continue", None), ("switch", 2)]


def test_observe_rejects_bad_points():
    monitor = PhaseMonitor()
    monitor.observe(10, 1.0, 2.0)
    with pytest.raises(UserError, match="step 10 is not after"):
        monitor.observe(10, 2.0, 1.9)
    with pytest.raises(UserError, match="at step 20 is nan"):
        monitor.observe(20, 2.0, math.nan)
    with pytest.raises(UserError, match="patience"):
        PhaseMonitor(patience=0)
    assert len(monitor.history) == 1


# --------------------------------------------------------------------------------------------
# resume


@pytest.mark.parametrize("pick", ["stable", "mild"])
@pytest.mark.parametrize("split", [5, 10, 12])  # before, after (stable) and after (mild) the first decision
def test_state_dict_round_trip_gives_identical_later_decisions(pick, split):
    reference = PhaseMonitor(pick=pick)
    expected = feed(reference, NOISY)

    first_half = PhaseMonitor(pick=pick)
    feed(first_half, NOISY[:split])
    state = json.loads(json.dumps(first_half.state_dict()))  # must be plain JSON
    resumed = PhaseMonitor(pick=pick)
    resumed.load_state_dict(state)
    assert resumed.history == first_half.history
    assert feed(resumed, NOISY[split:]) == expected[split:]
    assert resumed.first_decision == reference.first_decision
    assert resumed.state_dict() == reference.state_dict()


def test_load_state_dict_refuses_other_settings():
    state = PhaseMonitor(delta=0.02).state_dict()
    with pytest.raises(UserError, match=r"monitor.delta is 0.02 in the checkpoint but 0.05"):
        PhaseMonitor(delta=0.05).load_state_dict(state)
    with pytest.raises(UserError, match=r"monitor.pick"):
        PhaseMonitor(pick="mild").load_state_dict(state)
