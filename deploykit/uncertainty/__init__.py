"""MC Dropout uncertainty: a self-contained ONNX model, a Python predictor, calibration metrics."""

from deploykit.uncertainty.calibration import CalibrationReport, calibration
from deploykit.uncertainty.compare import ComparisonReport, compare
from deploykit.uncertainty.mc_export import MCExportRecord, export_mc_onnx
from deploykit.uncertainty.mc_graph import MCConfig, build_mc_graph
from deploykit.uncertainty.predictor import UncertaintyPredictor, UncertaintyResult

__all__ = [
    "CalibrationReport",
    "ComparisonReport",
    "MCConfig",
    "MCExportRecord",
    "UncertaintyPredictor",
    "UncertaintyResult",
    "build_mc_graph",
    "calibration",
    "compare",
    "export_mc_onnx",
]
