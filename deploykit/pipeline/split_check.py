"""Whether deploykit's validation and test splits may hold rows the model was trained on: said before any training.

When a user gives only ``x`` / ``y`` (an .npz, a CSV), deploykit splits the rows itself, with its own seed,
and nothing says that split matches the one the model was trained with: rows the model learnt may then sit
in the validation or test split, where they inflate every figure, the budget's decisions included (the
issue's run: the book's network given its whole training sample kept 50 % sparsity instead of 95 %). The
run says so once, with how to give the splits the model did not see; and, for any data, when the original
model's accuracy on one split is far above the other's (beyond what the two splits' sizes explain, and by
more than the budget) it says that split likely holds training rows, and when it is near 100% on a split
(99.5%, 100 rows or more) that it may.
"""

from __future__ import annotations

import math

import numpy as np

from deploykit.core.evaluate import Budget, Metric

#: z of a two-sided 95% interval (the gap between two splits' accuracies, normal approximation).
Z95 = 1.959964
#: A split needs at least this many rows for "nearly every row right" to mean something.
PERFECT_MIN_ROWS = 100
#: An accuracy this close to 100% on a split says it may hold training rows (or the task is that easy).
NEAR_PERFECT = 0.995


def split_check(data, reference, budget: Budget) -> tuple[dict, list[str]]:
    """(figures for report.json, lines to say before training) about the splits of ``data``; ``reference``: the
    original model's main outputs on validation and test (:class:`deploykit.pipeline.confirm.Reference`)."""
    made = tuple(getattr(data, "own_split", ()) or ())
    figures: dict = {"made_by_deploykit": list(made)}
    lines = [own_split_line(data, made)] if made else []
    if budget.metric is not Metric.ACCURACY:
        return figures, lines
    val, test = _accuracy(reference.val, data.y_val), _accuracy(reference.test, data.y_test)
    if val is None or test is None:
        return figures, lines
    figures |= {"original_accuracy": {"validation": val, "test": test}}
    suspect = suspects(val, len(data.y_val), test, len(data.y_test), budget.limit)
    perfect = [
        split
        for split, value, rows in (("validation", val, len(data.y_val)), ("test", test, len(data.y_test)))
        if value >= NEAR_PERFECT and rows >= PERFECT_MIN_ROWS and split not in suspect
    ]
    figures |= {"likely_training_rows_in": suspect, "near_perfect": perfect}
    lines += [suspect_line(split, val, test, len(data.y_val), len(data.y_test)) for split in suspect]
    lines += [perfect_line(split, val if split == "validation" else test) for split in perfect]
    return figures, lines


def own_split_line(data, made: tuple[str, ...]) -> str:
    """The one line of a split deploykit made itself."""
    which = " and ".join(made)
    return (
        f"note: deploykit made the {which} split{'s' if len(made) > 1 else ''} of {data.name} itself "
        f"({len(data.x_val)} validation / {len(data.x_test)} test rows, its own seed): if the model was trained on "
        "rows of these data, some may sit there and inflate every figure, the budget's decisions included. Give the "
        "rows the model did not see: an .npz with x_train, y_train, x_val, y_val, x_test and y_test"
    )


def suspect_line(split: str, val: float, test: float, n_val: int, n_test: int) -> str:
    return (
        f"warning: the original model scores {100 * val:.2f}% on validation ({n_val} rows) and {100 * test:.2f}% on "
        f"test ({n_test} rows): the {split} split likely holds rows the model was trained on, and its figures "
        "are inflated; give the model's own held-out splits (x_val / y_val, x_test / y_test in an .npz)"
    )


def perfect_line(split: str, value: float) -> str:
    return (
        f"warning: the original model scores {100 * value:.2f}% on the {split} split: it may hold rows the model was "
        "trained on (or the task is that easy); if so its figures are inflated: give the model's own held-out "
        "splits (x_val / y_val, x_test / y_test in an .npz)"
    )


def suspects(val: float, n_val: int, test: float, n_test: int, limit: float) -> list[str]:
    """The splits that likely hold training rows: one scoring above the other by more than both the budget and
    the 95% interval of the gap between two independent splits of these sizes (normal approximation)."""
    spread = Z95 * math.sqrt(val * (1 - val) / max(n_val, 1) + test * (1 - test) / max(n_test, 1))
    return [split for split, gap in (("validation", val - test), ("test", test - val)) if gap > max(limit, spread)]


def _accuracy(probabilities, y) -> float | None:
    p, y = np.asarray(probabilities), np.asarray(y).reshape(-1)
    if p.ndim != 2 or len(p) != len(y) or len(y) == 0:
        return None
    return float(np.mean(p.argmax(axis=1) == y))
