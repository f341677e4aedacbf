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


def conformal_sets(path: Path, config: ConformalConfig, data, val_probs: np.ndarray, test_probs: np.ndarray,
                   say: Callable[[str], None], plot: Path | None = None) -> ConformalReport:
    """Calibrate prediction sets on the validation probabilities, add them to the model at ``path``, and measure
    them on the test split (overall, per class, and the coverage-alpha curve, plotted at ``plot``)."""
    _need_validation(data)
    say(f"calibrating conformal prediction sets ({config.method.value}, coverage {config.coverage:g}"
        f"{', per class' if config.by_class else ''}) on {len(data.x_val)} validation instances")
    cal = calibrate_classifier(data.y_val, val_probs, config)
    write_with_conformal(path, cal)
    test = evaluate_sets(data.y_test, prediction_sets(test_probs, cal), getattr(data, "class_names", ()) or ())
    curve = coverage_curve(data.y_val, val_probs, data.y_test, test_probs, cal)
    if plot is not None:
        coverage_plot(curve, plot)
    say(f"  prediction sets: test coverage {test.coverage:.1%} (target {config.coverage:.0%}), mean size "
        f"{test.mean_set_size:.2f}")
    return ConformalReport(cal, test, curve)


def conformal_intervals(path: Path, coverage: float, data, val_center, val_std, test_center, test_std,
                        say: Callable[[str], None]) -> ConformalReport:
    """Calibrate intervals (normalized by ``val_std`` when given), add ``lower`` / ``upper`` to the model at
    ``path``, and measure them on the test split."""
    _need_validation(data)
    say(f"calibrating conformal intervals (coverage {coverage:g}) on {len(data.x_val)} validation instances")
    cal = calibrate_regressor(data.y_val, val_center, val_std, coverage)
    write_with_conformal(path, cal)
    lower, upper = intervals(test_center, test_std, cal)
    test = evaluate_intervals(data.y_test, lower, upper)
    say(f"  conformal intervals: test coverage {test.coverage:.1%} (target {coverage:.0%}), mean width "
        f"{test.mean_width:.4g}")
    return ConformalReport(cal, test)


def check_conformal(config: ConformalConfig | None, regression: bool) -> None:
    """Refuse, before any work, a conformal option that does not apply to the task."""
    if config is not None and regression and config.by_class:
        raise UsageError("conformal_by_class applies to classifiers (a regressor's intervals are per target)")


def _need_validation(data) -> None:
    if len(data.x_val) == 0:
        raise DataError("conformal calibration needs a validation split; give data with one or drop --conformal")
