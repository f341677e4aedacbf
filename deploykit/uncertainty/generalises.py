"""Keep a calibration (a temperature, a regressor's std scale) only when it generalises; else the identity.

A scalar fitted on a few validation rows can make unseen data worse (a temperature of 0.144 fitted on 81
rows took a classifier's test NLL from 0.131 to 0.619). So the fit is checked first by K-fold
cross-validation on the validation split itself: each row's held-out NLL under the scalar fitted on the
other folds, against its NLL under the identity (T = 1, std x 1). The scalar is kept (fitted once more on
every validation row) only when the split has enough rows (:data:`MIN_ROWS` to sharpen, T < 1 or std x s < 1,
whose cost on an unseen confident mistake is unbounded: a validation split without mistakes always asks for
sharper probabilities; :data:`MIN_ROWS_SOFTEN` to soften), the cross-validated NLL falls by at least
:data:`MIN_GAIN` of itself, that fall is significant (the one-sided 95% lower bound of the mean per-row gain
is above zero: a few confident mistakes must not decide it), and it holds in every fold (a sharper T that
wins on easy rows and loses on a fold with confident mistakes is what makes unseen data worse: digits'
validation split wanted T = 0.66 while its test NLL rose from 0.158 to 0.192 under it). A classifier's
sharpening temperature also needs :data:`MIN_MISTAKES` misclassified validation rows: its cost falls on the
mistakes, and with a handful of them the folds cannot show it (the shipped digits model's MC file: T = 0.43 passed
every other check on 270 validation rows, 7 of them misclassified, and its test NLL rose 43 %, 95% CI +8 % to +68 %).
Otherwise the identity is kept and the decision says why, with its figures. Numpy only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from deploykit.records import Record

#: Fewer validation rows than this: no sharpening calibration (T < 1, std x s < 1).
MIN_ROWS = 100
#: Fewer validation rows than this: no calibration at all (one scalar fitted on a handful of rows is noise).
MIN_ROWS_SOFTEN = 50
#: Folds of the cross-validation (fewer when the split is small: each fold keeps >= 20 rows).
FOLDS = 5
#: The cross-validated NLL must fall by at least this fraction of itself for the fit to be kept.
MIN_GAIN = 0.01
#: One-sided 95% normal quantile: the mean per-row gain minus this many standard errors must stay above zero.
Z_ONE_SIDED = 1.645
#: Fewer misclassified validation rows than this: no sharpening temperature (T < 1). Sharpening raises the NLL of
#: every mistake; about two per fold are needed before the cross-validation sees what it costs on them.
MIN_MISTAKES = 10


@dataclass
class CalibrationDecision(Record):
    """Whether a calibration scalar is kept, and the figures that decided it."""

    what: str  # "temperature" or "std scale"
    value: float  # the scalar applied: the fit when kept, else 1.0 (the identity)
    fitted: float | None  # the scalar fitted on every validation row (None: too few rows to try)
    kept: bool
    rows: int
    folds: int
    cv_nll_identity: float | None  # mean held-out NLL with the identity
    cv_nll_fitted: float | None  # ... with the scalar fitted on the other folds
    reason: str

    def line(self) -> str:
        """The console line: the decision and its figures."""
        symbol = "T" if self.what == "temperature" else "std x"
        if self.kept:
            return (
                f"{symbol} = {self.value:.4g} kept: cross-validated validation NLL {self.cv_nll_identity:.4f} -> "
                f"{self.cv_nll_fitted:.4f} ({self.folds} folds, {self.rows} rows)"
            )
        fitted = "" if self.fitted is None else f" (fitted {self.fitted:.4g})"
        return f"{symbol} = 1{fitted}: {self.reason}"


def checked_fit(
    what: str,
    rows: int,
    fit: Callable[[np.ndarray], float],
    nll: Callable[[np.ndarray, float], np.ndarray],
    *,
    min_rows: int = MIN_ROWS,
    min_rows_soften: int = MIN_ROWS_SOFTEN,
    folds: int = FOLDS,
    min_gain: float = MIN_GAIN,
    seed: int = 0,
    mistakes: int | None = None,
) -> CalibrationDecision:
    """Cross-validate a scalar calibration on ``rows`` validation rows.

    ``fit(idx)`` fits the scalar on those rows; ``nll(idx, value)`` is the NLL of each of those rows under
    ``value`` (1.0 being the identity). ``mistakes``: a classifier's misclassified validation rows (None: not a
    classifier's temperature), fewer than :data:`MIN_MISTAKES` refuse a sharpening one.
    """
    everything = np.arange(rows)
    fewest = min(min_rows, min_rows_soften)
    if rows < fewest:
        return _identity(what, rows, None, f"{rows} validation rows < {fewest}: too few to fit one reliably")
    full = float(fit(everything))
    if full < 1 and rows < min_rows:
        reason = f"{rows} validation rows < {min_rows}: too few to sharpen the probabilities reliably"
        return _identity(what, rows, full, reason)
    if full < 1 and mistakes is not None and mistakes < MIN_MISTAKES:
        reason = (
            f"{mistakes} misclassified validation rows < {MIN_MISTAKES}: too few to tell what sharper "
            "probabilities cost on a mistake"
        )
        return _identity(what, rows, full, reason)
    k = max(2, min(folds, rows // 20))
    order = np.random.default_rng(seed).permutation(rows)
    parts = np.array_split(order, k)
    gains = np.empty(rows)
    base = np.empty(rows)
    every_fold = True
    for j, held in enumerate(parts):
        train = np.concatenate([p for i, p in enumerate(parts) if i != j])
        value = fit(train)
        base[held] = nll(held, 1.0)
        gains[held] = base[held] - nll(held, value)
        every_fold = every_fold and float(gains[held].mean()) > 0
    identity = float(base.mean())
    fitted = identity - float(gains.mean())
    lower = float(gains.mean() - Z_ONE_SIDED * gains.std(ddof=1) / np.sqrt(rows))
    if fitted <= identity * (1 - min_gain) and lower > 0 and every_fold:
        return CalibrationDecision(what, full, full, True, rows, k, identity, fitted, "it lowers the held-out NLL")
    return CalibrationDecision(
        what,
        1.0,
        full,
        False,
        rows,
        k,
        identity,
        fitted,
        f"it does not generalise: cross-validated validation NLL {identity:.4f} -> {fitted:.4f} "
        f"({k} folds, {rows} rows; kept only when {100 * min_gain:g}% lower, lower in every fold, and "
        f"the per-row gain's 95% lower bound > 0, here {lower:+.4f}"
        f"{'' if every_fold else ', a fold got worse'})",
    )


def _identity(what: str, rows: int, fitted: float | None, reason: str) -> CalibrationDecision:
    """The identity kept before any cross-validation (too few rows or mistakes to try), and why."""
    return CalibrationDecision(what, 1.0, fitted, False, rows, 0, None, None, reason)


def _row_nll(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Each row's -log p(label) (floored as the temperature fit's NLL is)."""
    return -np.log(np.maximum(p[np.arange(len(y)), y], 1e-12))


