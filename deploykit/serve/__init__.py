"""Serve exported ONNX models (deterministic, MC Dropout, deep ensembles) over KServe v2 and v1 REST with onnxruntime.

``ServeConfig`` and ``discover_models`` are light; ``serve`` and ``serve_models``
(kserve, onnxruntime; never TensorFlow) are imported when first used.
"""

from __future__ import annotations

from deploykit._lazy import lazy_exports
from deploykit.serve.config import ServeConfig
from deploykit.serve.discover import discover_models

_LAZY = {"serve": "deploykit.serve.server", "serve_models": "deploykit.serve.server"}

__all__ = ["ServeConfig", "discover_models", *_LAZY]

__getattr__, __dir__ = lazy_exports("deploykit.serve", _LAZY, globals())
