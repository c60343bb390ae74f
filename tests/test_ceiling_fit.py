"""The ceiling fit (Eq. 11-12, Appendix D): the curve against hand values, recovery of known
parameters, the robust pipeline against planted outliers, the split, LTS, errors and the bootstrap."""

from __future__ import annotations

import json
import math
import time
import warnings

import numpy as np
import pytest

from npu_retu.ceiling import CeilingFit, CeilingFitError, fit_ceiling, sigmoid_power_law
from npu_retu.errors import UserError

# realistic RL curve parameters (scores in percent, compute in FLOPs)
P_START, A_TRUE, C_MID, B_TRUE = 45.0, 64.0, 3e12, 1.2
GAIN = A_TRUE - P_START


def true_curve(x):
    return sigmoid_power_law(x, A_TRUE, B_TRUE, C_MID, P_START)


def log_spaced(n=40, low=0.05, high=20.0):
    return C_MID * np.logspace(math.log10(low), math.log10(high), n)


def linear_spaced(n=40, low=0.05, high=20.0):
    return C_MID * np.linspace(low, high, n)


# ------------------------------------------------------------------------------------------------
# Eq. 11


def test_sigmoid_power_law_hand_values():
    # x = C_mid: (x / C_mid)^-B = 1, so P = P_start + (A - P_start) / 2, the midpoint
    assert sigmoid_power_law(C_MID, 64.0, 1.2, C_MID, 45.0) == pytest.approx(54.5, abs=1e-12)
    # x = 2 C_mid: 2^-1.2 = 0.4352753, 19 / 1.4352753 = 13.2378786
    assert sigmoid_power_law(2 * C_MID, 64.0, 1.2, C_MID, 45.0) == pytest.approx(45.0 + 13.2378786, abs=1e-6)
    # x = C_mid / 4 with B = 2: (1/4)^-2 = 16, so P = 45 + 19 / 17
    assert sigmoid_power_law(C_MID / 4, 64.0, 2.0, C_MID, 45.0) == pytest.approx(45.0 + 19.0 / 17.0, abs=1e-12)
    # the naive formula agrees where it is safe to evaluate
    x = np.array([0.1, 0.7, 1.0, 3.0, 11.0]) * C_MID
    naive = 45.0 + 19.0 / (1.0 + (x / C_MID) ** (-1.2))
    np.testing.assert_allclose(sigmoid_power_law(x, 64.0, 1.2, C_MID, 45.0), naive, rtol=1e-13)


def test_sigmoid_power_law_ends_and_no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a divide-by-zero or overflow warning fails the test
        at_zero = sigmoid_power_law(0.0, 64.0, 1.2, C_MID, 45.0)
        huge = sigmoid_power_law(np.array([1e300, 1e30 * C_MID]), 64.0, 1.2, C_MID, 45.0)
        tiny = sigmoid_power_law(np.array([0.0, 1e-300]), 64.0, 20.0, 1e300, 45.0)
        steep_small_c = sigmoid_power_law(np.array([0.0, 1e300]), 64.0, 20.0, 1e-300, 45.0)
    assert at_zero == 45.0  # exactly P_start
    np.testing.assert_allclose(huge, [64.0, 64.0], atol=1e-12)
    np.testing.assert_array_equal(tiny, [45.0, 45.0])
    np.testing.assert_allclose(steep_small_c, [45.0, 64.0], atol=1e-12)
    assert np.isnan(sigmoid_power_law(-1.0, 64.0, 1.2, C_MID, 45.0))  # outside the domain


# ------------------------------------------------------------------------------------------------
# recovery of known parameters


