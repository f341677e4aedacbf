"""Out-of-distribution detection by an uncertainty measure: AUROC and the FPR at 95% TPR.

OOD rows are the positives and a higher uncertainty says "OOD". AUROC is the
probability that a random OOD row is more uncertain than a random
in-distribution row (ties count one half: the Mann-Whitney statistic), so no
threshold is needed to compare measures. FPR at 95% TPR is what deployment
asks: with a threshold that flags 95% of the OOD rows, the share of
in-distribution rows flagged too. The same AUROC ranks errors: positives are
the wrong predictions (how well uncertainty flags mistakes).

``load_ood`` / ``check_ood`` read and check the OOD inputs a user gives (``--ood-data``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploykit.errors import DataError
from deploykit.records import Record
from deploykit.uncertainty.measures import Measure

DEFAULT_TPR = 0.95


def auroc(negatives, positives) -> float:
    """P(positive score > negative score) + P(equal) / 2, from average ranks."""
    neg, pos = _scores(negatives, "negative"), _scores(positives, "positive")
    both = np.concatenate([neg, pos])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(len(both))
    sorted_vals = both[order]
    # average rank of each tie group (1-based)
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_vals)) + 1]
    ends = np.r_[starts[1:], len(both)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2
    u = ranks[len(neg) :].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def fpr_at_tpr(negatives, positives, tpr: float = DEFAULT_TPR) -> float:
    """Share of negatives with a score >= the threshold that flags at least ``tpr`` of the positives."""
    neg, pos = _scores(negatives, "negative"), _scores(positives, "positive")
    if not 0 < tpr <= 1:
        raise DataError(f"tpr must be in (0, 1], got {tpr}")
    threshold = np.sort(pos)[::-1][int(np.ceil(tpr * len(pos))) - 1]  # the k-th largest positive, k = ceil(tpr n)
    return float((neg >= threshold).mean())


@dataclass
class OODRow(Record):
    measure: Measure
    auroc: float
    fpr_at_95_tpr: float


def ood_report(
    in_distribution: dict[Measure, np.ndarray], out_of_distribution: dict[Measure, np.ndarray]
) -> list[OODRow]:
    """One row per measure present in both (from :func:`deploykit.uncertainty.measures.uncertainties`)."""
    return [
        OODRow(
            m, auroc(in_distribution[m], out_of_distribution[m]), fpr_at_tpr(in_distribution[m], out_of_distribution[m])
        )
        for m in in_distribution
        if m in out_of_distribution
    ]


def error_auroc(y_true, predicted, uncertainty) -> float:
    """How well an uncertainty ranks wrong predictions above right ones (AUROC; NaN when all right or all wrong)."""
    wrong = np.asarray(predicted) != np.asarray(y_true)
    u = np.asarray(uncertainty, np.float64)
    if wrong.all() or not wrong.any():
        return float("nan")
    return auroc(u[~wrong], u[wrong])


def _scores(values, what: str) -> np.ndarray:
    a = np.asarray(values, np.float64).ravel()
    if a.size == 0 or not np.isfinite(a).all():
        raise DataError(f"{what} scores must be a non-empty array of finite numbers")
    return a


# --- the OOD inputs a user gives (--ood-data) ------------------------------------------------------


def load_ood(path: str | os.PathLike) -> np.ndarray:
    """The inputs of an out-of-distribution set: a .npy array, or the ``x`` (else ``x_test``) array of a .npz."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"OOD data {path}: no such file")
    _check_declared(path)
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                key = next((k for k in ("x", "x_test") if k in arrays.files), None)
                if key is None:
                    raise DataError(
                        f"OOD data {path}: the .npz needs an array named x (or x_test), has {', '.join(arrays.files)}"
                    )
                return arrays[key]
    except (OSError, ValueError) as exc:
        raise DataError(f"OOD data {path}: cannot read it ({type(exc).__name__}: {exc})") from None
    raise DataError(f"OOD data {path}: give a .npy array or an .npz with an array x")


def _check_declared(path: Path) -> None:
    """A regular file whose arrays declare at most DEPLOYKIT_MAX_DATA_BYTES (a 1 KB .npy can declare terabytes)."""
    from deploykit.data.readers import _npy_declared_bytes, _npz_declared_bytes
    from deploykit.files import regular_file
    from deploykit.limits import DATA_BYTES

    size = regular_file(path, "OOD data", DataError)
    if path.suffix == ".npz":
        DATA_BYTES.check(path, _npz_declared_bytes(path), "the .npz (its array headers)")
    elif path.suffix == ".npy":
        try:
            with open(path, "rb") as fh:
                declared = _npy_declared_bytes(fh, size)
        except (OSError, ValueError) as exc:
            raise DataError(f"OOD data {path}: cannot read it ({type(exc).__name__}: {exc})") from None
        DATA_BYTES.check(path, declared, "the .npy header")


def check_ood(x, input_shape: Sequence[int]) -> np.ndarray:
    """OOD inputs as float32 [N, *input_shape] (N >= 1, finite), or one DataError naming the problem."""
    x = np.asarray(x)
    if x.dtype.kind not in "fiu":
        raise DataError(f"OOD data must hold numbers, got dtype {x.dtype}")
    if x.ndim != len(input_shape) + 1 or tuple(x.shape[1:]) != tuple(input_shape) or len(x) == 0:
        raise DataError(
            f"OOD data must have shape [N, {', '.join(map(str, input_shape))}] with N >= 1 "
            f"(like the model's data), got {list(x.shape)}"
        )
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError("OOD data holds NaN or inf values")
    return x
