"""Export to ONNX and TFLite, and validation of the artifacts in their runtimes.

Importing this package does not import TensorFlow, onnx or onnxruntime; the
functions do.
"""

from deploykit.export.artifact import ExportRecord
from deploykit.export.bundle import export_bundle, export_variant
from deploykit.export.config import (
    ExportConfig,
    ExportFormat,
    Precision,
    QuantConfig,
    Quantization,
    Tolerance,
    TritonConfig,
)
from deploykit.export.int8_prep import prepare_for_int8
from deploykit.export.onnx_export import export_onnx, quantize_onnx_file
from deploykit.export.runtimes import OnnxRunner, TfliteRunner, open_runner
from deploykit.export.tflite_export import export_tflite
from deploykit.export.triton import write_kserve_manifest, write_triton_models, write_triton_repository
from deploykit.export.validate import ValidationReport, validate

__all__ = [
    "ExportConfig",
    "ExportFormat",
    "ExportRecord",
    "OnnxRunner",
    "Precision",
    "QuantConfig",
    "Quantization",
    "TfliteRunner",
    "Tolerance",
    "TritonConfig",
    "ValidationReport",
    "export_bundle",
    "export_onnx",
    "export_tflite",
    "export_variant",
    "open_runner",
    "prepare_for_int8",
    "quantize_onnx_file",
    "validate",
    "write_kserve_manifest",
    "write_triton_models",
    "write_triton_repository",
]
