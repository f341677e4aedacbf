"""A tf_keras model holding nested models or augmentation layers, rebuilt as one flat model with its weights.

Users of Keras 2 saved the same tutorials' models (a ``data_augmentation``
Sequential, a keras.applications base) as ``.h5`` or tf_keras ``.keras`` files.
tf_keras loads them as nested objects; every deploykit step reads one flat
graph. :func:`flat_model` flattens the file's config
(:mod:`deploykit.core.nested`, the rewrite the Keras 3 import does), builds it
in tf_keras from the config alone (its layers passed the support table), copies
each layer's weights from where it sits in the loaded model, and checks the
two compute the same on random inputs before the flat one is used.
"""

from __future__ import annotations

import copy

from deploykit.core.nested import Nesting, flatten, flattening
from deploykit.errors import ModelLoadError, one_line
from deploykit.io.rebuild import config_of, max_diff
from deploykit.io.tf_ops import lambdas_as_models, without_tf_ops
from deploykit.keras3.convert import CHECK_SAMPLES, TOLERANCE  # held as a Keras 3 import is


def flat_model(
    model, config: dict | None = None, what: str | None = None, forced: tuple[str, ...] = (), *, live: bool = False
):
    """``model`` itself when it holds no nested model, augmentation layer or TensorFlow operation, else its flat
    rebuild (TensorFlow operations rewritten as the built-in layers computing them, :mod:`deploykit.io.tf_ops`).

    ``config``: the model's config as its file holds it (``{"class_name", "config"}``; default: the object's own),
    ``what`` names it in errors (the file's path; default: the model's name). ``forced``: Dropout layers the file
    calls with ``training=True`` (:mod:`deploykit.core.custom_dropout`, absent from ``config``): the model is rebuilt
    from ``config`` so that they run in inference mode, and checked against ``model`` with their rate at 0 (then
    restored). ``live``: ``model`` is an object given to the API, so what flattening did is said here.
    """
    what = what or f"model {model.name!r}"
    nesting = Nesting()
    original = config or config_of(model)
    traced = lambdas_as_models(model, copy.deepcopy(original))  # traceable Lambdas: nested models of their calls
    flat_config = flatten(traced, nesting, keras3=False)
    flat = model
    if nesting or forced:
        try:
            flat = _flat(model, flat_config, nesting)
        except Exception as exc:
            if forced or flattening(original, keras3=False):
                raise ModelLoadError(f"{what}: its flat rebuild cannot be built ({one_line(exc)})") from None
            # only the traced Lambdas asked for a rebuild (a SavedModel's revived config): they stay Lambdas
    flat = without_tf_ops(flat, what)  # TensorFlow calls (nested models' too): the built-in layers computing them
    if flat is model:
        return model
    if config is None or live:  # an object given to the API; a file's loader says it (deploykit.io.models)
        nesting.say()
    rates = {name: model.get_layer(name).rate for name in forced}
    try:
        for name in rates:  # the model's own calls keep training=True: identity for the check
            model.get_layer(name).rate = 0.0
        diff = max_diff(model, flat)
    finally:  # the user's object is theirs: its rates as they were
        for name, rate in rates.items():
            model.get_layer(name).rate = rate
    if not diff <= TOLERANCE:
        raise ModelLoadError(
            f"{what}: its flat rebuild differs from the model by {diff:.3g} on "
            f"{CHECK_SAMPLES} random inputs (tolerance {TOLERANCE:g})"
        )
    return flat


def _flat(model, flat_config: dict, nesting: Nesting):
    """The flat config built, each layer with the weights of the layer it comes from (``nesting`` says where)."""
    from deploykit.backend import keras

    flat = keras.Model.from_config(flat_config["config"])
    for layer in flat.layers:
        if layer.weights:
            layer.set_weights(nesting.source_layer(model, layer.name).get_weights())
    return flat
