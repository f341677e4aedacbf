"""Decide on validation, confirm on test: the budget of every kept model and artifact, with paired intervals.

Every decision of a run (the sparsity target, the int8 fallback, the temperature, the thresholds, the
fine-tuning length) is taken on the validation split; the test split is measured once per shipped
candidate, at the end of its step, only to confirm. A row accepted on validation whose test figure
misses the budget is rejected as a **test miss**: the budget is a promise about unseen data, and the
validation figure, having been selected on, is biased upwards. Every change carries the 95% interval of
the paired difference against the original model on the same rows (:mod:`deploykit.stats`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from deploykit.core.evaluate import Budget, Metric
from deploykit.errors import Mismatch
from deploykit.pipeline.records import SplitFigure
from deploykit.stats import (
    Interval,
    accuracy_change_interval,
    resolution,
    rmse_change_interval,
    shortfall_of,
    within_budget,
)

VALIDATION, TEST = "validation", "test"


@dataclass(frozen=True)
class Reference:
    """The original model's main outputs on the validation and test splits (computed once per run)."""

    val: np.ndarray
    test: np.ndarray


def reference_outputs(original, data, kind) -> Reference:
    from deploykit.core.evaluate import main_outputs, outputs

    return Reference(
        main_outputs(outputs(original, data.x_val), kind), main_outputs(outputs(original, data.x_test), kind)
    )


def validation_view(data):
    """``data`` with its validation split in the test split's place: what a decision measures a candidate on."""
    return dataclasses.replace(data, x_test=data.x_val, y_test=data.y_val)


def change(new, reference, y, metric: Metric) -> tuple[float, Interval]:
    """(the new outputs' figure, their change vs the reference's on the same rows with its 95% interval)."""
    from deploykit.core.evaluate import rmse

    if metric is Metric.RMSE:
        return rmse(new, y), rmse_change_interval(reference, new, y)
    y = np.asarray(y)
    new_correct = np.asarray(new).argmax(axis=-1) == y
    return float(new_correct.mean()) if len(y) else 0.0, accuracy_change_interval(
        np.asarray(reference).argmax(axis=-1) == y, new_correct
    )


def split_figure(split: str, new, reference, y, budget: Budget) -> SplitFigure:
    """One split's figure: validation is judged by the accept rule (:func:`deploykit.stats.within_budget`), test by
    its point estimate (the promise the report makes)."""
    value, ci = change(new, reference, y, budget.metric)
    short = shortfall_of(ci, budget.metric is Metric.ACCURACY)
    within = within_budget(short, budget.limit) if split == VALIDATION else confirmed(short, budget, len(y))
    return SplitFigure(split, value, ci.estimate, ci.as_list(), within)


def confirmed(short: Interval, budget: Budget, rows: int) -> bool:
    """Whether the test split confirms a row validation accepted: its point estimate is within the budget, or the
    split is too small to resolve the budget (:func:`resolution_notes` said so before training) and its interval is
    not entirely beyond it. A miss by fewer rows than such a split can tell apart is shown with its interval, not
    acted on; a split that resolves the budget rejects on its point estimate."""
    if short.estimate <= budget.limit + 1e-12:
        return True
    resolves = budget.metric is not Metric.ACCURACY or resolution(rows, 2 * budget.limit) <= budget.limit
    return not resolves and short.low <= budget.limit + 1e-12


def budget_mismatches(val: SplitFigure | None, test: SplitFigure | None, budget: Budget) -> list[Mismatch]:
    """The budget as mismatches: missed on validation, else a test miss (accepted on validation, missed on test)."""
    what = "accuracy drop" if budget.metric is Metric.ACCURACY else "RMSE increase"
    for figure in (val, test):
        if figure is None or figure.within:
            continue
        shortfall = -figure.change if budget.metric is Metric.ACCURACY else figure.change
        label = "test miss: " if figure.split == TEST and val is not None else f"{figure.split} "
        return [
            Mismatch(
                f"{label}{what} vs the original",
                shortfall,
                f"<= {budget.limit:g} (the budget)",
                f"{describe(figure, budget)}",
            )
        ]
    return []


def describe(figure: SplitFigure, budget: Budget) -> str:
    """``validation accuracy 0.8520, -0.55 pt (95% CI -1.80 to +0.70)`` / ``test RMSE 4.1, +3.0% (...)``."""
    if budget.metric is Metric.ACCURACY:
        low, high = figure.ci95
        return (
            f"{figure.split} accuracy {figure.value:.4f}, {100 * figure.change:+.2f} pt "
            f"(95% CI {100 * low:+.2f} to {100 * high:+.2f})"
        )
    low, high = figure.ci95
    return (
        f"{figure.split} RMSE {figure.value:.4g}, {100 * figure.change:+.1f}% "
        f"(95% CI {100 * low:+.1f}% to {100 * high:+.1f}%)"
    )


def resolution_notes(data, budget: Budget) -> tuple[dict, list[str]]:
    """Whether each split can resolve the budget: (figures for report.json, lines to say before any training).

    A classifier's split resolves a budget of ``B`` when a no-op that moves a budget's worth of rows each way
    (``B n`` for the better, ``B n`` for the worse) has a 95% interval within ``+-B``
    (:func:`deploykit.stats.resolution`).
    A regressor's RMSE interval depends on its errors, known only once measured: no figure is given.
    """
    if budget.metric is not Metric.ACCURACY:
        return {}, []
    figures, lines = {}, []
    for split, rows in ((VALIDATION, len(data.x_val)), (TEST, len(data.x_test))):
        half = resolution(rows, 2 * budget.limit)
        figures[split] = {
            "rows": rows,
            "no_op_half_width": half,
            "resolves_budget": half <= budget.limit,
            "smallest_resolvable_budget": smallest_budget(rows),
        }
        if half > budget.limit:
            lines.append(
                f"warning: the {split} split ({rows} rows) cannot resolve a {100 * budget.limit:g}-pt budget: a no-op "
                f"moving {100 * budget.limit:g}% of its rows each way has a 95% interval of +-{100 * half:.2f} pt. "
                f"Give more rows (about {rows_needed(budget.limit)} per split), a budget of "
                f"--max-accuracy-drop {smallest_budget(rows):g} or more, or a larger {split} share "
                f"(x_val / y_val, x_test / y_test in an .npz)"
            )
    return figures, lines


def smallest_budget(rows: int) -> float:
    """The smallest accuracy budget (to 0.001) a split of ``rows`` rows resolves."""
    for thousandths in range(1, 500):
        b = thousandths / 1000
        if resolution(rows, 2 * b) <= b:
            return b
    return 0.5


def rows_needed(limit: float) -> int:
    """The rows a split needs to resolve ``limit`` (doubling, then bisection)."""
    high = 64
    while resolution(high, 2 * limit) > limit and high < 10_000_000:
        high *= 2
    low = high // 2
    while high - low > max(1, high // 100):
        mid = (low + high) // 2
        low, high = (mid, high) if resolution(mid, 2 * limit) > limit else (low, mid)
    return high
