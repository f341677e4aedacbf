"""deploykit: from a trained Keras dense network to validated, served artifacts.

The public API is re-exported here and imported lazily, so ``import deploykit``
does not import TensorFlow until a function that needs it is used.
"""

from __future__ import annotations

import importlib

from deploykit._version import __version__

# public name -> module that defines it
_API = {
    # data and models
    "Dataset": "deploykit.data",
    "SplitConfig": "deploykit.data",
    "load_dataset": "deploykit.data",
    "load_model": "deploykit.io",
    "save_model": "deploykit.io",
    # training
    "TrainConfig": "deploykit.train",
    "train": "deploykit.train",
    "find_lr": "deploykit.train",
    "build_model": "deploykit.train",
    # steps
    "fold_batchnorm": "deploykit.fold",
    "prune": "deploykit.sparsity",
    "sparsify_l1": "deploykit.sparsity",
    "compact": "deploykit.sparsity",
    "export_onnx": "deploykit.export",
    "export_tflite": "deploykit.export",
    "validate": "deploykit.export",
    "export_mc_onnx": "deploykit.uncertainty",
    "UncertaintyPredictor": "deploykit.uncertainty",
    "calibration": "deploykit.uncertainty",
    "optimize": "deploykit.pipeline",
    "OptimizeConfig": "deploykit.pipeline",
    # errors
    "DeployKitError": "deploykit.errors",
    "DataError": "deploykit.errors",
    "ModelLoadError": "deploykit.errors",
    "UnsupportedLayerError": "deploykit.errors",
    "ValidationError": "deploykit.errors",
    "ConfigError": "deploykit.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'deploykit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
