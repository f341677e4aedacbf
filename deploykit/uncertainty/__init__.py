"""Uncertainty: MC Dropout as one ONNX model, a Python predictor, calibration metrics, and post-hoc tools
(temperature scaling, deep ensembles in one ONNX graph, selective prediction, OOD metrics, pooled dropout masks),
for classifiers (softmax or logits) and regressors (mean / std, Gaussian NLL, interval coverage, std scale), and
split-conformal prediction sets and intervals in the graph."""

from deploykit.uncertainty.calibration import CalibrationReport, calibration
from deploykit.uncertainty.compare import ComparisonReport, compare
from deploykit.uncertainty.conformal import ConformalConfig, calibrate_classifier, calibrate_regressor
from deploykit.uncertainty.conformal_graph import add_conformal
from deploykit.uncertainty.ensemble import EnsembleRecord, build_ensemble, export_ensemble_onnx
from deploykit.uncertainty.masks import MaskKind
from deploykit.uncertainty.mc_export import MCExportRecord, export_mc_onnx
from deploykit.uncertainty.mc_graph import MCConfig, build_mc_graph
from deploykit.uncertainty.measures import Measure, uncertainties
from deploykit.uncertainty.ood import auroc, fpr_at_tpr, ood_report
from deploykit.uncertainty.predictor import UncertaintyPredictor, UncertaintyResult
from deploykit.uncertainty.regression import RegressionReport, StdScaleFit, fit_std_scale, regression_metrics
from deploykit.uncertainty.selective import (
    SelectiveTarget,
    SelectiveThreshold,
    add_abstain,
    choose_regression_threshold,
    choose_threshold,
)
from deploykit.uncertainty.temperature import (
    Placement,
    TemperatureFit,
    apply_mc_temperature,
    apply_temperature,
    fit_mc_temperature,
    fit_temperature,
)

__all__ = [
    "CalibrationReport",
    "ComparisonReport",
    "ConformalConfig",
    "EnsembleRecord",
    "MCConfig",
    "MCExportRecord",
    "MaskKind",
    "Measure",
    "Placement",
    "RegressionReport",
    "SelectiveTarget",
    "SelectiveThreshold",
    "StdScaleFit",
    "TemperatureFit",
    "UncertaintyPredictor",
    "UncertaintyResult",
    "add_abstain",
    "add_conformal",
    "apply_mc_temperature",
    "apply_temperature",
    "auroc",
    "build_ensemble",
    "build_mc_graph",
    "calibrate_classifier",
    "calibrate_regressor",
    "calibration",
    "choose_regression_threshold",
    "choose_threshold",
    "compare",
    "export_ensemble_onnx",
    "export_mc_onnx",
    "fit_mc_temperature",
    "fit_std_scale",
    "fit_temperature",
    "fpr_at_tpr",
    "ood_report",
    "regression_metrics",
    "uncertainties",
]
