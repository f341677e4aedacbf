"""What the public functions accept, coerced in one place: ``as_model`` and ``as_dataset``.

The Python API takes what the CLI takes. A model is a tf_keras model, a
Keras 3 model object (saved to a temporary .keras file and imported exactly as
a Keras 3 file is), or a path. Data is a :class:`~deploykit.data.dataset.Dataset`,
``"digits"``, a data file or folder, or ``(x, y)`` arrays (split as a file is).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from deploykit.errors import DataError, UsageError

log = logging.getLogger(__name__)


def as_model(obj, *, unsafe: bool = False, what: str = "model", data=None, say=None):
    """A tf_keras model from a tf_keras model, a Keras 3 model object, or a model file / folder.

    ``data`` (what ``data=`` was given) sizes the input axes a file or Keras 3 object leaves unsized
    (:mod:`deploykit.io.lengths`); ``say`` reports it.
    """
    if isinstance(obj, (str, os.PathLike)):
        from deploykit.io.lengths import load_model_for

        return load_model_for(obj, data, unsafe=unsafe, say=say)
    if is_keras3_model(obj):
        return _import_keras3_object(obj, unsafe, data, say)
    from deploykit.backend import is_tf_keras_model

    if is_tf_keras_model(obj):
        from deploykit.core.custom_dropout import remember, unforced
        from deploykit.core.layers import check_layers
        from deploykit.core.nested import remember as remember_lines
        from deploykit.core.nested import say
        from deploykit.core.tf_ops import tf_op_lines
        from deploykit.io.flat import flat_model
        from deploykit.io.models import check_single_io
        from deploykit.io.rebuild import config_of

        config, found = unforced(config_of(obj))  # Dropout(...)(x, training=True): rebuilt without it
        flat = flat_model(obj, config if found else None, forced=tuple(r.layer for r in found), live=True)
        lines = tf_op_lines(config)  # TensorFlow calls read as the built-in layers computing them: said once read
        say(lines)
        remember_lines(flat, lines)
        remember(flat, found, live=True)
        check_layers(flat.layers, unsafe=True)  # a live object's code already ran; a layer no step takes is refused
        return check_single_io(flat)  # packed when it has several inputs or outputs
    raise UsageError(f"{what}: expected a Keras model or a model file, got {type(obj).__module__}.{type(obj).__name__}")


def as_dataset(
    obj, *, label_column: str = "label", seed: int = 42, what: str = "data", class_names=None, task=None, layout=None
):
    """A Dataset from a Dataset, ``"digits"`` / ``"diabetes"``, a data path, or an ``(x, y)`` pair of arrays.

    ``task`` (a Task or its name; None: read off the labels) says whether the labels are classes or regression targets.
    ``layout`` (:class:`deploykit.core.multi_io.Layout`, a model's several inputs / outputs): the data may also be
    an .npz or a dict of arrays named after them.
    """
    from deploykit.configs import choice
    from deploykit.core.task import Task
    from deploykit.data.dataset import Dataset, SplitConfig, _split_arrays, check_class_names, load_dataset

    names = None if class_names is None else check_class_names("class_names", class_names)
    task = None if task is None else choice(Task, "task", task)
    if layout is not None and isinstance(obj, dict):  # arrays named after the model's tensors, as an .npz holds them
        from pathlib import Path as _Path

        from deploykit.data.dataset import load_named_npz

        return load_named_npz(_Path("arrays"), obj, layout, SplitConfig(seed=seed), names, task)
    if isinstance(obj, Dataset):
        if layout is not None and obj.layout is None:
            import dataclasses

            obj = dataclasses.replace(obj, layout=layout)
        if names is not None and names != obj.class_names:  # a Dataset is not renamed behind its back
            raise DataError(
                f"data {obj.name!r} names its classes {list(obj.class_names)}, but class_names {list(names)} were given"
            )
        if task is not None and task is not obj.task:
            raise DataError(f"data {obj.name!r} is a {obj.task.value} dataset, but task {task.value} was given")
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return load_dataset(
            obj, label_column=label_column, split=SplitConfig(seed=seed), class_names=names, task=task, layout=layout
        )
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return _split_arrays("arrays", obj[0], obj[1], SplitConfig(seed=seed), names=names, task=task)
    raise UsageError(f"{what}: expected a Dataset, 'digits', a data file or (x, y) arrays, got {type(obj).__name__}")


def read_for_model(read, model, task, say=None):
    """``read(task)`` (the data, read with the task the user set, or None), read again as regression targets when
    they are a one-unit model's (:func:`one_unit_regression`) or the label matrix of a multi-label head
    (:func:`multi_label_units`), which is said in one line."""
    from deploykit.core.task import MULTI_LABEL, Task
    from deploykit.data.onehot import zero_one_matrix

    say = say or log.info
    data = read(task)
    if one_unit_regression(model, data, task):
        say(
            f"data {data.name}: its {data.num_classes} whole-number label values are read as the regression target "
            "of the model's one linear output (give --task classification if they are classes)"
        )
        data = read(Task.REGRESSION)
    units = multi_label_units(model)
    if units and task is None and data.task is Task.CLASSIFICATION:  # one-hot rows, read as class ids
        matrix = read(Task.REGRESSION)
        if matrix.num_outputs == units:
            say(f"data {data.name}: its one-hot label rows are read as the 0/1 label matrix of a multi-label head")
            data = matrix
    if units and data.task is Task.REGRESSION and zero_one_matrix(data.y_train):  # else bounded regression targets
        say(MULTI_LABEL.format(units=units))
    return data


def multi_label_units(model) -> int:
    """How many sigmoid units a multi-label head has (several sigmoid units side by side), else 0."""
    from deploykit.core.graph import graph_from_model
    from deploykit.core.task import OutputKind, output_kind

    width = model.output_shape[-1]
    if not isinstance(width, int) or width < 2 or len(model.output_shape) != 2:
        return 0
    return width if output_kind(graph_from_model(model, unsafe=True)) is OutputKind.SIGMOID else 0


def one_unit_regression(model, data, task_given) -> bool:
    """Whether ``data``'s labels, read as more than two classes, are the regression targets of ``model``'s one linear
    output unit: a unit with no sigmoid or softmax cannot tell three classes apart, and the labels were only read as
    classes because they are whole numbers (keras.io's weather forecaster, LSTM -> Dense(1), on whole degrees). Not
    when the user set the task; a one-unit logit on two classes stays a binary classifier."""
    from deploykit.core.graph import graph_from_model
    from deploykit.core.task import OutputKind, Task, output_kind

    if task_given is not None or data.task is not Task.CLASSIFICATION or data.num_classes <= 2:
        return False
    if model.output_shape[-1] != 1:
        return False
    return output_kind(graph_from_model(model, unsafe=True)) is OutputKind.VALUES


def as_reference(obj, *, unsafe: bool = False):
    """A reference to compare artifacts with: None, a model (object or file), or any ``f(x, training=False)``
    callable."""
    if obj is None:
        return None
    if isinstance(obj, (str, os.PathLike)) or is_keras3_model(obj):
        return as_model(obj, unsafe=unsafe, what="reference")
    return obj


def as_calibration(obj):
    """Calibration data as the exporters sample it: None, an array of inputs, or anything :func:`as_dataset` takes."""
    import numpy as np

    if obj is None or isinstance(obj, np.ndarray) or hasattr(obj, "sample_train"):
        return obj
    return as_dataset(obj, what="calibration data")


def is_keras3_model(obj) -> bool:
    """A Keras 3 model object (not tf_keras's): imported through a file, given back as Keras 3 files."""
    module = type(obj).__module__
    return (
        module.startswith("keras")
        and not module.startswith("keras.src.legacy")
        and hasattr(obj, "save")
        and not module.startswith("tf_keras")
        and hasattr(obj, "layers")
    )


def _import_keras3_object(model, unsafe: bool, data=None, say=None):
    """Save a Keras 3 model to a temporary .keras file and import it as deploykit imports such files (its custom
    classes, if any, are the object's own: :func:`deploykit.keras3.inline.classes_of`)."""
    from deploykit.errors import DeployKitError
    from deploykit.io.lengths import load_model_for
    from deploykit.keras3.inline import classes_of

    with tempfile.TemporaryDirectory(prefix="deploykit-keras3-") as tmp:
        path = Path(tmp) / f"{model.name or 'model'}.keras"
        model.save(path)
        try:  # the object's own custom classes are its code, given: read as what their call computes
            with classes_of(model):
                return load_model_for(path, data, unsafe=unsafe, say=say)
        except DeployKitError as exc:  # named after the object the caller holds, not a scratch file gone on return
            exc.args = tuple(
                a.replace(f"model {path}", f"Keras 3 model {model.name!r}").replace(str(path), repr(model.name))
                if isinstance(a, str)
                else a
                for a in exc.args
            )
            raise
