"""95 % intervals of paired differences, the one place every Δ of a report gets its ``ci95`` (numpy only).

A budget claim ("within one point of the original") compares two models on the *same* rows, so the
figure that matters is the paired difference, whose noise comes only from the rows where the two
disagree. Two intervals, one per metric:

- accuracy (:func:`accuracy_change_interval`): exact, McNemar-style. Of the ``m`` rows where exactly one
  model is right, the new model is right on ``c``; given ``m``, ``c`` is binomial(m, π) and the change is
  ``m / n · (2π - 1)``. The Clopper-Pearson interval of π gives the change's interval (no normal
  approximation: it stays honest for the handful of rows a small split disagrees on). Identical
  predictions give ``[0, 0]``: the two models cannot differ on these rows.
- RMSE (:func:`rmse_change_interval`): a paired bootstrap over rows (the same resampled rows for both
  models) of the relative RMSE change, percentile interval, seeded (a report is reproducible).

:func:`resolution` says before any training whether a split can resolve a budget at all, and
:func:`within_budget` is the one accept rule of the searches (see its docstring and the README).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Interval:
    """A change's point estimate and its interval (the change's own units: accuracy, or a fraction of the RMSE)."""

    estimate: float
    low: float
    high: float

    def as_list(self) -> list[float]:
        """``[low, high]``: the report's ``ci95``."""
        return [float(self.low), float(self.high)]

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def _log_choose(m: int) -> np.ndarray:
    """log C(m, k) for k = 0..m (cumulative sums of logs: exact enough, and O(m))."""
    logs = np.log(np.arange(1, m + 1, dtype=np.float64))
    fact = np.concatenate([[0.0], np.cumsum(logs)])
    return fact[m] - fact - fact[::-1]


def _binom_cdf(c: int, m: int, p: float, upper: bool, logc: np.ndarray) -> float:
    """P(X <= c) (or P(X >= c) with ``upper``) for X ~ binomial(m, p), from log terms (exact for any m)."""
    if p <= 0.0:
        return 1.0 if not upper or c == 0 else 0.0
    if p >= 1.0:
        return 1.0 if upper or c == m else 0.0
    k = np.arange(m + 1)
    terms = logc + k * math.log(p) + (m - k) * math.log1p(-p)
    picked = terms[k >= c] if upper else terms[k <= c]
    top = picked.max()
    return float(min(1.0, math.exp(top) * np.exp(picked - top).sum()))


