"""deploykit: from a trained Keras model to validated, served artifacts.

The public API is re-exported here and imported lazily, so ``import deploykit``
does not import TensorFlow until a function that needs it is used.
"""

from __future__ import annotations

from deploykit._lazy import lazy_exports
from deploykit._version import __version__

# public name -> module that defines it
_API = {
    # data and models
    "Dataset": "deploykit.data.dataset",
    "SplitConfig": "deploykit.data.dataset",
    "load_dataset": "deploykit.data.dataset",
    "load_model": "deploykit.io.models",
    "as_model": "deploykit.io.inputs",
    "as_dataset": "deploykit.io.inputs",
    "save_model": "deploykit.io.models",
    "SHIPPED_MODEL": "deploykit.shipped",
    # training
    "TrainConfig": "deploykit.training",
    "train": "deploykit.training",
    "find_lr": "deploykit.training",
    "build_model": "deploykit.training",
    # steps
    "fold_batchnorm": "deploykit.fold",
    "FoldReport": "deploykit.fold",
    "prune": "deploykit.sparsity",
    "prune_structured": "deploykit.sparsity",
    "sparsify_l1": "deploykit.sparsity",
    "compact": "deploykit.sparsity",
    "PruneConfig": "deploykit.sparsity",
    "L1Config": "deploykit.sparsity",
    "SparsityReport": "deploykit.sparsity",
    "CompactReport": "deploykit.sparsity",
    "export_onnx": "deploykit.export",
    "export_tflite": "deploykit.export",
    "export_variant": "deploykit.export",
    "export_bundle": "deploykit.export",
    "quantize_onnx_file": "deploykit.export",
    "validate": "deploykit.export",
    "write_triton_repository": "deploykit.export",
    "write_triton_models": "deploykit.export",
    "ExportConfig": "deploykit.export",
    "QuantConfig": "deploykit.export",
    "TritonConfig": "deploykit.export",
    "Quantization": "deploykit.export",
    "ExportFormat": "deploykit.export",
    "ExportRecord": "deploykit.export",
    "ValidationReport": "deploykit.export",
    "export_mc_onnx": "deploykit.uncertainty",
    "UncertaintyPredictor": "deploykit.uncertainty",
    "calibration": "deploykit.uncertainty",
    "UncertaintyResult": "deploykit.uncertainty",
    "CalibrationReport": "deploykit.uncertainty",
    "MCExportRecord": "deploykit.uncertainty",
    "optimize": "deploykit.pipeline",
    "OptimizeConfig": "deploykit.pipeline",
    "OptimizeResult": "deploykit.pipeline",
    "serve": "deploykit.serve",
    "ServeConfig": "deploykit.serve",
    # errors
    "DeployKitError": "deploykit.errors",
    "DataError": "deploykit.errors",
    "ModelLoadError": "deploykit.errors",
    "UnsupportedLayerError": "deploykit.errors",
    "UnsafeModelError": "deploykit.errors",
    "UsageError": "deploykit.errors",
    "StepError": "deploykit.errors",
    "ValidationError": "deploykit.errors",
    "ConfigError": "deploykit.errors",
}

__all__ = ["__version__", *_API]


__getattr__, __dir__ = lazy_exports("deploykit", _API, globals())
