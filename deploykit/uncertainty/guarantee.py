"""Finite-sample bounds of the kept rows' quality, for the selective threshold (:mod:`deploykit.uncertainty.selective`).

Why a bound and not the validation figure: a threshold chosen where the validation accuracy just reaches
the target misses it on unseen data about half the time. The Clopper-Pearson bound is exact for a
binomial count (the number of correct kept rows), with no assumption on the model; the RMSE bound is
the usual Student-t one on the mean squared error, which is only approximate (the squared error has no
upper bound, so no distribution-free bound exists without one).
"""

from __future__ import annotations

import numpy as np


def clopper_pearson_lower(correct, total, level: float) -> np.ndarray:
    """The one-sided Clopper-Pearson lower bound of a success rate: P(rate < bound) <= ``level``."""
    from scipy.stats import beta

    c, n = np.asarray(correct, np.float64), np.asarray(total, np.float64)
    with np.errstate(invalid="ignore"):
        bound = beta.ppf(level, np.maximum(c, 1e-300), n - c + 1)
    return np.where(c <= 0, 0.0, bound)


def accuracy_lower_bounds(correct_sorted, level: float) -> np.ndarray:
    """[N]: the Clopper-Pearson lower bound of the accuracy of the first k rows, k = 1..N."""
    c = np.cumsum(np.asarray(correct_sorted, np.float64))
    return clopper_pearson_lower(c, np.arange(1, len(c) + 1), level)


def rmse_upper_bounds(squared_sorted, level: float) -> np.ndarray:
    """[N]: the one-sided Student-t upper bound (at ``level``) of the RMSE of the first k rows, k = 1..N
    (inf for k = 1: one row says nothing of the spread)."""
    from scipy.stats import t

    s = np.asarray(squared_sorted, np.float64)
    k = np.arange(1, len(s) + 1)
    mean = np.cumsum(s) / k
    var = np.maximum(np.cumsum(s**2) / k - mean**2, 0.0) * k / np.maximum(k - 1, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        upper = mean + t.ppf(1 - level, np.maximum(k - 1, 1)) * np.sqrt(var / k)
    return np.where(k > 1, np.sqrt(np.maximum(upper, 0.0)), np.inf)
