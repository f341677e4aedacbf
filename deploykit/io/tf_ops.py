"""TensorFlow operations in a tf_keras model, rewritten as the built-in layers they compute.

A tf.keras functional model keeps each TensorFlow call on its tensors (``x / 127.5 - 1``, ``tf.concat``,
``x[:, -1]``) as a ``TFOpLambda`` layer (:mod:`deploykit.core.tf_ops`). No deploykit step can read one: the fold
and pruning see an opaque layer, the MC Dropout graph cannot emit it, and tf_keras's own MobileNetV3 and
TensorFlow's transfer-learning tutorial are full of them. :func:`without_tf_ops` states each call as the Keras 3
operation it is (its arguments bound to the TensorFlow signature, each tensor with its shape) and lets
:func:`deploykit.keras3.ops.lower_operation` rewrite it, exactly as it rewrites a Keras 3 file's ``x + 3.0``:
one place knows what ``Add`` of a constant is (a ``Rescaling``). The rebuilt model keeps every other layer and its
weights, and is checked against the loaded one on random inputs before it is used.
"""

from __future__ import annotations

import copy
import inspect
import logging

import numpy as np

from deploykit.core.nested import MODEL_CLASSES, fresh_name, layer_name, replace_reads
from deploykit.core.tf_ops import TF_FUNCTIONS, TF_OP_LAYERS, tf_function
from deploykit.errors import ModelLoadError, UnsupportedLayerError, one_line
from deploykit.io.rebuild import config_of
from deploykit.keras3.convert import tf_keras_config
from deploykit.keras3.ops import Lowering, lower_operation

log = logging.getLogger(__name__)


def _has_tf_ops(model) -> bool:
    """True when a tf_keras model holds a TensorFlow operation layer."""
    return any(type(layer).__name__ in TF_OP_LAYERS for layer in model.layers)


def without_tf_ops(model, what: str):
    """``model`` itself when it holds no TensorFlow operation layer, else its rebuild with built-in layers in their
    place (the same weights; :func:`deploykit.io.flat.flat_model` checks it computes the same). ``what`` names the
    model in errors."""
    from deploykit.backend import keras

    if not _has_tf_ops(model):
        return model
    config = config_of(model)
    if config["class_name"] not in ("Functional", "Model"):
        raise ModelLoadError(f"{what}: TensorFlow operations outside a functional model")
    # one call per layer: tensors' node indices are the config's (a copy: from_config pops keys, MultiHeadAttention's)
    fresh = keras.Model.from_config(copy.deepcopy(config["config"]))
    fresh.set_weights(model.get_weights())
    layers = config["config"]["layers"]
    names, lowering, out = {layer_name(layer) for layer in layers}, Lowering({}), []
    for entry in layers:
        if entry.get("class_name") not in TF_OP_LAYERS:
            out.append(entry)
            continue
        operation = _as_keras3_operation(fresh.get_layer(layer_name(entry)))
        out += [_as_tf_keras(layer) for layer in lower_operation(operation, names, lowering)]
    config["config"]["layers"] = out
    try:
        rebuilt = keras.Model.from_config(config["config"])
    except Exception as exc:
        raise ModelLoadError(f"{what}: its rebuild with Keras layers cannot be built ({one_line(exc)})") from None
    for layer in rebuilt.layers:
        if layer.name in lowering.constants:
            layer.set_weights(lowering.constants[layer.name])
        elif layer.weights:
            layer.set_weights(fresh.get_layer(layer.name).get_weights())
    return rebuilt


def lambdas_as_models(model, config: dict) -> dict:
    """``config`` (``model``'s, rewritten in place) with each ``Lambda`` layer whose function makes only TensorFlow
    calls of the table (``Lambda(lambda x: x[:, -1:, :])``, ``Lambda(lambda x: x * 200.0)``) as the functional
    model of those calls: flattened then as any nested model, its calls rewritten as built-in layers. A model
    holds a Lambda only when its code was trusted (``unsafe``, or a live object: the function already loaded); it
    is called here on symbolic tensors. Any other Lambda stays as it is (exported, skipped by the steps that
    cannot read it)."""
    lambdas = {l.name: l for l in model._flatten_layers(include_self=False) if type(l).__name__ == "Lambda"}
    if not lambdas:
        return config
    taken, traced, stack = set(), [], [config]
    while stack:  # every layer name in the config, nested models' too: the traced calls' names must be new
        for entry in (stack.pop().get("config") or {}).get("layers") or []:
            taken.add(layer_name(entry))
            stack += [entry] if entry.get("class_name") in MODEL_CLASSES else []
    stack = [config]
    while stack:
        for i, entry in enumerate(layers := (stack.pop().get("config") or {}).get("layers") or []):
            if entry.get("class_name") in MODEL_CLASSES:
                stack.append(entry)
            elif entry.get("class_name") == "Lambda" and layer_name(entry) in lambdas:
                calls = _traced_lambda(lambdas[layer_name(entry)], taken)
                if calls is not None:
                    layers[i] = {**calls, "name": layer_name(entry), "inbound_nodes": entry.get("inbound_nodes")}
                    traced.append(layer_name(entry))
    if traced:
        log.info(f"Lambda layers read as the TensorFlow calls they make: {', '.join(traced)}")
    return config