@functools.lru_cache(maxsize=4096)
def clopper_pearson(c: int, m: int, level: float = LEVEL) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a binomial proportion, ``c`` successes in ``m`` trials.

    Cached: a pure function of three numbers, and 120 bisection steps of a pure-Python tail sum each. The
    resolution figures of every run (:func:`deploykit.pipeline.confirm.smallest_budget`) ask for hundreds of
    them, mostly the same for the same split sizes; uncached they cost about 2 CPU seconds per run on a
    60-row split.
    """
    if m <= 0:
        return 0.0, 1.0
    alpha = (1 - level) / 2
    logc = _log_choose(m)

    def solve(f, target: float) -> float:  # f increasing in p
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
        return (lo + hi) / 2

    low = 0.0 if c == 0 else solve(lambda p: _binom_cdf(c, m, p, True, logc), alpha)
    high = 1.0 if c == m else solve(lambda p: -_binom_cdf(c, m, p, False, logc), -alpha)
    return low, high


def accuracy_change_interval(reference_correct, new_correct, level: float = LEVEL) -> Interval:
    """The new model's accuracy minus the reference's on the same rows, with its exact paired interval.

    ``reference_correct`` / ``new_correct``: booleans per row (prediction == label).
    """
    a = np.asarray(reference_correct, bool).ravel()
    b = np.asarray(new_correct, bool).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired rows differ in number: {a.size} vs {b.size}")
    n = a.size
    if n == 0:
        return Interval(0.0, -1.0, 1.0)
    gained, lost = int(np.count_nonzero(b & ~a)), int(np.count_nonzero(a & ~b))
    m = gained + lost
    estimate = (gained - lost) / n
    if m == 0:
        return Interval(0.0, 0.0, 0.0)
    p_low, p_high = clopper_pearson(gained, m, level)
    return Interval(estimate, m / n * (2 * p_low - 1), m / n * (2 * p_high - 1))


def rmse_change_interval(
    reference_pred,
    new_pred,
    targets,
    level: float = LEVEL,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Interval:
    """(RMSE_new - RMSE_ref) / RMSE_ref on the same rows, with a paired bootstrap percentile interval."""
    t = np.asarray(targets, np.float64).reshape(len(targets), -1)
    ref = ((np.asarray(reference_pred, np.float64).reshape(len(t), -1) - t) ** 2).mean(axis=1)
    new = ((np.asarray(new_pred, np.float64).reshape(len(t), -1) - t) ** 2).mean(axis=1)
    n = len(t)
    if n == 0:
        return Interval(0.0, -1.0, 1.0)

    def change(r: np.ndarray, s: np.ndarray) -> np.ndarray:
        root = np.sqrt(r)
        return np.where(root > 0, (np.sqrt(s) - root) / np.where(root > 0, root, 1.0), np.sqrt(s))

    estimate = float(change(np.array([ref.mean()]), np.array([new.mean()]))[0])
    rng = np.random.default_rng(seed)
    draws = []
    chunk = max(1, min(samples, 2_000_000 // n))
    for start in range(0, samples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, samples - start), n))
        draws.append(change(ref[idx].mean(axis=1), new[idx].mean(axis=1)))
    d = np.concatenate(draws)
    alpha = (1 - level) / 2
    return Interval(estimate, float(np.quantile(d, alpha)), float(np.quantile(d, 1 - alpha)))


@functools.lru_cache(maxsize=4096)
def resolution(rows: int, disagreement: float, level: float = LEVEL) -> float:
    """Half-width of the accuracy-change interval of a no-op on ``rows`` rows: a change that flips a share
    ``disagreement`` of them, as many for the better as for the worse.

    What the split can tell apart at best for a model that disagrees with the original that often: a budget
    narrower than this cannot be resolved (a try within it and one beyond it look alike).
    """
    if rows <= 0:
        return 1.0
    m = max(1, round(disagreement * rows))
    correct_ref = np.zeros(rows, bool)
    correct_new = np.zeros(rows, bool)
    correct_ref[: m // 2] = True  # lost: the reference right, the new model wrong
    correct_new[m // 2 : m] = True  # gained
    ci = accuracy_change_interval(correct_ref, correct_new, level)
    return max(abs(ci.low), abs(ci.high))


def within_budget(shortfall: Interval, limit: float) -> bool:
    """The accept rule of every decision on the validation split (sparsity targets, int8 fallbacks).

    ``shortfall`` is how much worse the new model is (accuracy drop, or relative RMSE increase) with its
    interval. A try is accepted when its point estimate is within the budget and its interval is not
    entirely beyond it (its low end <= ``limit``). Requiring the interval's *high* end within the budget
    would need some ten thousand rows per point of budget on a typical classifier: on a few hundred
    validation rows it keeps every model dense. The interval is therefore reported with each decision, a
    run whose validation split cannot resolve the budget says so before training (:func:`resolution`),
    and the test split confirms the kept model once, at the end (a miss there rejects the artifact).
    """
    return shortfall.estimate <= limit + 1e-12 and shortfall.low <= limit + 1e-12


def shortfall_of(change: Interval, accuracy: bool) -> Interval:
    """A change interval as a shortfall (how much worse): an accuracy change negated, an RMSE change as it is."""
    if accuracy:
        return Interval(-change.estimate, -change.high, -change.low)
    return change


def accepted(attempt, budget) -> bool:
    """The one accept rule of a sparsity try, serial or on Ray: :func:`within_budget` on its validation change
    (``attempt.change``, an :class:`Interval`), and its validation NLL within ``max_nll_increase`` when it was
    judged on it (``attempt.nll_within``, :mod:`deploykit.sparsity.nll_rule`). A try that could not be measured is
    never accepted."""
    if getattr(attempt, budget.metric.value) is None or attempt.change is None:
        return False
    if getattr(attempt, "nll_within", None) is False:
        return False
    return within_budget(shortfall_of(attempt.change, budget.metric.value == "accuracy"), budget.limit)
