"""Models and data in and out of the public API: ``models`` (load and save model files), ``inputs`` (what the
public functions accept, coerced in one place) and ``keras3_api`` (Keras 3 in, Keras 3 out). Layer 3: it
imports ``deploykit.core``, ``deploykit.keras3``, ``deploykit.data`` and the top-level utility modules.

The public names are re-exported lazily (``from deploykit.io import load_model``), without importing TensorFlow.
"""

from __future__ import annotations

from deploykit._lazy import lazy_exports

_API = {
    "load_model": "deploykit.io.models",
    "save_model": "deploykit.io.models",
    "as_model": "deploykit.io.inputs",
    "as_dataset": "deploykit.io.inputs",
}

__all__ = [*_API]

__getattr__, __dir__ = lazy_exports("deploykit.io", _API, globals())
