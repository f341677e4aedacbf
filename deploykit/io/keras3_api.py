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
        data = _data_argument(fn, model, args, kwargs)
        imported = as_model(model, unsafe=bool(kwargs.get("unsafe", False)), what=fn.__name__, data=data)
        return as_keras3(fn(imported, *args, **kwargs))

    return wrapper  # type: ignore[return-value]


def _data_argument(fn, model, args, kwargs):
    """What the call gave ``fn``'s ``data`` parameter (None when it has none): the sizes of the input axes a Keras 3
    model leaves unsized (a text model's ``Input(shape=(None,))``) come from it, as ``optimize`` sizes them."""
    import inspect

    try:
        bound = inspect.signature(fn).bind_partial(model, *args, **kwargs)
    except TypeError:
        return None  # the call itself is wrong: fn raises its own error for it
    return bound.arguments.get("data")


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
