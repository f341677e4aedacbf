"""Loading and saving models.

Loads tf_keras ``.keras``, ``.h5`` and SavedModel folders, and Keras 3
``.keras`` files (rebuilt layer by layer in tf_keras; see ``deploykit.keras3``).
Saving is atomic: a temporary file, then a rename.
"""

from __future__ import annotations

import os
from pathlib import Path

from deploykit.atomic import atomic_path
from deploykit.errors import ModelLoadError


def load_model(path: str | os.PathLike, *, unsafe: bool = False):
    """Load a model as a tf_keras model, checking its layers against the support table."""
    from deploykit.backend import keras
    from deploykit.layers import check_layers

    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model {path}: no such file or folder")
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=not unsafe)
    except Exception as exc:
        raise ModelLoadError(f"model {path}: cannot be loaded as a Keras model ({type(exc).__name__}: {exc})") from None
    check_layers(model.layers, unsafe=unsafe)
    return model


def save_model(model, path: str | os.PathLike) -> Path:
    """Save a tf_keras model atomically; the format follows the suffix (.keras or .h5)."""
    path = Path(path)
    if path.suffix not in (".keras", ".h5"):
        raise ModelLoadError(f"model path {path}: use a .keras or .h5 suffix")
    with atomic_path(path) as tmp:
        model.save(tmp)
    return path
