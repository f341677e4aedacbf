"""Import Keras 3 model files into tf_keras.

TensorFlow >= 2.16 saves Keras 3 ``.keras`` files by default, which tf_keras
cannot read. deploykit reads the file's config (checked before anything is
deserialized), rebuilds the dense chain as a tf_keras ``Sequential`` (mapping
the config differences between the two Keras), loads the file with Keras 3 to
copy its weights by name, and checks that both models give the same outputs on
random inputs within :data:`TOLERANCE`.

This is the one module that imports Keras 3 (``import keras``), always inside
functions, and with the environment and the global random states restored
afterwards so tf_keras is not affected.
"""

from __future__ import annotations

import contextlib
import copy
import os
import random

import numpy as np

from deploykit.chain import Chain, LayerSpec, from_chain
from deploykit.errors import ModelLoadError, UnsupportedLayerError
from deploykit.modelfile import ModelFile, check_model_config

#: Largest output difference accepted between the Keras 3 model and its tf_keras rebuild.
TOLERANCE = 1e-5
#: Random inputs the two models are compared on.
CHECK_SAMPLES = 64

# Keras 3 config keys that tf_keras names differently, per layer type.
_RENAMED = {"LeakyReLU": {"negative_slope": "alpha"}}
# Keras 3 options tf_keras lacks: dropped when they hold their neutral value, refused otherwise.
_NEUTRAL = {"quantization_config": None, "lora_rank": None, "lora_alpha": None, "input_axes": None, "output_axes": None}
# Variables that are not model state (Keras 3 dropout layers keep their RNG state in one).
_NOT_WEIGHTS = ("seed_generator",)


def import_keras3(model_file: ModelFile, *, unsafe: bool = False, seed: int = 0):
    """Rebuild a Keras 3 model file as a tf_keras ``Sequential`` with identical weights."""
    path = model_file.path
    specs = _chain_specs(model_file, unsafe)
    input_shape = _input_shape(model_file)
    name = str(model_file.config.get("config", {}).get("name") or "deploykit_model")
    model = from_chain(Chain(input_shape, specs, name=name))
    with _keras3() as keras3:
        try:
            source = keras3.saving.load_model(str(path), compile=False, safe_mode=True)
        except Exception as exc:
            raise ModelLoadError(f"model {path}: Keras 3 cannot load it ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})") from None
        for spec, layer in zip(specs, (l for l in model.layers if type(l).__name__ != "InputLayer")):
            _copy_weights(path, source.get_layer(spec.name), layer)
        diff = _max_abs_diff(path, keras3, source, model, input_shape, seed)
        del source
    if not diff <= TOLERANCE:
        raise ModelLoadError(
            f"model {path}: the tf_keras rebuild of this Keras 3 model differs from it by {diff:.3g} "
            f"(largest output difference on {CHECK_SAMPLES} random inputs; tolerance {TOLERANCE:g})"
        )
    return model


def _chain_specs(model_file: ModelFile, unsafe: bool) -> list[LayerSpec]:
    """The model's layers in call order, as tf_keras layer specs without weights."""
    checked = {str(layer.get("config", {}).get("name")): (layer, entry) for layer, entry in check_model_config(model_file, unsafe=unsafe)}
    specs = []
    for name in _call_order(model_file):
        layer, entry = checked[name]
        kind = str(layer["class_name"])
        if not entry.keras3_import:
            raise UnsupportedLayerError(name, kind, "deploykit cannot rebuild it from a Keras 3 file")
        specs.append(LayerSpec(kind, _tf_keras_config(name, kind, layer.get("config", {}))))
    return specs


def _call_order(model_file: ModelFile) -> list[str]:
    """Names of the non-input layers from input to output; refuses anything but a plain chain."""
    layers = model_file.layer_configs()
    names = [str(l.get("config", {}).get("name")) for l in layers]
    if model_file.model_class == "Sequential":
        return [n for n, l in zip(names, layers) if l.get("class_name") != "InputLayer"]
    config = model_file.config["config"]
    inputs, outputs = _endpoints(config.get("input_layers")), _endpoints(config.get("output_layers"))
    model_name = str(config.get("name", model_file.path.name))
    if len(inputs) != 1 or len(outputs) != 1:
        raise UnsupportedLayerError(model_name, model_file.model_class, "only single-input, single-output chains are supported")
    parent = {}
    for name, layer in zip(names, layers):
        if layer.get("class_name") == "InputLayer":
            continue
        parent[name] = _parent(name, layer)
    order, current = [], outputs[0]
    while current != inputs[0]:
        if current not in parent or current in order:
            raise UnsupportedLayerError(model_name, model_file.model_class, f"layer {current!r} is not on a plain chain from the input")
        order.append(current)
        current = parent[current]
    if len(order) != len(parent):
        extra = sorted(set(parent) - set(order))
        raise UnsupportedLayerError(extra[0], model_file.model_class, "the model branches; only plain chains are supported")
    return order[::-1]


def _endpoints(value) -> list[str]:
    """Layer names of a functional config's ``input_layers`` / ``output_layers``."""
    if not value:
        return []
    if isinstance(value[0], str):  # one endpoint: ["name", 0, 0]
        return [value[0]]
    return [str(v[0]) for v in value]