def _traced_lambda(layer, taken: set[str]) -> dict | None:
    """The functional model config of what a Lambda's function computes on symbolic inputs of its shapes, its layers
    named anew; None when it cannot be traced or calls anything but the table's TensorFlow functions."""
    from deploykit.backend import keras

    shapes = layer.get_input_shape_at(0)
    try:
        if isinstance(shapes, list):
            inputs = [keras.Input(shape=tuple(s[1:])) for s in shapes]
        else:
            inputs = keras.Input(shape=tuple(shapes[1:]))
        config = keras.Model(inputs, layer.function(inputs, **(layer.arguments or {})), name=layer.name).get_config()
    except Exception:  # Python on values, a layer of its own...: the Lambda stays
        return None
    body = [entry for entry in config["layers"] if entry.get("class_name") != "InputLayer"]
    if not all(e.get("class_name") in TF_OP_LAYERS and tf_function(e) in TF_FUNCTIONS for e in body):
        return None
    wrapped = {"class_name": "Functional", "config": config}
    for entry in body:
        old, new = layer_name(entry), fresh_name(f"{layer.name}_{tf_function(entry)}", taken)
        replace_reads(wrapped, old, lambda index, new=new: [new, 0, index])
        entry["name"] = entry["config"]["name"] = new
    return wrapped


def _as_keras3_operation(layer) -> dict:
    """A ``TFOpLambda`` layer (called once) as the config of the Keras 3 operation layer computing the same."""
    kind, name = type(layer).__name__, layer.name
    function = str(layer.get_config().get("function"))
    table = TF_FUNCTIONS.get(function)
    if table is None:
        raise UnsupportedLayerError(name, kind, f"calls tf.{function}, a TensorFlow function deploykit does not read")
    if len(layer.inbound_nodes) != 1:
        raise UnsupportedLayerError(name, kind, f"called {len(layer.inbound_nodes)} times; deploykit reads one call")
    node = layer.inbound_nodes[0]
    try:
        bound = inspect.signature(layer.function).bind(*node.call_args, **node.call_kwargs)
    except TypeError as exc:
        raise UnsupportedLayerError(name, kind, f"a call tf.{function} does not take ({exc})") from None
    bound.apply_defaults()
    values = dict(bound.arguments)
    defaults = inspect.signature(layer.function).parameters
    for key, value in values.items():
        if key not in (*table.args, *table.options, "name") and not _is_default(value, defaults[key].default):
            raise UnsupportedLayerError(name, kind, f"calls tf.{function} with {key}={value!r}; deploykit reads "
                                        f"its default, {defaults[key].default!r}")  # fmt: skip
    options = {table.options[k]: _option(name, kind, k, values[k]) for k in table.options if values[k] is not None}
    return {
        "module": "keras.src.ops.numpy",
        "class_name": table.op,
        "config": {"name": name, **options},
        "inbound_nodes": [{"args": [_value(values[k]) for k in table.args], "kwargs": {}}],
    }


def _is_default(value, default) -> bool:
    plain = isinstance(value, (bool, int, float, str)) and not _is_tensor(value)
    return value is default or (plain and value == default)


def _is_tensor(value) -> bool:
    return hasattr(value, "_keras_history")


def _value(value):
    """A call argument in Keras 3 config form: a tensor reference with its shape, a constant, a slice, a list."""
    import tensorflow as tf

    if _is_tensor(value):
        history = value._keras_history
        shape = [None, *(None if d is None else int(d) for d in value.shape[1:])]
        return {
            "class_name": "__keras_tensor__",
            "config": {"shape": shape, "dtype": "float32", "keras_history": [history.layer.name, history.node_index,
                                                                            history.tensor_index]},
        }  # fmt: skip
    if isinstance(value, (list, tuple)) and value and _numbers(value):  # a constant an .h5 file kept as a list
        return {"class_name": "__numpy__", "config": {"value": np.asarray(value, np.float64).tolist()}}
    if isinstance(value, (list, tuple)):
        return [_value(v) for v in value]
    if value is Ellipsis:
        return {"class_name": "__ellipsis__", "config": {}}
    if isinstance(value, slice):
        value = {"start": value.start, "stop": value.stop, "step": value.step}
    if isinstance(value, dict) and set(value) == {"start", "stop", "step"}:  # SlicingOpLambda's slice
        return {"class_name": "__slice__", "config": dict(value)}
    if isinstance(value, (np.ndarray, np.generic, tf.Tensor, tf.Variable)):
        return {"class_name": "__numpy__", "config": {"value": np.asarray(value, np.float64).tolist()}}
    return value


def _numbers(value) -> bool:
    """True for a number or (nested) lists of numbers only."""
    if isinstance(value, (list, tuple)):
        return all(_numbers(v) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _option(name: str, kind: str, key: str, value):
    """An option's value as plain data: one computed from a tensor (``tf.reshape(x, tf.shape(y))``) is refused."""
    if _is_tensor(value) or (isinstance(value, (list, tuple)) and any(_is_tensor(v) for v in value)):
        raise UnsupportedLayerError(name, kind, f"its {key} is computed from a tensor; deploykit reads constants")
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    if hasattr(value, "as_datatype_enum"):  # a tf.DType (tf.cast's): its name, as Keras 3 writes a dtype
        return value.name
    return list(value) if isinstance(value, tuple) else value


def _as_tf_keras(layer: dict) -> dict:
    """A built-in layer config written by :mod:`deploykit.keras3.ops` as tf_keras writes it (its inbound node's
    tensor references as ``[layer, node, tensor, {}]``)."""
    name, kind = layer_name(layer), str(layer["class_name"])
    config = tf_keras_config(name, kind, layer["config"])
    nodes = []
    for call in layer.get("inbound_nodes") or []:
        args = call["args"][0]
        refs = args if isinstance(args, list) else [args]
        nodes.append([[*ref["config"]["keras_history"], {}] for ref in refs])
    return {"class_name": kind, "config": config, "name": name, "inbound_nodes": nodes}
