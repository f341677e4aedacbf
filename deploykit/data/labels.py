"""Labels as :mod:`deploykit.data.dataset` reads them: inputs checked, the task read off the labels,
class ids encoded.

No file is read here (that is :mod:`deploykit.data.readers`) and no split is made (that is
:mod:`deploykit.data.dataset`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deploykit.core.task import Task
from deploykit.errors import DataError

log = logging.getLogger("deploykit.data")  # the name users filter on: these messages are the data loader's


#: Integer labels with more distinct values than this, and fewer than REGRESSION_ROWS_PER_VALUE rows per value
#: on average (or a value of one row), are taken for a regression target (digits: 10 values over 1797 rows;
#: CIFAR-100: 100 over 60000).
REGRESSION_MIN_VALUES = 50


REGRESSION_ROWS_PER_VALUE = 5


def _checked(source: Path, x, y, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Inputs as float32 (finite), labels one per row: [N], or [N, K] for several regression targets."""
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim < 2:
        raise DataError(f"data {source}: {what}: inputs must have a feature axis, got shape {x.shape}")
    if y.ndim != 1:
        y = y.reshape(len(y), -1) if y.ndim else y.reshape(1, 1)
        if y.ndim > 2 or (y.shape[1] != 1 and y.dtype.kind not in "bfiu"):
            raise DataError(
                f"data {source}: {what}: labels must be one per row (or numeric targets [rows, K]), got shape {y.shape}"
            )
        y = y[:, 0] if y.shape[1] == 1 else y
    if len(x) != len(y):
        raise DataError(f"data {source}: {what}: x has {len(x)} rows but y has {len(y)}")
    if len(x) == 0:
        raise DataError(f"data {source}: {what}: no rows")
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x) or np.iscomplexobj(y):
        kind = "real numbers, not complex" if np.iscomplexobj(x) or np.iscomplexobj(y) else "numeric"
        raise DataError(f"data {source}: {what}: inputs and labels must be {kind}, got {x.dtype} and {y.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):  # too large for float32 becomes inf, refused below
        x = x.astype(np.float32, copy=False)  # float32 data is not copied: the limit bounds memory, not only size
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise DataError(f"data {source}: {what}: inputs hold {bad} NaN or inf values (as float32)")
    return x, y


def _task_of(source, y: np.ndarray, names, task: Task | None) -> Task:
    """The task given, else the labels': non-integer numbers, several columns, or integers that look like a
    measurement."""
    if task is not None:
        return task
    if names is not None or y.dtype.kind not in "fiu":
        return Task.CLASSIFICATION
    if y.ndim == 2:
        return Task.REGRESSION
    if y.dtype.kind == "f" and (not np.isfinite(y).all() or not np.all(y == np.round(y))):
        return Task.REGRESSION  # non-finite values are refused by the regression checks, naming them
    values = len(np.unique(y))
    if _looks_like_regression(y, values):
        log.info(
            "data %s: integer labels taken for a regression target (%d distinct values over %d rows); "
            "give --task classification if they are class ids",
            source,
            values,
            len(y),
        )
        return Task.REGRESSION
    return Task.CLASSIFICATION


def _labels_for(source, y: np.ndarray, names, task: Task) -> tuple[np.ndarray, list[str]]:
    """(labels, class names): class ids and their names, or float32 regression targets and no names."""
    if task is Task.CLASSIFICATION:
        if y.ndim == 2:
            raise DataError(
                f"data {source}: labels have {y.shape[1]} columns; a classifier takes one label per row "
                "(several numeric columns are regression targets: --task regression)"
            )
        return _encode_labels(source, y, names)
    if names is not None:
        raise DataError(
            f"data {source}: class names were given, but the task is regression (its targets have no classes)"
        )
    if y.dtype.kind not in "fiub":
        raise DataError(f"data {source}: regression targets must be numbers, got {y.dtype} labels")
    y = y.astype(np.float32)
    if not np.isfinite(y).all():
        raise DataError(f"data {source}: regression targets hold {int((~np.isfinite(y)).sum())} NaN or inf values")
    return y, []


def _encode_labels(
    source: Path | str, y: np.ndarray, names: Sequence[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Labels as class ids 0..C-1, and the class names.

    With ``names``, integer labels are ids into them and string labels are
    mapped by them. Without, integer labels that already are 0..C-1 keep their
    ids (class 3 stays 3); any other labels (strings, gaps, negative ids) are
    numbered in sorted order and named by their value.
    """
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all():
            raise DataError(f"data {source}: labels hold NaN or inf values")
        if not np.all(y == np.round(y)):
            raise DataError(
                f"data {source}: labels must be class ids or names, got non-integer numbers "
                "(regression targets? --task regression)"
            )
        y = y.astype(np.int64)
    if names is not None:
        return _named_labels(source, y, list(names)), list(names)
    values = np.unique(y)
    if len(values) < 2:
        raise DataError(f"data {source}: labels hold fewer than two classes ({len(values)})")
    if np.issubdtype(y.dtype, np.integer):
        if values[0] == 0 and values[-1] == len(values) - 1:
            return y.astype(np.int64), [str(i) for i in range(len(values))]
    elif y.dtype.kind in "USO":
        shown = ", ".join(map(str, values[:10])) + (", ..." if len(values) > 10 else "")
        log.warning(
            "data %s: string labels numbered in sorted order (%s); if the model was trained with another "
            "order, give it (--class-names a,b,c, class_names=, or a class_names array in the .npz)",
            source,
            shown,
        )
    index = np.searchsorted(values, y)
    return index.astype(np.int64), [str(v) for v in values]


def _named_labels(source, y: np.ndarray, names: list[str]) -> np.ndarray:
    """Labels as ids into ``names``: integers must be ids already, strings must be names; else a DataError naming
    one."""
    if np.issubdtype(y.dtype, np.integer):
        bad = y[(y < 0) | (y >= len(names))]
        if len(bad):
            raise DataError(
                f"data {source}: label {bad[0]} is not a class id: "
                f"class_names holds {len(names)} names (ids 0..{len(names) - 1})"
            )
        return y.astype(np.int64)
    index = {n: i for i, n in enumerate(names)}
    missing = sorted({str(v) for v in np.unique(y)} - index.keys())
    if missing:
        raise DataError(
            f"data {source}: label {missing[0]!r} is not in class_names ({', '.join(names)})"
            + (f"; {len(missing) - 1} more labels missing" if len(missing) > 1 else "")
        )
    return np.array([index[str(v)] for v in y], dtype=np.int64)


def _looks_like_regression(y: np.ndarray, values: int) -> bool:
    """Integer labels that look like a regression target rather than class ids.

    Many values (more than REGRESSION_MIN_VALUES) and either few rows per value on
    average, or a value held by one row only (which no stratified split can place):
    a many-class dataset with rows enough for every class stays a classification.
    """
    if values <= REGRESSION_MIN_VALUES:
        return False
    return len(y) < REGRESSION_ROWS_PER_VALUE * values or bool(np.unique(y, return_counts=True)[1].min() < 2)
