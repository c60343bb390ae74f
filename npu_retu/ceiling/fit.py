"""Fitting the sigmoidal power law of Eq. 11 / Eq. 12 robustly, as in the paper's Appendix D.

The curve (paper §4.2, Eq. 11) relates compute ``x`` (FLOPs, ``x >= 0``) to a score ``P`` (percent)::

    P(x) = P_start + (A - P_start) / (1 + (x / C_mid) ** (-B))

``A`` is the ceiling, ``C_mid`` the compute at which half of the gain ``A - P_start`` is reached and
``B`` the steepness. Eq. 12 is the same curve for RL after an SFT branch point: ``x`` is the RL
compute spent after the branch, ``P_start`` is fixed to the measured SFT score ``P_sft`` and the RL
plasticity is ``PL = A - P_start``.

:func:`fit_ceiling` follows Appendix D:

* **D.1 split**: points sorted by compute; the first ``N_fit`` (about 85 %) fit, the rest validate
  (``rmse_val``).
* **D.2 Stage 1** (Eq. 28-29): fit, compute the modified z-score
  ``M_i = 0.6745 (r_i - median r) / MAD`` of the residuals, drop ``|M_i| > tau``, refit, repeat
  until the active set stops changing. By default a dropped point is scored again at each pass and
  comes back if the refit explains it (``readmit``, against "swamping" by the first, outlier-bent
  fit; see :func:`_stage1_modified_z`).
* **D.2 Stage 2** (Eq. 30): least trimmed squares over the Stage-1 survivors, keeping the
  ``h = floor(alpha * N_fit)`` smallest squared residuals, minimised with C-steps from several starts.
* a percentile bootstrap interval for ``A`` over the final inliers.

``robust=False`` is plain least squares on the whole fit split, with the same optimiser and starting
points, so that comparing the two isolates what Stage 1 and Stage 2 change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy.optimize import least_squares
from scipy.special import expit

from npu_retu.errors import UserError

# Eq. 29: makes the modified z-score comparable to a standard score under normal noise.
MODIFIED_Z_FACTOR = 0.6745
# Optimiser bounds (see fit_ceiling's docstring for why each is where it is).
B_BOUNDS = (0.05, 20.0)
C_MID_RANGE_FACTOR = 1e3  # C_mid may lie this factor beyond the smallest / largest positive compute
# C-step search (Stage 2): random h-subsets tried besides the Stage-1 solution, and an iteration cap.
LTS_RANDOM_STARTS = 4
LTS_MAX_C_STEPS = 50
STAGE1_MAX_PASSES = 30  # Stage 1 settles in a few passes; the cap only guards against cycling


class CeilingFitError(UserError):
    """The points cannot be fitted as given (too few, not finite, negative compute, ...)."""


# ----------------------------------------------------------------------------------------------
# The curve


def sigmoid_power_law(x, A: float, B: float, C_mid: float, P_start: float) -> np.ndarray:
    """Eq. 11: ``P_start + (A - P_start) / (1 + (x / C_mid) ** (-B))`` for compute ``x >= 0``.

    Computed in log space as ``P_start + (A - P_start) * expit(B * (log x - log C_mid))``, which is
    the same function but never forms ``(x / C_mid) ** (-B)``: that power overflows for tiny
    ``x / C_mid`` and underflows for huge ones. At ``x == 0`` (with ``B > 0``) the result is exactly
    ``P_start``; at ``x == C_mid`` it is the midpoint ``(A + P_start) / 2``; as ``x`` grows it tends
    to ``A``. Negative ``x`` is outside the curve's domain and gives NaN.
    """
    x = np.asarray(x, dtype=float)
    if not C_mid > 0:
        raise ValueError(f"C_mid must be > 0, got {C_mid}")
    log_ratio = _log_or_minus_inf(x) - math.log(C_mid)
    share = expit(B * log_ratio)  # fraction of the gain A - P_start reached at x
    curve = P_start + (A - P_start) * share
    return np.where(x < 0, np.nan, curve)


def _log_or_minus_inf(x: np.ndarray) -> np.ndarray:
    """``log(x)`` with ``-inf`` at ``x <= 0`` and no divide-by-zero warning."""
    out = np.full(x.shape, -np.inf)
    np.log(x, out=out, where=x > 0)
    return out


# ----------------------------------------------------------------------------------------------
# The result


@dataclass(frozen=True)
class CeilingFit:
    """One fitted curve (Eq. 11, or Eq. 12 when ``p_start_fixed``) and how it was obtained.

    ``x`` / ``y`` hold every point, sorted by compute; the masks and index tuples refer to those
    positions. ``fit_mask`` marks the fit split (Appendix D.1), the rest validate. ``inlier_mask``
    marks the fit-split points the final parameters were fitted on: they survived Stage 1 and lie
    inside the LTS subset ``H`` (Stage 2).
    """

    A: float
    B: float
    C_mid: float
    P_start: float
    p_start_fixed: bool  # True when P_start was given (Eq. 12), not fitted
    x: tuple[float, ...]
    y: tuple[float, ...]
    fit_mask: tuple[bool, ...]
    inlier_mask: tuple[bool, ...]
    stage1_outliers: tuple[int, ...]  # dropped by the modified z-score (Eq. 29)
    lts_trimmed: tuple[int, ...]  # Stage-1 survivors left outside the LTS subset H (Eq. 30)
    use_lts: bool
    method: str  # "robust" or "least_squares"
    rmse_val: float | None  # on the validation split; None when it is empty
    r2_fit: float  # on the fit split's inliers
    a_ci: tuple[float, float] | None  # bootstrap percentile interval for A
    ci_level: float
    tau: float
    alpha: float | None
    fit_fraction: float
    # how the fit was made (defaults, so that callers may build one by hand)
    lts_h: int | None = None  # the LTS subset size h actually used (after clamping)
    bootstrap_used: int = 0  # resamples that gave a fit and went into a_ci
    max_score: float | None = None
    seed: int = 0
    notes: tuple[str, ...] = field(default=())  # why something was skipped (bootstrap, Stage 1 stop)
    readmit: bool = True  # Stage 1 let removed points back in (see _stage1_modified_z)

    @property
    def plasticity(self) -> float:
        """``A - P_start``: the RL plasticity ``PL`` of Eq. 12 (the whole gain, for Eq. 11)."""
        return self.A - self.P_start

    @property
    def n_fit(self) -> int:
        """The number of points in the fit split (``N_fit`` of Appendix D.1)."""
        return sum(self.fit_mask)

    def predict(self, x) -> np.ndarray:
        """The fitted curve at compute ``x`` (Eq. 11 with the fitted parameters)."""
        return sigmoid_power_law(x, self.A, self.B, self.C_mid, self.P_start)

    def to_dict(self) -> dict:
        """Every field plus ``plasticity``, as plain floats, ints, bools, lists and None (JSON-safe)."""
        return {
            "A": float(self.A),
            "B": float(self.B),
            "C_mid": float(self.C_mid),
            "P_start": float(self.P_start),
            "plasticity": float(self.plasticity),
            "p_start_fixed": bool(self.p_start_fixed),
            "x": [float(v) for v in self.x],
            "y": [float(v) for v in self.y],
            "fit_mask": [bool(v) for v in self.fit_mask],
            "inlier_mask": [bool(v) for v in self.inlier_mask],
            "stage1_outliers": [int(i) for i in self.stage1_outliers],
            "lts_trimmed": [int(i) for i in self.lts_trimmed],
            "use_lts": bool(self.use_lts),
            "method": self.method,
            "rmse_val": None if self.rmse_val is None else float(self.rmse_val),
            "r2_fit": float(self.r2_fit),
            "a_ci": None if self.a_ci is None else [float(self.a_ci[0]), float(self.a_ci[1])],
            "ci_level": float(self.ci_level),
            "tau": float(self.tau),
            "alpha": None if self.alpha is None else float(self.alpha),
            "fit_fraction": float(self.fit_fraction),
            "lts_h": None if self.lts_h is None else int(self.lts_h),
            "bootstrap_used": int(self.bootstrap_used),
            "max_score": None if self.max_score is None else float(self.max_score),
            "seed": int(self.seed),
            "notes": list(self.notes),
            "readmit": bool(self.readmit),
        }


# ----------------------------------------------------------------------------------------------
# The optimisation problem
#
# Parameters are a vector theta = [A, B, log_c, P_start] (P_start left out when it is fixed), with
# log_c = log(C_mid / x_scale) and x_scale = the largest compute of the fit split: FLOPs of 1e13 and
# more would otherwise put C_mid many orders of magnitude away from the other parameters.


@dataclass(frozen=True)
class _Problem:
    log_u: np.ndarray  # log(x / x_scale) of every point, -inf at x == 0
    y: np.ndarray
    p_start: float | None  # fixed P_start (Eq. 12), or None when it is a parameter
    lower: np.ndarray
    upper: np.ndarray
    x_scale: float

    @property
    def n_params(self) -> int:
        return len(self.lower)


def _curve(theta: np.ndarray, log_u: np.ndarray, p_start: float | None) -> np.ndarray:
    A, B, log_c = theta[0], theta[1], theta[2]
    start = p_start if p_start is not None else theta[3]
    return start + (A - start) * expit(B * (log_u - log_c))


def _jacobian(theta: np.ndarray, log_u: np.ndarray, p_start: float | None) -> np.ndarray:
    """d curve / d theta, analytic: cheaper and more accurate than finite differences."""
    A, B, log_c = theta[0], theta[1], theta[2]
    start = p_start if p_start is not None else theta[3]
    share = expit(B * (log_u - log_c))
    # at x == 0 the share is exactly 0 and so is its slope; use 0 there instead of (-inf) * 0
    log_ratio = np.where(np.isfinite(log_u), log_u - log_c, 0.0)
    slope = (A - start) * share * (1.0 - share)
    columns = [share, slope * log_ratio, -slope * B]
    if p_start is None:
        columns.append(1.0 - share)
    return np.stack(columns, axis=1)


def _fit_from(problem: _Problem, theta0: np.ndarray, idx: np.ndarray,
              require_convergence: bool = False) -> tuple[np.ndarray, float] | None:
    """Least squares on the points ``idx`` started at ``theta0``: ``(theta, sum of squares)``, or
    None when the optimiser fails. A run that used up its evaluation budget still returns the best
    point it found (a start among several may be slow and still be the best); with
    ``require_convergence`` it counts as a failure instead."""
    log_u, y = problem.log_u[idx], problem.y[idx]
    start = np.clip(theta0, problem.lower, problem.upper)
    try:
        result = least_squares(
            lambda th: _curve(th, log_u, problem.p_start) - y,
            start,
            jac=lambda th: _jacobian(th, log_u, problem.p_start),
            bounds=(problem.lower, problem.upper),
            method="trf",
            x_scale="jac",
            ftol=1e-12,
            xtol=1e-12,
            gtol=1e-12,
            max_nfev=200 * len(start),
        )
    except (ValueError, np.linalg.LinAlgError):
        return None
    budget_used_up = result.status == 0
    if result.status < 0 or (require_convergence and budget_used_up):
        return None
    if not np.all(np.isfinite(result.x)) or not np.isfinite(result.cost):
        return None
    return result.x, 2.0 * float(result.cost)  # scipy's cost is half the sum of squares


def _starting_points(problem: _Problem, idx: np.ndarray) -> list[np.ndarray]:
    """Well-spread starts for the points ``idx``: C_mid at quantiles of their positive compute,
    B in {0.5, 1, 2}, A at and above their best score. The fit is not convex in (B, C_mid), so one
    start can settle in a poor local minimum; the best of these rarely does."""
    log_u, y = problem.log_u[idx], problem.y[idx]
    finite = log_u[np.isfinite(log_u)]
    if finite.size == 0:  # only x == 0 in this subset: C_mid is unconstrained, any start will do
        finite = np.array([0.0])
    log_c_starts = np.unique(np.quantile(finite, [0.2, 0.5, 0.8]))
    span = _span(y)
    a_starts = [y.max(), y.max() + 0.5 * span]
    # P_start: the median of the scores at the three smallest computes, so that one bad first
    # point does not set the start
    first = y[np.argsort(log_u, kind="stable")[:3]]
    p_start_start = float(np.median(first))
    starts = []
    for log_c in log_c_starts:
        for B in (0.5, 1.0, 2.0):
            for A in a_starts:
                theta = [A, B, log_c] + ([p_start_start] if problem.p_start is None else [])
                starts.append(np.clip(np.array(theta, dtype=float), problem.lower, problem.upper))
    return starts


def _fit_best(problem: _Problem, idx: np.ndarray, extra_starts: Sequence[np.ndarray] = ()) -> tuple[np.ndarray, float]:
    """The best least-squares fit on ``idx`` over all starting points (plus ``extra_starts``)."""
    best: tuple[np.ndarray, float] | None = None
    for start in [*extra_starts, *_starting_points(problem, idx)]:
        found = _fit_from(problem, start, idx)
        if found is not None and (best is None or found[1] < best[1]):
            best = found
    if best is None:
        # every start failed: should not happen with finite data inside the bounds; say so plainly
        raise CeilingFitError(f"the curve fit did not converge from any starting point on {len(idx)} points")
    return best


def _span(y: np.ndarray) -> float:
    span = float(y.max() - y.min())
    return span if span > 0 else 1.0


# ----------------------------------------------------------------------------------------------
# Appendix D, Stage 1 and Stage 2


def _stage1_modified_z(problem: _Problem, fit_idx: np.ndarray, tau: float, min_points: int, y_scale: float,
                       readmit: bool):
    """Stage 1 (Eq. 28-29): remove points whose modified z-score ``|M_i|`` exceeds ``tau``, refit,
    repeat.

    The median and MAD of Eq. 28-29 come from the residuals of the active points (those the current
    fit was made on). With ``readmit`` every fit-split point is scored against them at each pass and
    the active set becomes the points with ``|M_i| <= tau``; the passes repeat until that set stops
    changing. This matters because the first fit is ordinary least squares on contaminated data:
    a few gross outliers late in the curve bend it, and the good points next to them then get large
    residuals too and are removed with them ("swamping"). Without readmission they stay out, taking
    the points that pin the ceiling with them; with it they come back once the outliers are gone.
    ``readmit=False`` is the literal reading: only active points are scored, and a removed point
    never returns.

    Stops without removing more when the MAD is zero (the fit is exact on over half of the points:
    M is undefined) or when the new active set would have fewer than ``min_points`` points.
    Returns ``(active indices, theta, removed indices, note or None)``.
    """
    active = fit_idx.copy()
    theta, _ = _fit_best(problem, active)
    seen = {tuple(active)}
    note = None
    for _ in range(STAGE1_MAX_PASSES):
        residuals = problem.y[active] - _curve(theta, problem.log_u[active], problem.p_start)
        centre = np.median(residuals)
        mad = np.median(np.abs(residuals - centre))
        # "zero" relative to the scores, so that round-off on a noise-free curve is not read as spread
        if mad <= 1e-9 * y_scale:
            break
        scored = fit_idx if readmit else active
        scored_residuals = problem.y[scored] - _curve(theta, problem.log_u[scored], problem.p_start)
        modified_z = MODIFIED_Z_FACTOR * (scored_residuals - centre) / mad
        new_active = scored[np.abs(modified_z) <= tau]
        if np.array_equal(new_active, active):
            break
        if new_active.size < min_points:
            note = (f"stage 1 stopped: the modified z-score keeps only {new_active.size} point(s), fewer "
                    f"than the {min_points} needed to fit")
            break
        if tuple(new_active) in seen:  # the passes cycle between sets: keep the current one
            note = "stage 1 stopped: the active set cycles between passes"
            break
        seen.add(tuple(new_active))
        active = new_active
        # the previous solution is one more start: it is usually close once the outliers are gone
        theta, _ = _fit_best(problem, active, extra_starts=[theta])
    else:
        note = f"stage 1 stopped after {STAGE1_MAX_PASSES} passes without settling"
    removed = sorted(set(fit_idx.tolist()) - set(active.tolist()))
    return active, theta, removed, note


def _h_smallest(problem: _Problem, theta: np.ndarray, idx: np.ndarray, h: int) -> np.ndarray:
    """The ``h`` points of ``idx`` with the smallest squared residuals (ties: the earlier point)."""
    squared = (problem.y[idx] - _curve(theta, problem.log_u[idx], problem.p_start)) ** 2
    return np.sort(idx[np.argsort(squared, kind="stable")[:h]])


def _c_steps(problem: _Problem, theta: np.ndarray, idx: np.ndarray, h: int):
    """C-steps (Rousseeuw & Van Driessen) from ``theta``: select the h smallest squared residuals,
    refit on them, repeat until the subset stops changing. Each step cannot increase the trimmed
    sum of squares (Eq. 30) because the refit starts from the current parameters.

    Returns ``(theta, subset H, trimmed sum of squares)``.
    """
    subset = _h_smallest(problem, theta, idx, h)
    for _ in range(LTS_MAX_C_STEPS):
        found = _fit_from(problem, theta, subset)
        if found is None:
            break  # keep the last good parameters; the subset below is still the h best for them
        theta = found[0]
        new_subset = _h_smallest(problem, theta, idx, h)
        if np.array_equal(new_subset, subset):
            break
        subset = new_subset
    subset = _h_smallest(problem, theta, idx, h)
    trimmed_ss = float(np.sum((problem.y[subset] - _curve(theta, problem.log_u[subset], problem.p_start)) ** 2))
    return theta, subset, trimmed_ss


def _stage2_lts(problem: _Problem, survivors: np.ndarray, h: int, theta_stage1: np.ndarray, rng: np.random.Generator):
    """Stage 2 (Eq. 30): least trimmed squares by C-steps from the Stage-1 solution and from fits
    to a few random h-subsets; the start with the smallest trimmed sum of squares wins.

    Returns ``(theta, subset H)``.
    """
    starts = [theta_stage1]
    if h < survivors.size:  # with h == all survivors there is nothing to trim and one start suffices
        for _ in range(LTS_RANDOM_STARTS):
            subset = np.sort(rng.choice(survivors, size=h, replace=False))
            starts.append(_fit_best(problem, subset, extra_starts=[theta_stage1])[0])
    best = None
    for theta in starts:
        candidate = _c_steps(problem, theta, survivors, h)
        if best is None or candidate[2] < best[2]:
            best = candidate
    return best[0], best[1]


def _bootstrap_a(problem: _Problem, theta: np.ndarray, inliers: np.ndarray, n_resamples: int,
                 ci_level: float, rng: np.random.Generator):
    """Case bootstrap for A: resample the inliers with replacement, refit by plain least squares
    from the point estimate, and take the percentile interval. Returns ``(interval or None, used,
    note or None)``. It needs two more inliers than parameters: with one spare point, resamples fit
    (nearly) exactly and the interval says nothing."""
    min_points = problem.n_params + 2
    if n_resamples == 0:
        return None, 0, None
    if inliers.size < min_points:
        return None, 0, f"no bootstrap interval: {inliers.size} inliers, {min_points} needed"
    a_values = []
    for _ in range(n_resamples):
        sample = rng.choice(inliers, size=inliers.size, replace=True)
        # fewer distinct computes than parameters leaves the curve undetermined: not a fit, skip it
        if np.unique(problem.log_u[sample]).size < problem.n_params:
            continue
        found = _fit_from(problem, theta, sample, require_convergence=True)
        if found is not None:
            a_values.append(found[0][0])
    # an interval from a minority of the resamples would describe a biased selection of them
    if len(a_values) < max(2, n_resamples // 2):
        return None, len(a_values), f"no bootstrap interval: only {len(a_values)} of {n_resamples} resamples gave a fit"
    tail = (1.0 - ci_level) / 2.0
    low, high = np.quantile(np.asarray(a_values), [tail, 1.0 - tail])
    return (float(low), float(high)), len(a_values), None


# ----------------------------------------------------------------------------------------------
# The entry point


def fit_ceiling(
    x,
    y,
    *,
    p_start: float | None = None,
    robust: bool = True,
    fit_fraction: float = 0.85,
    tau: float = 3.5,
    alpha: float | None = 0.85,
    bootstrap: int = 200,
    ci_level: float = 0.95,
    max_score: float | None = None,
    seed: int = 0,
    readmit: bool = True,
) -> CeilingFit:
    """Fit Eq. 11 (or Eq. 12 with ``p_start`` given) to ``(compute, score)`` points (Appendix D).

    * Points are sorted by compute; the first ``n_fit = max(n_params + 1, round(fit_fraction * N))``
      (halves round up; at most ``N``) form the fit split and the rest validate (D.1). ``n_params`` is 3 with
      ``p_start`` given (Eq. 12: A, B, C_mid), else 4.
    * ``robust=True``: Stage 1 drops points whose modified z-score (Eq. 29) exceeds ``tau``,
      refitting until the set of kept points settles (with ``readmit``, the default, a dropped point
      that the refit explains comes back; ``readmit=False`` never lets one back). Stage 2, unless
      ``alpha`` is None (the paper's "Use-LTS FALSE"), is least trimmed squares (Eq. 30) with
      ``h = floor(alpha * N_fit)``, clamped to ``[n_params + 1, number of Stage-1 survivors]``, by
      C-steps from several starts.
    * ``robust=False``: plain least squares on the whole fit split.

    Every fit uses bounded least squares from several starting points, keeping the best. Bounds,
    from the fit split (span = score range, 1 if flat): ``B`` in [0.05, 20]; ``C_mid`` within a
    factor 1e3 of the smallest positive and the largest compute; ``A`` in
    [min - span, max + 3 span] and at most ``max_score``; a free ``P_start`` in [min - span, max + span].

    ``rmse_val`` is over all validation points; ``r2_fit`` over the fit split's inliers. ``a_ci`` is a
    percentile interval for ``A`` from ``bootstrap`` case resamples of the inliers. ``seed`` makes
    the result reproducible: it seeds two independent numpy Generators (spawned from
    ``SeedSequence(seed)``), one for the random LTS starts and one for the bootstrap, so the
    bootstrap draws do not depend on whether Stage 2 ran.

    Raises :class:`CeilingFitError` for mismatched lengths, non-finite values, negative compute, no
    positive compute in the fit split, too few points, or bad settings.
    """
    x_all, y_all = _checked_points(x, y)
    _check_settings(p_start, fit_fraction, tau, alpha, bootstrap, ci_level, max_score)
    n_params = 3 if p_start is not None else 4
    min_points = n_params + 1
    n_points = x_all.size
    if n_points < min_points:
        what = "A, B, C_mid" if p_start is not None else "A, B, C_mid, P_start"
        raise CeilingFitError(
            f"fit_ceiling needs at least {min_points} points for {n_params} free parameters ({what}); "
            f"got {n_points}"
        )

    order = np.argsort(x_all, kind="stable")
    x_sorted, y_sorted = x_all[order], y_all[order]
    n_fit = min(n_points, max(min_points, int(math.floor(fit_fraction * n_points + 0.5))))
    fit_idx = np.arange(n_fit)
    val_idx = np.arange(n_fit, n_points)

    problem = _build_problem(x_sorted, y_sorted, n_fit, p_start, max_score)
    y_scale = max(float(np.max(np.abs(y_sorted[:n_fit]))), _span(y_sorted[:n_fit]))
    lts_rng, bootstrap_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    notes: list[str] = []

    stage1_outliers: list[int] = []
    lts_trimmed: list[int] = []
    lts_h = None
    use_lts = bool(robust and alpha is not None)
    if robust:
        survivors, theta, stage1_outliers, note = _stage1_modified_z(
            problem, fit_idx, tau, min_points, y_scale, readmit
        )
        if note:
            notes.append(note)
        inliers = survivors
        if use_lts:
            lts_h = int(min(max(math.floor(alpha * n_fit), min_points), survivors.size))
            theta, inliers = _stage2_lts(problem, survivors, lts_h, theta, lts_rng)
            lts_trimmed = sorted(set(survivors.tolist()) - set(inliers.tolist()))
    else:
        theta, _ = _fit_best(problem, fit_idx)
        inliers = fit_idx

    a_ci, bootstrap_used, note = _bootstrap_a(problem, theta, inliers, bootstrap, ci_level, bootstrap_rng)
    if note:
        notes.append(note)

    A, B, log_c = (float(v) for v in theta[:3])
    fitted_p_start = float(p_start) if p_start is not None else float(theta[3])
    C_mid = problem.x_scale * math.exp(log_c)
    inlier_mask = np.zeros(n_points, dtype=bool)
    inlier_mask[inliers] = True
    return CeilingFit(
        A=A,
        B=B,
        C_mid=C_mid,
        P_start=fitted_p_start,
        p_start_fixed=p_start is not None,
        x=tuple(float(v) for v in x_sorted),
        y=tuple(float(v) for v in y_sorted),
        fit_mask=tuple(bool(i < n_fit) for i in range(n_points)),
        inlier_mask=tuple(bool(v) for v in inlier_mask),
        stage1_outliers=tuple(sorted(int(i) for i in stage1_outliers)),
        lts_trimmed=tuple(int(i) for i in lts_trimmed),
        use_lts=use_lts,
        method="robust" if robust else "least_squares",
        rmse_val=_rmse(problem, theta, val_idx),
        r2_fit=_r_squared(problem, theta, inliers),
        a_ci=a_ci,
        ci_level=float(ci_level),
        tau=float(tau),
        alpha=None if alpha is None else float(alpha),
        fit_fraction=float(fit_fraction),
        lts_h=lts_h,
        bootstrap_used=bootstrap_used,
        max_score=None if max_score is None else float(max_score),
        seed=int(seed),
        notes=tuple(notes),
        readmit=bool(readmit),
    )


def _checked_points(x, y) -> tuple[np.ndarray, np.ndarray]:
    try:
        x_arr = np.asarray(x, dtype=float)
        y_arr = np.asarray(y, dtype=float)
    except (TypeError, ValueError) as e:
        raise CeilingFitError(f"compute and scores must be numbers: {e}") from None
    if x_arr.ndim != 1 or y_arr.ndim != 1:
        raise CeilingFitError(f"compute and scores must be flat lists, got shapes {x_arr.shape} and {y_arr.shape}")
    if x_arr.size != y_arr.size:
        raise CeilingFitError(f"compute and scores differ in length: {x_arr.size} vs {y_arr.size} points")
    for name, values in (("compute x", x_arr), ("score y", y_arr)):
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise CeilingFitError(f"{name} at index {int(bad[0])} is {values[bad[0]]}: every point must be finite")
    negative = np.flatnonzero(x_arr < 0)
    if negative.size:
        i = int(negative[0])
        raise CeilingFitError(f"compute x at index {i} is negative ({x_arr[i]}): compute must be >= 0")
    return x_arr, y_arr


def _check_settings(p_start, fit_fraction, tau, alpha, bootstrap, ci_level, max_score) -> None:
    if p_start is not None and not math.isfinite(p_start):
        raise CeilingFitError(f"p_start must be a finite score, got {p_start}")
    if not 0 < fit_fraction <= 1:
        raise CeilingFitError(f"fit_fraction must be in (0, 1], got {fit_fraction}")
    if not tau > 0:
        raise CeilingFitError(f"tau must be > 0, got {tau}")
    if alpha is not None and not 0 < alpha <= 1:
        raise CeilingFitError(f"alpha must be in (0, 1] or None, got {alpha}")
    if bootstrap < 0:
        raise CeilingFitError(f"bootstrap must be >= 0, got {bootstrap}")
    if not 0 < ci_level < 1:
        raise CeilingFitError(f"ci_level must be in (0, 1), got {ci_level}")
    if max_score is not None and not math.isfinite(max_score):
        raise CeilingFitError(f"max_score must be finite, got {max_score}")


def _build_problem(x_sorted: np.ndarray, y_sorted: np.ndarray, n_fit: int, p_start: float | None,
                   max_score: float | None) -> _Problem:
    """The bounds, fixed once from the fit split, so every refit (Stage 1, C-steps, bootstrap)
    searches the same region."""
    x_fit, y_fit = x_sorted[:n_fit], y_sorted[:n_fit]
    positive = x_fit[x_fit > 0]
    if positive.size == 0:
        raise CeilingFitError("the fit split has no point with compute > 0: C_mid cannot be fitted")
    x_scale = float(positive.max())
    span = _span(y_fit)
    y_low, y_high = float(y_fit.min()), float(y_fit.max())
    # C_mid within a factor 1e3 of the data: beyond it the curve is flat (or a step) over the whole
    # range and C_mid is not determined by the points
    log_c_low = math.log(positive.min() / x_scale) - math.log(C_MID_RANGE_FACTOR)
    log_c_high = math.log(C_MID_RANGE_FACTOR)
    # A may lie above the data (a curve still rising) but not without limit: 3 spans is already
    # far beyond what the points can support
    a_low, a_high = y_low - span, y_high + 3 * span
    if max_score is not None:
        if max_score <= a_low:
            raise CeilingFitError(
                f"max_score {max_score} lies below the range allowed for A ({a_low:g} and up, from the scores)"
            )
        a_high = min(a_high, max_score)
    lower = [a_low, B_BOUNDS[0], log_c_low]
    upper = [a_high, B_BOUNDS[1], log_c_high]
    if p_start is None:
        lower.append(y_low - span)
        upper.append(y_high + span)
    return _Problem(
        log_u=_log_or_minus_inf(x_sorted / x_scale),
        y=y_sorted,
        p_start=None if p_start is None else float(p_start),
        lower=np.array(lower, dtype=float),
        upper=np.array(upper, dtype=float),
        x_scale=x_scale,
    )


def _rmse(problem: _Problem, theta: np.ndarray, idx: np.ndarray) -> float | None:
    if idx.size == 0:
        return None
    residuals = problem.y[idx] - _curve(theta, problem.log_u[idx], problem.p_start)
    return float(np.sqrt(np.mean(residuals**2)))


def _r_squared(problem: _Problem, theta: np.ndarray, idx: np.ndarray) -> float:
    """``1 - SS_res / SS_tot``; for constant scores (``SS_tot == 0``) 1.0 if the fit is exact, else 0.0."""
    y = problem.y[idx]
    ss_res = float(np.sum((y - _curve(theta, problem.log_u[idx], problem.p_start)) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot == 0:
        return 1.0 if ss_res <= 1e-12 * max(1.0, float(np.sum(y**2))) else 0.0
    return 1.0 - ss_res / ss_tot
