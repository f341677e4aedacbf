"""Export to ONNX and TFLite, and validation of the artifacts in their runtimes.

Importing this package does not import TensorFlow, onnx or onnxruntime; the
functions do.
"""

from deploykit.export.artifact import ExportRecord
from deploykit.export.bundle import BundleReport, export_bundle
from deploykit.export.config import (
    ExportConfig,
    ExportFormat,
    OnnxQuantization,
    Precision,
    QuantizeOption,
    TfliteQuantization,
    Tolerance,
)
from deploykit.export.int8_prep import Int8Preparation, prepare_for_int8
from deploykit.export.onnx_export import export_onnx
from deploykit.export.runtimes import OnnxRunner, TfliteRunner, open_runner
from deploykit.export.tflite_export import export_tflite
from deploykit.export.triton import write_triton_repository
from deploykit.export.validate import ValidationReport, validate, validation_markdown

__all__ = [
    "BundleReport",
    "ExportConfig",
    "ExportFormat",
    "ExportRecord",
    "Int8Preparation",
    "OnnxQuantization",
    "OnnxRunner",
    "Precision",
    "QuantizeOption",
    "TfliteQuantization",
    "TfliteRunner",
    "Tolerance",
    "ValidationReport",
    "export_bundle",
    "export_onnx",
    "export_tflite",
    "open_runner",
    "prepare_for_int8",
    "validate",
    "validation_markdown",
    "write_triton_repository",
]
