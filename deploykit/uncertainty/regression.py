"""Regression uncertainty: how far to trust a mean and std, and a one-scalar fix of the std (the analogue of T).

An MC Dropout or ensemble regressor predicts, per target, a ``mean`` and a
``std``; read as a Gaussian N(mean, std^2), it is judged on a labelled split by

- ``rmse`` / ``mae`` of the mean (targets' units);
- ``nll``: the mean Gaussian negative log-likelihood of the targets, in nats per
  target value, 0.5 log(2 pi s^2) + (y - mean)^2 / (2 s^2) with s = max(std,
  :data:`STD_FLOOR`) (the floor keeps a zero-spread prediction, e.g. dropout
  rate 0, at a large finite NLL instead of inf or NaN);
- ``coverage_90`` / ``coverage_95``: the share of target values inside the
  central interval mean +- z std (z = 1.645 and 1.960): a calibrated model hits
  90% and 95%; below means over-confident, above under-confident;
- ``width_90`` / ``width_95``: the mean width 2 z std of those intervals.

Variance calibration (:func:`fit_std_scale`): one scalar ``s`` multiplies every
std so that the validation NLL is minimal (closed form: s^2 = mean of
(y - mean)^2 / std^2). Like temperature scaling it never moves the prediction
(the mean), only the stated uncertainty; it is stored in the graph as a ``Mul``
on ``std`` and in ``deploykit.std_scale``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploykit.core.contract import INTERVAL_Z
from deploykit.core.contract import STD_SCALE_KEY as METADATA_KEY
from deploykit.errors import DataError, UsageError
from deploykit.onnx.builder import GraphBuilder
from deploykit.onnx.graph_ops import get_prop, retarget, set_props, toposort
from deploykit.records import Record

STD_FLOOR = 1e-6  # in the targets' units: the smallest std the NLL and the std scale fit divide by
Z_90 = 1.6448536269514722  # the standard normal's 95th percentile: mean +- Z_90 std holds 90%
Z_95 = INTERVAL_Z  # its 97.5th percentile: mean +- Z_95 std holds 95%
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class RegressionReport(Record):
    """A Gaussian predictive distribution (mean, std per target) judged against the targets of one split."""

    count: int  # rows
    targets: int  # K
    rmse: float
    mae: float
    nll: float  # nats per target value, std floored at STD_FLOOR
    coverage_90: float
    coverage_95: float
    width_90: float  # mean width of the central 90% interval (targets' units)
    width_95: float
    mean_std: float


def check_targets(y, mean, std=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Targets, means (and stds) as float64 [N, K] of one shape, or one DataError naming the problem."""
    m = np.asarray(mean, np.float64)
    y = np.asarray(y, np.float64)
    if m.ndim == 1:
        m = m[:, None]
    if y.ndim == 1:
        y = y[:, None]
    if m.ndim != 2 or len(m) == 0 or y.shape != m.shape:
        raise DataError(
            f"targets and predictions must have one shape [N, K] (or [N]) with N >= 1, got "
            f"{list(np.shape(y))} and {list(np.shape(mean))}"
        )
    s = None
    if std is not None:
        s = np.asarray(std, np.float64).reshape(m.shape) if np.size(std) == m.size else None
        if s is None:
            raise DataError(f"std must have the predictions' shape {list(m.shape)}, got {list(np.shape(std))}")
        if (s < 0).any():
            raise DataError("std must be non-negative")
    if not np.isfinite(y).all() or not np.isfinite(m).all() or (s is not None and not np.isfinite(s).all()):
        raise DataError("targets, predictions and stds must be finite")
    return y, m, s


def gaussian_nll(y, mean, std) -> float:
    """Mean -log N(y; mean, max(std, STD_FLOOR)^2) over every target value, in nats."""
    y, m, s = check_targets(y, mean, std)
    s = np.maximum(s, STD_FLOOR)
    return float((_HALF_LOG_2PI + np.log(s) + 0.5 * ((y - m) / s) ** 2).mean())


