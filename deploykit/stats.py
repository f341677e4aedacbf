"""95 % intervals of paired differences, the one place every Δ of a report gets its ``ci95`` (numpy only).

A budget claim ("within one point of the original") compares two models on the *same* rows, so the
figure that matters is the paired difference, whose noise comes only from the rows where the two
disagree. Two intervals, one per metric:

- accuracy (:func:`accuracy_change_interval`): Tango's score interval for paired proportions. The
  change is ``(gained - lost) / n``, the rows where only the new model is right minus those where only
  the reference is. Its noise is in both counts, the number of rows that disagree included, so the
  interval inverts the score test of the difference with the nuisance disagreement rate at its
  restricted maximum-likelihood value (Tango 1998, Stat. Med. 17:891). It holds its 95% coverage where a
  compressed model loses more rows than it gains, which is where budgets are decided: an interval
  conditioned on the number of disagreeing rows (Clopper-Pearson on them, used before) ends at the point
  estimate when every disagreeing row is a loss, and covered a true 1-pt drop on 543 rows about half the
  time (``tests/test_stats.py``). Identical predictions on ``n`` rows still leave about ``±3.84 / n``:
  that many rows cannot show that two models never disagree.
- RMSE (:func:`rmse_change_interval`): a paired bootstrap over rows (the same resampled rows for both
  models) of the relative RMSE change, percentile interval, seeded (a report is reproducible).

:func:`resolution` says before any training whether a split can resolve a budget at all, and
:func:`within_budget` is the one accept rule of the searches (see its docstring and the README).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from statistics import NormalDist

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


def accuracy_change_interval(reference_correct, new_correct, level: float = LEVEL) -> Interval:
    """The new model's accuracy minus the reference's on the same rows, with its paired 95% interval (Tango's score
    interval, see the module docstring).

    ``reference_correct`` / ``new_correct``: booleans per row (prediction == label).
    """
    a = np.asarray(reference_correct, bool).ravel()
    b = np.asarray(new_correct, bool).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired rows differ in number: {a.size} vs {b.size}")
    if a.size == 0:
        return Interval(0.0, -1.0, 1.0)
    gained, lost = int(np.count_nonzero(b & ~a)), int(np.count_nonzero(a & ~b))
    low, high = paired_score_interval(gained, lost, a.size, level)
    return Interval((gained - lost) / a.size, low, high)


@functools.lru_cache(maxsize=4096)
def paired_score_interval(gained: int, lost: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Tango's score interval of ``(gained - lost) / n`` for ``n`` paired rows.

    For a candidate difference ``d`` the disagreement rate has a restricted maximum-likelihood value
    (a quadratic's root), which gives the score statistic ``z(d)``; ``z`` falls as ``d`` rises, so each end is a
    bisection. Cached: a pure function of four numbers, asked for again and again by the resolution figures
    (:func:`deploykit.pipeline.confirm.smallest_budget`) for the same split sizes.
    """
    z = NormalDist().inv_cdf(0.5 + level / 2)
    estimate = (gained - lost) / n

    def score(d: float) -> float:
        w = -(gained + lost) + (2 * n - gained + lost) * d
        q = (math.sqrt(max(w * w + 8 * n * lost * d * (1 - d), 0.0)) - w) / (4 * n)  # restricted P(lost)
        var = n * (2 * q + d * (1 - d))
        diff = gained - lost - n * d
        if var <= 0:
            return 0.0 if diff == 0 else math.copysign(math.inf, diff)
        return diff / math.sqrt(var)

    def solve(lo: float, hi: float, target: float) -> float:  # score(lo) > target >= score(hi)
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if score(mid) > target else (lo, mid)
        return (lo + hi) / 2

    low = -1.0 if score(-1.0) <= z else solve(-1.0, estimate, z)
    high = 1.0 if score(1.0) >= -z else solve(estimate, 1.0, -z)
    return low, high


def rmse_increase(original, value):
    """How much an RMSE ``value`` is above the ``original`` RMSE, as a fraction of it (0.05: 5% more error): the
    budget's terms. Where the original's is 0 (its outputs are the targets, as a model distilled onto its own
    outputs is given), a fraction of it has no size, and the increase is the new RMSE itself, in the targets' units.
    The one rule of every RMSE change (the budget, the intervals, the report, ``validate``); numbers or arrays."""
    original, value = np.asarray(original, np.float64), np.asarray(value, np.float64)
    relative = (value - original) / np.where(original > 0, original, 1.0)
    out = np.where(original > 0, relative, value - original)
    return float(out) if out.ndim == 0 else out


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
        return np.asarray(rmse_increase(np.sqrt(r), np.sqrt(s)))

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