def _parent(name: str, layer: dict) -> str:
    kind = str(layer.get("class_name"))
    nodes = layer.get("inbound_nodes") or []
    if len(nodes) != 1:
        raise UnsupportedLayerError(name, kind, f"called {len(nodes)} times; only plain chains are supported")
    node = nodes[0]
    args = node.get("args", []) if isinstance(node, dict) else None
    if not args or len(args) != 1 or not isinstance(args[0], dict) or args[0].get("class_name") != "__keras_tensor__":
        raise UnsupportedLayerError(name, kind, "takes several inputs or non-tensor arguments; only plain chains are supported")
    # Keras 3 records ``training=False`` and ``mask=None`` for plain calls; anything else changes the layer.
    kwargs = {k: v for k, v in (node.get("kwargs") or {}).items() if v is not None and not (k == "training" and v is False)}
    if kwargs:
        raise UnsupportedLayerError(name, kind, f"called with {kwargs}; only plain calls are supported")
    return str(args[0]["config"]["keras_history"][0])


def _input_shape(model_file: ModelFile) -> tuple[int, ...]:
    config = model_file.config.get("config", {})
    shape = None
    for layer in model_file.layer_configs():
        if layer.get("class_name") == "InputLayer":
            c = layer.get("config", {})
            shape = c.get("batch_shape") or c.get("batch_input_shape")
            break
    shape = shape or config.get("build_input_shape") or (model_file.config.get("build_config") or {}).get("input_shape")
    if not shape or any(d is None for d in shape[1:]):
        raise ModelLoadError(f"model {model_file.path}: the Keras 3 model has no fully defined input shape ({shape})")
    return tuple(int(d) for d in shape[1:])


def _tf_keras_config(name: str, kind: str, config: dict) -> dict:
    """Translate one Keras 3 layer config to tf_keras, refusing what tf_keras cannot express."""
    from deploykit.backend import keras

    renamed = _RENAMED.get(kind, {})
    out = {}
    for key, value in config.items():
        if key in _NEUTRAL:
            if value != _NEUTRAL[key]:
                raise UnsupportedLayerError(name, kind, f"option {key}={value!r} has no tf_keras equivalent")
            continue
        if key == "dtype":
            value = _dtype(name, kind, value)
        elif key == "activation":
            value = _activation(name, kind, value)
        else:
            value = _plain(name, kind, value)
        out[renamed.get(key, key)] = value
    try:
        getattr(keras.layers, kind).from_config(copy.deepcopy(out))
    except Exception as exc:
        raise UnsupportedLayerError(name, kind, f"tf_keras cannot build it from the Keras 3 config ({type(exc).__name__}: {exc})") from None
    return out


def _plain(name: str, kind: str, value):
    """A config value in tf_keras form: serialized objects lose Keras 3's module / registered_name."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k in ("module", "registered_name", "shared_object_id"):
                continue
            if k in _NEUTRAL:
                if v != _NEUTRAL[k]:
                    raise UnsupportedLayerError(name, kind, f"option {k}={v!r} has no tf_keras equivalent")
                continue
            out[k] = _plain(name, kind, v)
        return out
    if isinstance(value, list):
        return [_plain(name, kind, v) for v in value]
    return value


def _dtype(name: str, kind: str, value) -> str:
    policy = value.get("config", {}).get("name") if isinstance(value, dict) else value
    if policy not in ("float32", None):
        raise UnsupportedLayerError(name, kind, f"dtype policy {policy!r}; deploykit imports float32 models")
    return "float32"


def _activation(name: str, kind: str, value) -> str:
    from deploykit.backend import keras

    if not isinstance(value, str):
        raise UnsupportedLayerError(name, kind, "a custom activation cannot be rebuilt in tf_keras")
    try:
        keras.activations.get(value)
    except Exception:
        raise UnsupportedLayerError(name, kind, f"activation {value!r} has no tf_keras equivalent") from None
    return value


def _copy_weights(path, source, target) -> None:
    """Set ``target``'s (tf_keras) weights from ``source``'s (Keras 3), matched by name."""
    have = {
        w.name.split("/")[-1]: np.asarray(v)
        for w, v in zip(source.weights, source.get_weights())
        if not any(s in w.name for s in _NOT_WEIGHTS)
    }
    values = []
    for w in target.weights:
        short = w.name.split("/")[-1].split(":")[0]
        value = have.pop(short, None)
        if value is None or tuple(value.shape) != tuple(w.shape):
            got = "missing" if value is None else f"shape {value.shape}"
            raise ModelLoadError(f"model {path}: layer {target.name!r} weight {short!r} of shape {tuple(w.shape)} is {got} in the Keras 3 file")
        values.append(value)
    if have:
        raise ModelLoadError(f"model {path}: layer {target.name!r} has Keras 3 weights tf_keras does not use: {sorted(have)}")
    if values:
        target.set_weights(values)


def _max_abs_diff(path, keras3, source, model, input_shape: tuple[int, ...], seed: int) -> float:
    x = np.random.default_rng(seed).normal(size=(CHECK_SAMPLES, *input_shape)).astype(np.float32)
    expected = np.asarray(keras3.ops.convert_to_numpy(source(x, training=False)))
    got = model(x, training=False).numpy()
    if expected.shape != got.shape:
        raise ModelLoadError(f"model {path}: the tf_keras rebuild gives outputs of shape {got.shape}, the Keras 3 model {expected.shape}")
    return float(np.max(np.abs(expected.astype(np.float64) - got)))


@contextlib.contextmanager
def _keras3():
    """Import Keras 3 and use it, then restore the environment and the global random states.

    Importing Keras 3 sets environment variables, and loading a model draws
    seeds from Python's ``random``; neither may leak into tf_keras work.
    """
    env = dict(os.environ)
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        try:
            import keras
        except ImportError as exc:
            raise ModelLoadError(f"Keras 3 is needed to import Keras 3 files ({exc}); pip install 'keras>=3'") from None
        yield keras
    finally:
        for key in set(os.environ) - set(env):
            del os.environ[key]
        for key, value in env.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
        random.setstate(py_state)
        np.random.set_state(np_state)
