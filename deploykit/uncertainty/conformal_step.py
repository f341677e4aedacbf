"""The bundles' conformal step: calibrate on the validation split, add the outputs to the model, measure on test.

Run after the temperature (or std scale), so the sets are calibrated on the probabilities the model
serves; the abstain threshold and the conformal outputs do not touch each other. Used by ``mc_bundle``
and ``ensemble_bundle`` (``deploykit mc`` / ``ensemble`` / ``optimize``) and by the deterministic export.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from deploykit.errors import DataError, UsageError
from deploykit.uncertainty.conformal import (
    ConformalConfig,
    ConformalReport,
    calibrate_classifier,
    calibrate_regressor,
    coverage_curve,
    coverage_plot,
    evaluate_intervals,
    evaluate_sets,
    intervals,
    prediction_sets,
)
from deploykit.uncertainty.conformal_graph import write_with_conformal

COVERAGE_PLOT = "conformal_coverage.png"


def conformal_sets(
    path: Path,
    config: ConformalConfig,
    data,
    val_probs: np.ndarray,
    test_probs: np.ndarray,
    say: Callable[[str], None],
    plot: Path | None = None,
) -> ConformalReport:
    """Calibrate prediction sets on the validation probabilities, add them to the model at ``path``, and measure
    them on the test split (overall, per class, and the coverage-alpha curve, plotted at ``plot``)."""
    _need_validation(data)
    say(
        f"calibrating conformal prediction sets ({config.method.value}, coverage {config.coverage:g}"
        f"{', per class' if config.by_class else ''}) on {len(data.x_val)} validation instances"
    )
    cal = calibrate_classifier(data.y_val, val_probs, config)
    write_with_conformal(path, cal)
    test = evaluate_sets(data.y_test, prediction_sets(test_probs, cal), getattr(data, "class_names", ()) or ())
    curve = coverage_curve(data.y_val, val_probs, data.y_test, test_probs, cal)
    if plot is not None:
        coverage_plot(curve, plot)
    say(
        f"  prediction sets: test coverage {test.coverage:.1%} (target {config.coverage:.0%}), mean size "
        f"{test.mean_set_size:.2f}"
    )
    return ConformalReport(cal, test, curve)


def conformal_intervals(
    path: Path, coverage: float, data, val_center, val_std, test_center, test_std, say: Callable[[str], None]
) -> ConformalReport:
    """Calibrate intervals (normalized by ``val_std`` when given), add ``lower`` / ``upper`` to the model at
    ``path``, and measure them on the test split."""
    _need_validation(data)
    say(f"calibrating conformal intervals (coverage {coverage:g}) on {len(data.x_val)} validation instances")
    cal = calibrate_regressor(data.y_val, val_center, val_std, coverage)
    write_with_conformal(path, cal)
    lower, upper = intervals(test_center, test_std, cal)
    test = evaluate_intervals(data.y_test, lower, upper)
    say(
        f"  conformal intervals: test coverage {test.coverage:.1%} (target {coverage:.0%}), mean width "
        f"{test.mean_width:.4g}"
    )
    return ConformalReport(cal, test)


def deterministic_conformal(
    path: Path, config: ConformalConfig, data, say: Callable[[str], None] = lambda m: None, plot: Path | None = None
) -> ConformalReport:
    """The conformal outputs of a deterministic ONNX model (``probabilities``; a regressor's ``prediction``:
    intervals of absolute residuals), calibrated on ``data``'s validation split, measured on its test split."""
    from deploykit.core.contract import OUTPUT_NAME, PREDICTION_NAME
    from deploykit.onnx.sessions import onnx_session

    session = onnx_session(path)
    names = [o.name for o in session.get_outputs()]
    name = next((n for n in (OUTPUT_NAME, PREDICTION_NAME) if n in names), None)
    if name is None:
        raise UsageError(f"{Path(path).name}: no {OUTPUT_NAME!r} or {PREDICTION_NAME!r} output to calibrate")
    feed = session.get_inputs()[0].name

    def run(x):
        x = np.asarray(x, np.float32)
        return np.concatenate([session.run([name], {feed: x[i : i + 256]})[0] for i in range(0, len(x), 256)])

    _need_validation(data)
    val, test = run(data.x_val), run(data.x_test)
    if name == PREDICTION_NAME:
        return conformal_intervals(path, config.coverage, data, val, None, test, None, say)
    return conformal_sets(path, config, data, val, test, say, plot)


def check_calibration_rows(config: ConformalConfig, data) -> None:
    """Refuse, before any work, a validation split too small for ``config`` (the counts calibrate_classifier checks:
    they depend on the labels only)."""
    _need_validation(data)
    if data.task.value == "regression":
        calibrate_regressor(data.y_val, np.zeros_like(data.y_val, np.float64), coverage=config.coverage)
        return
    classes = max(len(data.class_names), int(np.max(data.y_val)) + 1)
    calibrate_classifier(data.y_val, np.full((len(data.y_val), classes), 1.0 / classes), config)


def check_conformal(config: ConformalConfig | float | None, regression: bool) -> ConformalConfig | None:
    """The ConformalConfig a bundle's ``conformal=`` asks for (a number is the coverage, e.g. ``conformal=0.9``);
    refuses, before any work, a bad value or an option that does not apply to the task."""
    if config is None:
        return None
    if not isinstance(config, ConformalConfig):
        config = ConformalConfig(config)
    if regression and config.by_class:
        raise UsageError("conformal_by_class applies to classifiers (a regressor's intervals are per target)")
    return config


def _need_validation(data) -> None:
    if len(data.x_val) == 0:
        raise DataError("conformal calibration needs a validation split; give data with one or drop --conformal")