@pytest.mark.parametrize("robust", [True, False])
def test_noise_free_curve_recovers_parameters(robust):
    x = log_spaced(30)
    fit = fit_ceiling(x, true_curve(x), robust=robust, bootstrap=0)
    assert fit.A == pytest.approx(A_TRUE, rel=1e-3)
    assert fit.B == pytest.approx(B_TRUE, rel=1e-3)
    assert fit.C_mid == pytest.approx(C_MID, rel=1e-3)
    assert fit.P_start == pytest.approx(P_START, rel=1e-3)
    assert fit.plasticity == pytest.approx(GAIN, rel=1e-3)
    assert fit.r2_fit == pytest.approx(1.0, abs=1e-9)
    assert fit.rmse_val == pytest.approx(0.0, abs=1e-6)
    assert fit.stage1_outliers == ()  # round-off is not read as spread (MAD ~ 0: Stage 1 stops)
    assert fit.method == ("robust" if robust else "least_squares")


# ------------------------------------------------------------------------------------------------
# Acceptance: the robust fit recovers the ceiling where plain least squares does not
#
# Curves from Eq. 11 with the parameters above, 40 points over 0.05..20 x C_mid, Gaussian noise and
# 10 % gross outliers (4 points, y lowered by 8..15 points), all in the fit split (34 points): one in
# the rising part (fit-split positions 8..16) and three among the last 20 % of the fit split, where
# they pull the asymptote down.
#
# The criterion |A_hat - A| <= 2 % of (A - P_start) = 0.38 points cannot be met at sd = 0.5: there
# even least squares on the clean points alone (outliers removed) meets it on only about half of the
# log-spaced draws, because A is an extrapolation (the fit split ends at 93 % of the gain for log
# spacing). Measured with contaminated_curve() below over seeds 0..299 (robust error as % of the gain):
#   log    sd 0.05: criterion met on 299/300 (robust median 0.26 %, max 2.31 %; plain min 27 %)
#   linear sd 0.10: criterion met on 299/300 (robust median 0.28 %, max 2.04 %; plain min 11 %)
#   log sd 0.10: 287/300; linear sd 0.20: 295/300; log sd 0.5: 115/300; linear sd 0.5: 204/300
# so the 2 % test runs at the first two noise levels (seeds 0..4 are ordinary draws, not picked), and
# the realistic-noise test below (sd 0.5) asserts what holds on (nearly) every draw there: the
# robust fit is closer than least squares and leaves out every planted outlier.

NOISE_FOR_2_PERCENT = {"log": 0.05, "linear": 0.1}
SPACINGS = {"log": log_spaced, "linear": linear_spaced}


