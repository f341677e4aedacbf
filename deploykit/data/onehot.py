"""Labels as users store them: one-hot rows read as class ids, and 0/1 label matrices (multi-label) told apart.

Keras tutorials train with one-hot ``y`` ([N, C], ``categorical_crossentropy``) as often as with class ids;
every loader (.npz, CSV, arrays given to the API) passes its labels through :func:`from_one_hot` before the
task is read off them, so both forms give the same :class:`~deploykit.data.dataset.Dataset`.
"""

from __future__ import annotations

import logging

import numpy as np

from deploykit.core.task import Task
from deploykit.errors import DataError

log = logging.getLogger("deploykit.data")


def from_one_hot(source, y: np.ndarray, names, task: Task | None) -> tuple[np.ndarray, list[str] | None]:
    """One-hot labels (rows of 0/1 summing to 1, [N, C]) as class ids 0..C-1 and C class names, said in one log line.

    Integer labels of two columns that are not one-hot are refused: neither class ids nor, likely, two
    integer targets (``--task regression`` says they are). Other labels pass through unchanged.
    """
    if y.ndim != 2 or y.shape[1] < 2 or y.dtype.kind not in "biuf" or task is Task.REGRESSION:
        return y, names
    zero_one = bool(np.isin(y, (0, 1)).all())
    if zero_one and bool((y.sum(axis=1) == 1).all()):
        classes = int(y.shape[1])
        if names is not None and len(names) != classes:
            raise DataError(
                f"data {source}: one-hot labels have {classes} columns, but {len(names)} class names were given"
            )
        log.info(
            "data %s: labels are one-hot rows [%d, %d]: read as class ids 0..%d", source, len(y), classes, classes - 1
        )
        return y.argmax(axis=1).astype(np.int64), list(names) if names is not None else [str(i) for i in range(classes)]
    if y.shape[1] == 2 and y.dtype.kind in "biu":
        raise DataError(
            f"data {source}: integer labels of shape {list(y.shape)} are not one-hot (rows of 0/1 summing "
            "to 1): give class ids [N], one-hot rows, or --task regression for two integer targets"
        )
    return y, names


def zero_one_matrix(y: np.ndarray) -> bool:
    """Targets that are all 0 or 1 in several columns: a multi-label matrix rather than regression targets."""
    y = np.asarray(y)
    return y.ndim == 2 and y.shape[1] > 1 and bool(np.isin(y, (0, 1)).all())
