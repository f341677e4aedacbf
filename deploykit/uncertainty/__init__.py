"""Uncertainty: MC Dropout as one ONNX model, a Python predictor, calibration metrics, and post-hoc tools
(temperature scaling, deep ensembles in one ONNX graph, selective prediction, OOD metrics, pooled dropout masks),
for classifiers (softmax or logits) and regressors (mean / std, Gaussian NLL, interval coverage, std scale), and
split-conformal prediction sets and intervals in the graph."""

from deploykit.uncertainty.calibration import CalibrationReport, calibration
from deploykit.uncertainty.compare import compare
from deploykit.uncertainty.conformal import ConformalConfig
from deploykit.uncertainty.ensemble import build_ensemble, export_ensemble_onnx
from deploykit.uncertainty.masks import MaskKind
from deploykit.uncertainty.mc_export import MCExportRecord, export_mc_onnx
from deploykit.uncertainty.mc_graph import MCConfig
from deploykit.uncertainty.measures import uncertainties
from deploykit.uncertainty.predictor import UncertaintyPredictor, UncertaintyResult
from deploykit.uncertainty.selective import SelectiveTarget
from deploykit.uncertainty.temperature import fit_mc_temperature, fit_temperature

__all__ = [
    "CalibrationReport",
    "ConformalConfig",
    "MCConfig",
    "MCExportRecord",
    "MaskKind",
    "SelectiveTarget",
    "UncertaintyPredictor",
    "UncertaintyResult",
    "build_ensemble",
    "calibration",
    "compare",
    "export_ensemble_onnx",
    "export_mc_onnx",
    "fit_mc_temperature",
    "fit_temperature",
    "uncertainties",
]
