"""Decide on validation, confirm on test: the budget of a row from its two splits, and the resolution warning."""

from __future__ import annotations

import numpy as np

from deploykit.core.evaluate import Budget, Metric
from deploykit.pipeline.confirm import TEST, VALIDATION, budget_mismatches, resolution_notes, split_figure

BUDGET = Budget(Metric.ACCURACY, 0.01)


def _outputs(correct: np.ndarray, y: np.ndarray) -> np.ndarray:
    """One-hot outputs right where ``correct`` says, wrong (the next class) elsewhere."""
    predicted = np.where(correct, y, (y + 1) % 3)
    return np.eye(3)[predicted]


def _figure(split: str, flipped: int, rows: int = 500):
    y = np.arange(rows) % 3
    reference = _outputs(np.ones(rows, bool), y)
    new = np.ones(rows, bool)
    new[:flipped] = False
    return split_figure(split, _outputs(new, y), reference, y, BUDGET)


def test_accepted_on_validation_and_missed_on_test_is_a_test_miss():
    val, test = _figure(VALIDATION, 2), _figure(TEST, 40, rows=2000)  # -0.4 pt, then -2 pt on a split resolving 1 pt
    assert val.within and not test.within and test.ci95[0] <= test.change <= test.ci95[1]
    missed = budget_mismatches(val, test, BUDGET)
    assert len(missed) == 1 and missed[0].check.startswith("test miss: accuracy drop")
    assert "test accuracy 0.9800, -2.00 pt (95% CI" in missed[0].detail


def test_a_test_split_too_small_for_the_budget_rejects_only_a_miss_its_interval_shows():
    """500 rows cannot resolve one point: -1.2 pt (6 rows) with an interval reaching the budget is shown, not acted
    on; -3 pt (15 rows), whose interval lies beyond the budget, is a test miss."""
    assert _figure(TEST, 6).within and not _figure(TEST, 15).within


def test_missed_on_validation_is_decided_there_and_confirmed_rows_pass():
    missed = budget_mismatches(_figure(VALIDATION, 10), _figure(TEST, 0), BUDGET)
    assert missed[0].check.startswith("validation accuracy drop")
    assert budget_mismatches(_figure(VALIDATION, 2), _figure(TEST, 3), BUDGET) == []
    assert budget_mismatches(None, _figure(TEST, 40, rows=2000), BUDGET)[0].check.startswith("test accuracy drop")


def test_a_split_too_small_for_the_budget_is_said_before_training():
    class Data:
        x_val, x_test = np.zeros((270, 1)), np.zeros((2000, 1))

    figures, lines = resolution_notes(Data, BUDGET)
    assert not figures[VALIDATION]["resolves_budget"] and figures[TEST]["resolves_budget"]
    assert len(lines) == 1 and "the validation split (270 rows) cannot resolve a 1-pt budget" in lines[0]
    assert "--max-accuracy-drop 0.034" in lines[0] and "x_val / y_val" in lines[0]
