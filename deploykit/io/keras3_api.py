"""Keras 3 in, Keras 3 out: the Python API's boundary for callers who build their models with ``import keras``.

deploykit's steps work in tf_keras (TF-MOT and tf2onnx need it). A step
function decorated with :func:`keras3_boundary` takes a Keras 3 model object as
its first argument (imported as a Keras 3 file is, :mod:`deploykit.keras3.convert`),
and every tf_keras model in what it returns (the model itself, a tuple's
items, a result's fields) comes back as a Keras 3 object checked against it,
so a Keras 3 user never holds a tf_keras object. A tf_keras caller is
untouched.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def keras3_boundary(fn: F) -> F:
    """Let ``fn(model, ...)`` take a Keras 3 model and give Keras 3 models back for it."""

    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        from deploykit.io.inputs import as_model, is_keras3_model

        if not is_keras3_model(model):
            return fn(model, *args, **kwargs)
        imported = as_model(model, unsafe=bool(kwargs.get("unsafe", False)), what=fn.__name__)
        return as_keras3(fn(imported, *args, **kwargs))

    return wrapper  # type: ignore[return-value]


def as_keras3(value):
    """``value`` with each tf_keras model in it (itself, a tuple's items, a dataclass's fields) as a Keras 3 model."""
    from deploykit.backend import is_tf_keras_model

    if is_tf_keras_model(value):
        from deploykit.keras3.convert import to_keras3

        return to_keras3(value)
    if isinstance(value, tuple):
        return tuple(as_keras3(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changed = {
            f.name: as_keras3(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if is_tf_keras_model(getattr(value, f.name))
        }
        return dataclasses.replace(value, **changed) if changed else value
    return value