def regression_metrics(y, mean, std) -> RegressionReport:
    """RMSE, MAE, Gaussian NLL, 90% / 95% interval coverage and width of (mean, std) against targets ``y``."""
    y, m, s = check_targets(y, mean, std)
    err = np.abs(y - m)
    return RegressionReport(
        count=len(y),
        targets=y.shape[1],
        rmse=float(np.sqrt((err**2).mean())),
        mae=float(err.mean()),
        nll=gaussian_nll(y, m, s),
        coverage_90=float((err <= Z_90 * s).mean()),
        coverage_95=float((err <= Z_95 * s).mean()),
        width_90=float(2 * Z_90 * s.mean()),
        width_95=float(2 * Z_95 * s.mean()),
        mean_std=float(s.mean()),
    )


def interval_width(std) -> np.ndarray:
    """``Measure.INTERVAL_WIDTH`` per row: the central 95% interval's width 2 Z_95 std, averaged over the targets."""
    s = np.asarray(std, np.float64)
    return 2 * Z_95 * (s.mean(axis=1) if s.ndim == 2 else s)


# --- variance calibration -------------------------------------------------------------------------


@dataclass
class StdScaleFit(Record):
    """One fitted std scale and what it did to the Gaussian NLL of the split it was fitted on."""

    std_scale: float
    nll_before: float
    nll_after: float
    count: int
    fitted_on: str = "validation split"

    def metadata_value(self) -> str:
        return json.dumps(
            {
                "std_scale": self.std_scale,
                "fitted_on": self.fitted_on,
                "count": self.count,
                "nll_before": self.nll_before,
                "nll_after": self.nll_after,
            }
        )


def fit_std_scale(y_val, mean_val, std_val, fitted_on: str = "validation split") -> StdScaleFit:
    """The s > 0 minimizing the Gaussian NLL of N(mean, (s std)^2): s = sqrt(mean((y - mean)^2 / std^2)).

    (d NLL / d s = 1/s - mean(r^2 / std^2) / s^3 = 0.) The std is floored at STD_FLOOR first, as in the NLL.
    """
    y, m, s = check_targets(y_val, mean_val, std_val)
    s = np.maximum(s, STD_FLOOR)
    scale = float(np.sqrt((((y - m) / s) ** 2).mean()))
    if not scale > 0:
        raise DataError("the validation predictions equal the targets exactly: there is no std scale to fit")
    return StdScaleFit(scale, gaussian_nll(y, m, s), gaussian_nll(y, m, s * scale), len(y), fitted_on)


def apply_std_scale(proto, fit: StdScaleFit) -> None:
    """Store ``fit`` in a regression MC or ensemble model (in place): its ``std`` output becomes std * s."""
    import onnx

    if read_std_scale(proto) is not None:
        raise UsageError("this ONNX model already holds a std scale; scale the uncalibrated export instead")
    ed = GraphBuilder.editing(proto, "std_scale")
    ed.output_info("std")
    raw = ed.name("raw_std")
    retarget(ed.graph, "std", raw)
    ed.op("Mul", [raw, ed.const(fit.std_scale)], output="std")
    toposort(ed.graph)
    set_props(proto, {METADATA_KEY: fit.metadata_value()})
    onnx.checker.check_model(proto, full_check=True)


def read_std_scale(proto) -> dict | None:
    """The ``deploykit.std_scale`` entry of a model's metadata_props, or None."""
    raw = get_prop(proto, METADATA_KEY)
    return json.loads(raw) if raw else None


def write_with_std_scale(src: str | os.PathLike, dst: str | os.PathLike, fit: StdScaleFit) -> Path:
    """Load an ONNX file, store ``fit`` in it, save atomically."""
    import onnx

    from deploykit.atomic import atomic_path

    proto = onnx.load(str(src))
    apply_std_scale(proto, fit)
    with atomic_path(Path(dst)) as tmp:
        onnx.save(proto, str(tmp))
    return Path(dst)


@dataclass
class StdScaleReport(Record):
    """The regression metrics of a held-out split before and after the std scale."""

    fit: StdScaleFit
    before: RegressionReport
    after: RegressionReport
