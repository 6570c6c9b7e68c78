"""Robust aggregates of a few runs: IQM, optimality gap, probability of improvement, profiles.

After Agarwal et al., "Deep Reinforcement Learning at the Edge of the Statistical Precipice"
(NeurIPS 2021), whose `rliable` library does not import with pandas 3; the definitions here
match rliable's.

Shapes. A score matrix is `runs x tasks` (here: seeds x datasets; one dataset is one task); a
1-D array is the runs of one task. Every statistic also accepts leading batch axes,
`... x runs x tasks`, and returns one value per batch entry: `stratified_bootstrap` evaluates
all its resamples in one call that way.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import trim_mean

__all__ = [
    "final_score",
    "iqm",
    "optimality_gap",
    "performance_profile",
    "performance_profile_band",
    "probability_of_improvement",
    "stratified_bootstrap",
]


def _matrix(scores: np.ndarray) -> np.ndarray:
    """`scores` as `... x runs x tasks` floats (a 1-D array is the runs of one task)."""
    scores = np.asarray(scores, dtype=float)
    if scores.ndim == 0:
        raise ValueError("scores: need at least one run")
    return scores[:, None] if scores.ndim == 1 else scores


def _scalar(value: np.ndarray) -> float | np.ndarray:
    return float(value) if np.ndim(value) == 0 else value


def final_score(progress: np.ndarray, last_k: int = 1) -> float | np.ndarray:
    """A run's final score: the mean of its last `last_k` evaluations.

    Args:
        progress: `... x evaluations`, each run's scores in step order.
        last_k: evaluations averaged; 1 is the last evaluation itself.
    Returns:
        `...`: one score per run (a float for a single run).
    """
    progress = np.asarray(progress, dtype=float)
    if last_k < 1:
        raise ValueError(f"last_k: {last_k} is below 1")
    if progress.ndim == 0 or progress.shape[-1] < last_k:
        found = 0 if progress.ndim == 0 else progress.shape[-1]
        raise ValueError(f"last_k: {last_k} evaluations asked for, {found} present")
    return _scalar(progress[..., -last_k:].mean(axis=-1))


def iqm(scores: np.ndarray) -> float | np.ndarray:
    """Interquartile mean over all runs of all tasks: the mean of the middle 50% of scores.

    As rliable: `scipy.stats.trim_mean(scores, 0.25)` over the flattened `runs x tasks`.

    Args:
        scores: `... x runs x tasks` (or `runs`).
    Returns:
        `...`: one IQM per batch entry.
    """
    scores = _matrix(scores)
    flat = scores.reshape(*scores.shape[:-2], -1)
    return _scalar(trim_mean(flat, 0.25, axis=-1))


def optimality_gap(scores: np.ndarray, threshold: float = 100.0) -> float | np.ndarray:
    """How far runs fall short of `threshold` on average: `threshold - mean(min(score, threshold))`.

    Scores above the threshold count as the threshold (beating it earns nothing), so lower is
    better and 0 means every run reached it.

    Args:
        scores: `... x runs x tasks` (or `runs`).
        threshold: the target score (100: the expert of a normalized score).
    Returns:
        `...`: one gap per batch entry.
    """
    scores = _matrix(scores)
    return _scalar(threshold - np.minimum(scores, threshold).mean(axis=(-2, -1)))


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float | np.ndarray:
    """P(X > Y): how likely a run of X beats a run of Y on the same task, averaged over tasks.

    Per task the Mann-Whitney U statistic of X against Y divided by `n * m` (a tie counts 1/2),
    then the mean over tasks, as rliable.

    Args:
        x: `... x n x tasks` (or `n`), the runs of X.
        y: `... x m x tasks` (or `m`), the runs of Y on the same tasks in the same order.
    Returns:
        `...`: one probability per batch entry.
    """
    x, y = _matrix(x), _matrix(y)
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"x has {x.shape[-1]} tasks, y {y.shape[-1]}")
    a, b = x[..., :, None, :], y[..., None, :, :]  # ... x n x m x tasks
    wins = (a > b).mean(axis=(-3, -2)) + 0.5 * (a == b).mean(axis=(-3, -2))
    return _scalar(wins.mean(axis=-1))


def performance_profile(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Score distribution: the fraction of runs (of all tasks) scoring above each threshold.

    Args:
        scores: `... x runs x tasks` (or `runs`).
        thresholds: `thresholds`, the scores tau at which the profile is read.
    Returns:
        `... x thresholds`: fraction of runs with score > tau, a step function falling from 1 to 0.
    """
    scores = _matrix(scores)
    flat = scores.reshape(*scores.shape[:-2], -1)
    return (flat[..., None, :] > np.asarray(thresholds, dtype=float)[:, None]).mean(axis=-1)


def stratified_bootstrap(
    statistic: Callable[..., np.ndarray | float],
    *score_matrices: np.ndarray,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float | np.ndarray, float | np.ndarray]:
    """Percentile interval of `statistic(*score_matrices)` by the stratified bootstrap.

    Each resample draws runs with replacement independently within every task (the strata)
    and independently for every matrix, so each task keeps its number of runs and no task's
    runs stand in for another's. With one task this is the ordinary bootstrap over runs, and
    it draws the same numbers as `ombrl.scores.bootstrap_interval` with the same seed. With 2-5
    runs per task the interval covers the true value less often than `confidence` says.

    Args:
        statistic: called once with every matrix as a `resamples x runs x tasks` batch; returns
            `resamples` values (or `resamples x k` for a vector statistic, e.g. a profile).
            Every statistic of this module qualifies.
        score_matrices: each `runs x tasks` (or `runs`); the matrices may differ in runs.
        confidence: interval's nominal coverage.
        resamples: bootstrap resamples.
        seed: the resampling seed (fixed: the same interval on every run).
    Returns:
        (low, high): floats for a scalar statistic, `k`-arrays for a vector one.
    """
    if not score_matrices:
        raise ValueError("stratified_bootstrap: no score matrix given")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: {confidence} is not between 0 and 1")
    rng = np.random.default_rng(seed)
    batches = []
    for scores in score_matrices:
        scores = _matrix(scores)
        if scores.ndim != 2:
            raise ValueError(f"score matrix: {scores.ndim} axes, expected runs x tasks")
        runs, tasks = scores.shape
        rows = rng.integers(0, runs, size=(resamples, runs, tasks))
        batches.append(scores[rows, np.arange(tasks)])  # resamples x runs x tasks
    values = np.asarray(statistic(*batches), dtype=float)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail], axis=0)
    return _scalar(low), _scalar(high)


def performance_profile_band(
    scores: np.ndarray,
    thresholds: np.ndarray,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise stratified-bootstrap band of `performance_profile`, `thresholds` each side."""
    return stratified_bootstrap(
        lambda batch: performance_profile(batch, thresholds),
        scores,
        confidence=confidence,
        resamples=resamples,
        seed=seed,
    )
