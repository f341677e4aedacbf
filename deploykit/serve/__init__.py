"""Serve exported ONNX models (deterministic, MC Dropout, deep ensembles) over KServe v2 and v1 REST with onnxruntime.

``ServeConfig`` is light; ``serve`` (kserve, onnxruntime; never TensorFlow) is imported when first used.
``serve_models`` and ``discover_models`` are imported from their modules (``serve.server``, ``serve.discover``).
"""

from __future__ import annotations

from deploykit._lazy import lazy_exports
from deploykit.serve.config import ServeConfig

_LAZY = {"serve": "deploykit.serve.server"}

__all__ = ["ServeConfig", *_LAZY]

__getattr__, __dir__ = lazy_exports("deploykit.serve", _LAZY, globals())