def contaminated_curve(spacing: str, noise_sd: float, seed: int):
    """(x, y, planted outlier indices) for the acceptance tests; x is already sorted."""
    rng = np.random.default_rng(seed)
    x = SPACINGS[spacing]()
    y = true_curve(x) + rng.normal(0.0, noise_sd, x.size)
    n_fit = round(0.85 * x.size)
    early = rng.choice(np.arange(n_fit // 4, n_fit // 2), size=1)
    late = rng.choice(np.arange(int(0.8 * n_fit), n_fit), size=3, replace=False)
    planted = np.sort(np.concatenate([early, late]))
    y[planted] -= rng.uniform(8.0, 15.0, planted.size)
    return x, y, planted


def ceiling_error(fit: CeilingFit) -> float:
    """|A_hat - A| as a fraction of the true gain A - P_start."""
    return abs(fit.A - A_TRUE) / GAIN


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("spacing", ["log", "linear"])
def test_acceptance_robust_fit_recovers_ceiling_least_squares_does_not(spacing, seed):
    x, y, planted = contaminated_curve(spacing, NOISE_FOR_2_PERCENT[spacing], seed)
    robust = fit_ceiling(x, y, bootstrap=0, seed=seed)
    plain = fit_ceiling(x, y, robust=False, bootstrap=0, seed=seed)
    robust_error, plain_error = ceiling_error(robust), ceiling_error(plain)
    print(f"{spacing} seed {seed}: robust {100 * robust_error:.2f} %  plain {100 * plain_error:.2f} % of the gain")

    assert robust_error <= 0.02
    assert plain_error > robust_error
    assert plain_error > 0.02
    # every planted outlier is among the points Stage 1 or LTS left out (300/300 draws measured)
    excluded = set(robust.stage1_outliers) | set(robust.lts_trimmed)
    assert set(planted.tolist()) <= excluded
    assert not any(robust.inlier_mask[i] for i in planted)


@pytest.mark.parametrize("spacing", ["log", "linear"])
def test_realistic_noise_robust_fit_beats_least_squares(spacing):
    """sd 0.5 (the paper's validation RMSE). Measured over seeds 0..299: the robust fit is closer to
    A than least squares on 299/300 (log) and 300/300 (linear) draws, least squares misses by at
    least 4.0 % (log) / 9.6 % (linear) of the gain, and Stage 1 / LTS leave out every planted
    outlier on 300/300."""
    for seed in range(5):
        x, y, planted = contaminated_curve(spacing, 0.5, seed)
        robust = fit_ceiling(x, y, bootstrap=0, seed=seed)
        plain = fit_ceiling(x, y, robust=False, bootstrap=0, seed=seed)
        robust_error, plain_error = ceiling_error(robust), ceiling_error(plain)
        print(f"sd 0.5 {spacing} seed {seed}: robust {100 * robust_error:.2f} %  plain {100 * plain_error:.2f} %")
        assert plain_error > robust_error
        assert plain_error > 0.02
        assert set(planted.tolist()) <= set(robust.stage1_outliers) | set(robust.lts_trimmed)


# ------------------------------------------------------------------------------------------------
# Eq. 12: P_start fixed


def test_fixed_p_start_is_kept_and_gives_plasticity():
    x = linear_spaced(25)
    rng = np.random.default_rng(3)
    y = true_curve(x) + rng.normal(0.0, 0.1, x.size)
    fit = fit_ceiling(x, y, p_start=P_START, bootstrap=0)
    assert fit.P_start == P_START
    assert fit.p_start_fixed is True
    assert fit.plasticity == fit.A - P_START
    assert fit.A == pytest.approx(A_TRUE, abs=0.3)
    free = fit_ceiling(x, y, bootstrap=0)
    assert free.p_start_fixed is False


def test_fixed_p_start_needs_only_four_points():
    x = log_spaced(4, 0.2, 10.0)
    fit = fit_ceiling(x, true_curve(x), p_start=P_START, bootstrap=0, fit_fraction=1.0)
    assert fit.A == pytest.approx(A_TRUE, rel=1e-3)
    with pytest.raises(CeilingFitError, match="at least 5 points"):
        fit_ceiling(x, true_curve(x), bootstrap=0)  # P_start free: 4 parameters need 5 points


# ------------------------------------------------------------------------------------------------
# Appendix D.1 split, validation RMSE, R^2


def test_split_sorts_by_compute_and_validates_on_the_last_points():
    x = log_spaced(20)
    y = true_curve(x)
    offsets = np.array([1.0, -2.0, 2.0])
    y[17:] += offsets  # the validation points miss the (exactly fitted) curve by known amounts
    shuffled = np.random.default_rng(0).permutation(20)
    fit = fit_ceiling(x[shuffled], y[shuffled], robust=False, bootstrap=0)

    assert fit.x == tuple(x)
    assert fit.y == tuple(y)
    assert fit.fit_mask == (True,) * 17 + (False,) * 3
    assert fit.inlier_mask == fit.fit_mask  # least squares keeps every fit point
    assert fit.A == pytest.approx(A_TRUE, rel=1e-6)
    assert fit.rmse_val == pytest.approx(math.sqrt((1.0 + 4.0 + 4.0) / 3.0), rel=1e-6)
    assert fit.r2_fit == pytest.approx(1.0, abs=1e-9)


def test_r2_on_the_fit_split_and_no_validation_when_everything_fits():
    x = linear_spaced(12)
    noise = np.random.default_rng(1).normal(0.0, 0.5, 12)
    y = true_curve(x) + noise
    fit = fit_ceiling(x, y, robust=False, bootstrap=0, fit_fraction=1.0)
    assert fit.rmse_val is None
    residuals = y - fit.predict(x)
    expected = 1.0 - np.sum(residuals**2) / np.sum((y - y.mean()) ** 2)
    assert fit.r2_fit == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------------------------------------
# Stage 1 and Stage 2 switches


def clean_noisy_curve(n=40, seed=5):
    x = log_spaced(n)
    return x, true_curve(x) + np.random.default_rng(seed).normal(0.0, 0.2, n)


def test_alpha_none_skips_lts():
    x, y = clean_noisy_curve()
    fit = fit_ceiling(x, y, alpha=None, bootstrap=0)
    assert fit.use_lts is False
    assert fit.lts_trimmed == ()
    assert fit.lts_h is None
    assert fit.alpha is None
    survivors = [i for i in range(34) if i not in fit.stage1_outliers]
    assert [i for i, inlier in enumerate(fit.inlier_mask) if inlier] == survivors


def test_lts_keeps_h_points():
    x, y = clean_noisy_curve()
    fit = fit_ceiling(x, y, alpha=0.85, bootstrap=0)
    n_fit = sum(fit.fit_mask)
    assert n_fit == 34
    assert fit.stage1_outliers == ()  # clean data: Stage 1 removes nothing
    assert fit.use_lts is True
    assert fit.lts_h == math.floor(0.85 * n_fit) == 28
    assert sum(fit.inlier_mask) == 28
    assert len(fit.lts_trimmed) == n_fit - 28
    assert not any(fit.inlier_mask[i] for i in fit.lts_trimmed)
    assert not any(fit.inlier_mask[n_fit:])  # validation points are never inliers
    assert fit.A == pytest.approx(A_TRUE, abs=0.02 * GAIN)


def test_stage1_never_keeps_fewer_than_n_params_plus_one():
    x = linear_spaced(8)
    y = true_curve(x) + np.random.default_rng(2).normal(0.0, 0.5, 8)
    # tau this small would flag nearly every point: Stage 1 must stop instead
    fit = fit_ceiling(x, y, tau=0.01, alpha=None, bootstrap=0)
    assert sum(fit.inlier_mask) >= 5
    assert any("stage 1 stopped" in note for note in fit.notes)


def test_readmission_undoes_swamping():
    """The first Stage-1 fit is least squares on contaminated data: the late outliers bend it, and
    good points beside them get large residuals too. Read literally (``readmit=False``) Stage 1
    removes them for good; with readmission they come back once the outliers are out. Measured on
    seeds 0..39 (log spacing, sd 0.1): 1.9 good points removed per curve literally, 0.3 with
    readmission, and readmission always keeps the planted outliers out."""
    extra_literal = extra_default = 0
    for seed in range(10):
        x, y, planted = contaminated_curve("log", 0.1, seed)
        literal = fit_ceiling(x, y, readmit=False, alpha=None, bootstrap=0)
        default = fit_ceiling(x, y, alpha=None, bootstrap=0)
        assert literal.readmit is False and default.readmit is True
        assert set(planted.tolist()) <= set(default.stage1_outliers)
        extra_literal += len(set(literal.stage1_outliers) - set(planted.tolist()))
        extra_default += len(set(default.stage1_outliers) - set(planted.tolist()))
    print(f"good points removed by Stage 1 over 10 curves: literal {extra_literal}, with readmission {extra_default}")
    assert extra_literal > 2 * extra_default


# ------------------------------------------------------------------------------------------------
# awkward inputs


def test_flat_curve_fits_without_raising():
    x = linear_spaced(10)
    for robust in (True, False):
        fit = fit_ceiling(x, np.full(10, 50.0), robust=robust)
        assert fit.A == pytest.approx(50.0, abs=1e-9)
        assert fit.P_start == pytest.approx(50.0, abs=1e-9)
        assert fit.r2_fit == 1.0
        assert fit.rmse_val == pytest.approx(0.0, abs=1e-9)


def test_compute_including_zero():
    x = np.concatenate([[0.0], linear_spaced(19)])
    fit = fit_ceiling(x, true_curve(x), bootstrap=0)
    assert fit.x[0] == 0.0
    assert fit.predict(0.0) == pytest.approx(fit.P_start, abs=1e-12)
    assert fit.A == pytest.approx(A_TRUE, rel=1e-3)
    assert fit.P_start == pytest.approx(P_START, rel=1e-3)


def test_short_curve_with_exactly_enough_points():
    x = log_spaced(5, 0.2, 10.0)
    fit = fit_ceiling(x, true_curve(x))
    assert sum(fit.fit_mask) == 5  # n_fit = max(n_params + 1, round(0.85 * 5)) = 5
    assert fit.A == pytest.approx(A_TRUE, rel=1e-3)


def test_too_few_points_says_how_many():
    with pytest.raises(CeilingFitError) as raised:
        fit_ceiling([1e12, 2e12, 3e12], [45.0, 50.0, 55.0])
    message = str(raised.value)
    assert "at least 5 points" in message and "got 3" in message
    assert isinstance(raised.value, UserError)


@pytest.mark.parametrize(
    "x, y, expected",
    [
        ([1.0, 2.0, float("nan"), 4.0, 5.0, 6.0], [1.0] * 6, "compute x at index 2"),
        ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [1.0, float("inf"), 1.0, 1.0, 1.0, 1.0], "score y at index 1"),
        ([1.0, 2.0, 3.0, -4.0, 5.0, 6.0], [1.0] * 6, "index 3 is negative"),
        ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [1.0] * 5, "differ in length"),
        ([0.0] * 6, [1.0] * 6, "no point with compute > 0"),
    ],
)
def test_bad_points_are_named(x, y, expected):
    with pytest.raises(CeilingFitError, match=expected):
        fit_ceiling(x, y)