def check_temperature(y_val, probs_val, **options) -> CalibrationDecision:
    """:func:`checked_fit` of a deterministic classifier's temperature (softmax(log p / T)) on its validation
    outputs."""
    from deploykit.uncertainty.calibration import check_labels_and_probs
    from deploykit.uncertainty.temperature import fit_temperature, scale_probs

    y, p = check_labels_and_probs(y_val, probs_val)
    return checked_fit(
        "temperature",
        len(y),
        lambda i: fit_temperature(y[i], p[i]).temperature,
        lambda i, t: _row_nll(y[i], scale_probs(p[i], t)),
        mistakes=_mistakes(y, p),
        **options,
    )


def _mistakes(y: np.ndarray, probs: np.ndarray) -> int:
    """Misclassified rows: the highest probability not on the label."""
    return int(np.count_nonzero(np.asarray(probs).argmax(axis=1) != np.asarray(y)))


def kept_temperature_nll(y_val, probs_val) -> tuple[float, float] | None:
    """(cross-validated NLL, T) when :func:`check_temperature` keeps a temperature on these validation outputs, else
    None (T = 1, or outputs a temperature does not apply to): what the sparsity search credits a try with when the
    run calibrates (:mod:`deploykit.sparsity.nll_rule`), the held-out figure rather than the fitted one."""
    from deploykit.errors import DataError

    try:
        decision = check_temperature(y_val, probs_val)
    except DataError:
        return None
    if not decision.kept or decision.cv_nll_fitted is None:
        return None
    return float(decision.cv_nll_fitted), float(decision.value)


def check_mc_temperature(y_val, samples_val, placement, **options) -> CalibrationDecision:
    """:func:`checked_fit` of an MC or ensemble temperature at its ``placement`` (samples [T, N, C])."""
    from deploykit.uncertainty.temperature import (
        Placement,
        fit_mc_temperature,
        scale_probs,
    )

    s = np.asarray(samples_val, np.float64)
    y = np.asarray(y_val)

    def nll(i, t):
        probs = (
            scale_probs(s[:, i], t).mean(axis=0)
            if placement is Placement.PER_SAMPLE
            else scale_probs(s[:, i].mean(axis=0), t)
        )
        return _row_nll(y[i], probs)

    return checked_fit(
        "temperature",
        len(y),
        lambda i: fit_mc_temperature(y[i], s[:, i], placements=(placement,)).temperature,
        nll,
        mistakes=_mistakes(y, s.mean(axis=0)),
        **options,
    )


def check_std_scale(y_val, mean_val, std_val, **options) -> CalibrationDecision:
    """:func:`checked_fit` of a regressor's std scale (N(mean, (s std)^2)) on its validation predictions."""
    from deploykit.uncertainty.regression import STD_FLOOR, check_targets, fit_std_scale

    y, m, sd = check_targets(y_val, mean_val, std_val)
    sd = np.maximum(sd, STD_FLOOR)

    def nll(i, s):  # each row's Gaussian NLL, averaged over its targets
        var = (sd[i] * s) ** 2
        per = 0.5 * (np.log(2 * np.pi * var) + (y[i] - m[i]) ** 2 / var)
        return per.reshape(len(i), -1).mean(axis=1)

    return checked_fit("std scale", len(y), lambda i: fit_std_scale(y[i], m[i], sd[i]).std_scale, nll, **options)
