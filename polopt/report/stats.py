"""Statistics for comparing methods over a handful of seeds.

Interquartile mean, stratified bootstrap confidence intervals and the probability of improvement
follow Agarwal et al. 2021, "Deep Reinforcement Learning at the Edge of the Statistical Precipice"
(NeurIPS). A *stratum* is one task (env): its runs are resampled only among themselves, so every
bootstrap sample keeps the number of runs per task.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np

Strata = Sequence[np.ndarray]


def interquartile_mean(scores: np.ndarray | Sequence[float]) -> float:
    """IQM: the mean of the middle half of the sorted scores x₍₁₎ ≤ … ≤ x₍ₙ₎,
    IQM = 1/(n − 2k) · Σ_{i=k+1}^{n−k} x₍ᵢ₎ with k = ⌊n/4⌋ (Agarwal et al. 2021, §4.2; the 25%
    trimmed mean of scipy.stats.trim_mean). With fewer than 4 scores nothing is cut: the mean."""
    x = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if x.size == 0:
        return float("nan")
    k = x.size // 4
    return float(x[k:x.size - k].mean())


def pooled_iqm(strata: Strata) -> float:
    """IQM over the runs of every task together (scores of the strata concatenated)."""
    return interquartile_mean(np.concatenate([np.asarray(s, dtype=np.float64) for s in strata]))


def stratified_bootstrap(groups: Sequence[Strata], statistic: Callable[..., float], reps: int,
                         rng: np.random.Generator) -> np.ndarray:
    """Bootstrap distribution of ``statistic(*groups)``: in each of ``reps`` replicates every stratum of
    every group is replaced by n draws with replacement from its own n runs (Agarwal et al. 2021,
    §4.1, stratified bootstrap; Efron & Tibshirani 1993 for the bootstrap). Groups are resampled
    independently (e.g. the two methods of a probability of improvement)."""
    groups = [[np.asarray(s, dtype=np.float64) for s in strata] for strata in groups]
    samples = np.empty(reps)
    for r in range(reps):
        resampled = [[s[rng.integers(0, s.size, s.size)] for s in strata] for strata in groups]
        samples[r] = statistic(*resampled)
    return samples


def percentile_interval(samples: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval: the (1−c)/2 and (1+c)/2 quantiles of the bootstrap samples."""
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return float(low), float(high)


def probability_of_improvement(x_strata: Strata, y_strata: Strata) -> float:
    """P(X > Y) = 1/M Σ_m 1/(N_m K_m) Σ_i Σ_j S(x_{m,i}, y_{m,j}), S(x, y) = 1 if x > y, ½ if x = y,
    0 otherwise: the chance that a run of X beats a run of Y on a task drawn uniformly from the M
    tasks (Agarwal et al. 2021, §4.3; the Mann–Whitney U statistic normalized, per task)."""
    if len(x_strata) != len(y_strata):
        raise ValueError("X and Y must have the same tasks (strata)")
    per_task = []
    for x, y in zip(x_strata, y_strata, strict=True):
        x = np.asarray(x, dtype=np.float64)[:, None]
        y = np.asarray(y, dtype=np.float64)[None, :]
        per_task.append(float(((x > y) + 0.5 * (x == y)).mean()))
    return float(np.mean(per_task))


def bootstrap_band(curves: np.ndarray, reps: int, rng: np.random.Generator,
                   confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean learning curve over runs with a pointwise percentile-bootstrap band: each replicate
    resamples whole runs (rows) with replacement and averages them; NaN (a run that has not reached
    a step) is left out of the mean at that step."""
    curves = np.asarray(curves, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # steps that no run has reached: all NaN
        mean = np.nanmean(curves, axis=0)
        rows = rng.integers(0, curves.shape[0], (reps, curves.shape[0]))
        means = np.nanmean(curves[rows], axis=1)
        tail = 100.0 * (1.0 - confidence) / 2.0
        low, high = np.nanpercentile(means, [tail, 100.0 - tail], axis=0)
    return mean, low, high


def final_score(steps: np.ndarray, values: np.ndarray, fraction: float = 0.1) -> float:
    """Score of one run: the mean of the finite values logged in the last ``fraction`` of its steps,
    step ≥ (1 − fraction)·last step; the last finite value if that window has none; NaN if none."""
    steps = np.asarray(steps, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return float("nan")
    window = finite & (steps >= (1.0 - fraction) * steps.max())
    return float(values[window].mean()) if window.any() else float(values[finite][-1])


def resample_curve(steps: np.ndarray, values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Linear interpolation of a run's finite (step, value) points onto ``grid``; NaN outside the
    steps the run covered, so shorter runs do not pretend to have data."""
    steps = np.asarray(steps, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    out = np.full(grid.shape, np.nan)
    if not finite.any():
        return out
    s, v = steps[finite], values[finite]
    inside = (grid >= s[0]) & (grid <= s[-1])
    out[inside] = np.interp(grid[inside], s, v)
    return out