def test_max_score_bounds_the_ceiling():
    # a curve still rising steeply towards 130 % when it stops: unbounded, A lands above 100
    x = linear_spaced(20, 0.05, 1.5)
    y = sigmoid_power_law(x, 130.0, 1.0, C_MID, 40.0)
    assert fit_ceiling(x, y, bootstrap=0).A > 100.0
    bounded = fit_ceiling(x, y, max_score=100.0)
    assert bounded.A <= 100.0
    assert bounded.a_ci is not None and bounded.a_ci[1] <= 100.0


# ------------------------------------------------------------------------------------------------
# bootstrap interval, determinism, serialisation, speed


def test_bootstrap_interval_covers_the_true_ceiling():
    x = linear_spaced(30)
    y = true_curve(x) + np.random.default_rng(11).normal(0.0, 0.5, x.size)
    fit = fit_ceiling(x, y, bootstrap=200, seed=0)
    low, high = fit.a_ci
    assert low <= fit.A <= high
    assert low <= A_TRUE <= high
    assert fit.bootstrap_used >= 100
    assert fit.ci_level == 0.95
    assert fit_ceiling(x, y, bootstrap=0).a_ci is None


def test_same_seed_same_result():
    x, y, _ = contaminated_curve("log", 0.5, 7)
    first = fit_ceiling(x, y, bootstrap=50, seed=3)
    again = fit_ceiling(x, y, bootstrap=50, seed=3)
    assert first == again
    assert first.to_dict() == again.to_dict()


def test_to_dict_is_json_safe():
    x, y, _ = contaminated_curve("linear", 0.5, 0)
    data = fit_ceiling(x, y, bootstrap=20).to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["plasticity"] == pytest.approx(data["A"] - data["P_start"])
    assert len(data["x"]) == len(data["fit_mask"]) == len(data["inlier_mask"]) == 40


def test_fit_with_200_bootstraps_is_fast():
    x = log_spaced(20)
    y = true_curve(x) + np.random.default_rng(4).normal(0.0, 0.5, 20)
    start = time.perf_counter()
    fit = fit_ceiling(x, y, bootstrap=200)
    elapsed = time.perf_counter() - start
    assert fit.a_ci is not None
    assert elapsed < 2.0, f"{elapsed:.2f} s"
