"""Keras 3 model files in and out of tf_keras.

TensorFlow >= 2.16 saves Keras 3 ``.keras`` files by default, which tf_keras
cannot read. :func:`import_keras3` reads the file's config (checked before
anything is deserialized) as a graph (:mod:`deploykit.core.graph`), rebuilds it in
tf_keras (mapping the config differences between the two Keras), loads the
file with Keras 3 to copy its weights by name, and checks that both models give
the same outputs on random inputs within :data:`TOLERANCE`.

:func:`save_keras3` goes back: a tf_keras model is rebuilt layer by layer in
Keras 3, checked the same way, and saved as a Keras 3 ``.keras`` file, so a
Keras 3 user gets back files their framework opens.

This is the one module that imports Keras 3 (``import keras``), always inside
functions, and with the environment and the global random states restored
afterwards so tf_keras is not affected.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import os
import random

import numpy as np

from deploykit.atomic import atomic_path
from deploykit.core.graph import (
    Graph,
    call_layer,
    graph_from_config,
    graph_from_model,
    one_input,
    random_inputs,
    to_keras,
)
from deploykit.core.lengths import sized_shapes
from deploykit.core.modelfile import ModelFile, check_model_config
from deploykit.errors import ModelLoadError, UnsupportedLayerError
from deploykit.keras3.activations import expand_activations
from deploykit.keras3.ops import BUILD_SHAPES, depthwise_kernel, fill_from_source, lower_config
from deploykit.keras3.rnn import ordered_weights, rnn_options, wrapped_layers

#: Largest output difference accepted between the Keras 3 model and its tf_keras rebuild (times the outputs'
#: RMS when above 1: float32 kernels round relative to the values, and a regressor's may be in the hundreds).
TOLERANCE = 1e-5
#: Random inputs the two models are compared on.
CHECK_SAMPLES = 64

# Keras 3 config keys that tf_keras names differently, per layer type.
_RENAMED = {"LeakyReLU": {"negative_slope": "alpha"}}
# Keras 3 options tf_keras lacks: dropped when they hold their neutral value, refused otherwise.
_NEUTRAL = {
    "quantization_config": None,
    "lora_rank": None,
    "lora_alpha": None,
    "input_axes": None,
    "output_axes": None,
    "rms_scaling": False,
}
# Variables that are not model state (Keras 3 dropout layers keep their RNG state in one).
_NOT_WEIGHTS = ("seed_generator",)


def import_keras3(
    model_file: ModelFile,
    *,
    unsafe: bool = False,
    seed: int = 0,
    custom_objects: dict | None = None,
    input_shapes: dict[str, tuple] | None = None,
    inlined=None,
):
    """Rebuild a Keras 3 model file as a tf_keras model (Sequential when a single path) with identical weights.

    ``custom_objects`` maps custom class names the file holds to the Keras layer names read in their place
    (:mod:`deploykit.core.custom_dropout`), for Keras 3 to load the file's weights with. ``input_shapes`` (input
    name -> per-sample shape, :mod:`deploykit.io.lengths`) sizes the axes the file leaves unsized (a text model's
    length): the rebuild is checked, and exported, at those sizes. ``inlined``
    (:class:`deploykit.keras3.inline.Inlined`, for a file with custom layers) is the model already loaded with its
    custom layers inlined: its config is ``model_file``'s, its weights are read from it, and the rebuild is checked
    against the user's own model.
    """
    path = model_file.path
    lowering = lower_config(model_file.config)
    graph, added = _tf_keras_graph(dataclasses.replace(model_file, config=lowering.config), unsafe, input_shapes)
    with keras3_context() as keras3:
        source = inlined.source if inlined is not None else _load_keras3(keras3, path, custom_objects)
        reference = inlined.reference if inlined is not None else source
        fill_from_source(graph, lowering, source)
        model = to_keras(graph)
        for node in graph.nodes:
            # the layers computing an activation tf_keras lacks, or an operation layer, hold no weights
            if node.name in lowering.depthwise:
                _copy_depthwise(lowering.source_layer(source, node.name), model.get_layer(node.name))
            elif node.name in lowering.constants:  # x @ W with W a constant: a Dense layer whose kernel is W
                model.get_layer(node.name).set_weights(lowering.constants[node.name])
            elif node.name not in added | lowering.synthetic | lowering.layer_scales:
                _copy_weights(path, lowering.source_layer(source, node.name), model.get_layer(node.name))
        x = _check_inputs(graph, seed)
        diff = _max_abs_diff(path, keras3, reference, model, x)
        own = _own_change(keras3, reference, x) if not diff <= TOLERANCE else 0.0
        del source, reference
    if not diff <= TOLERANCE:
        raise ModelLoadError(
            f"model {path}: the tf_keras rebuild of this Keras 3 model differs from it by {diff:.3g} "
            f"(largest output difference on {CHECK_SAMPLES} random inputs, relative to the outputs' RMS when above 1; "
            f"tolerance {TOLERANCE:g})" + _chaotic(own)
        )
    return model


def _load_keras3(keras3, path, custom_objects: dict | None):
    """The file loaded by Keras 3 in safe mode, recognized custom classes read as their Keras base (one line when
    Keras 3 cannot load it)."""
    from deploykit.core.custom_dropout import read_in_place

    objects = {name: getattr(keras3.layers, base) for name, base in (custom_objects or {}).items()}
    try:
        with read_in_place(keras3, objects):
            return keras3.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as exc:
        raise ModelLoadError(
            f"model {path}: Keras 3 cannot load it ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})"
        ) from None


def _chaotic(own: float) -> str:
    """Why a failed check may say nothing about the rebuild: the Keras 3 model moves as much on its own."""
    if not own > TOLERANCE:
        return ""
    return (
        f"; the Keras 3 model itself moves by {own:.3g} when its inputs change by 1e-6 of themselves, so float "
        "rounding decides its outputs and no rebuild can match them (a deep network with random weights can be "
        "chaotic; a trained one is not)"
    )


def _tf_keras_graph(
    model_file: ModelFile, unsafe: bool, input_shapes: dict[str, tuple] | None = None
) -> tuple[Graph, set[str]]:
    """The model's graph with tf_keras layer configs (no weights yet), and the nodes added for activations."""
    model_file.layer_configs()  # refuses subclassed models by name
    check_model_config(model_file, unsafe=unsafe)
    name = str(model_file.config.get("config", {}).get("name") or "deploykit_model")
    graph = graph_from_config(model_file.config, unsafe=unsafe, model_name=name)
    if len(graph.inputs) == 1:
        graph.inputs = {next(iter(graph.inputs)): _input_shape(model_file)}
    # unsized axes (several inputs: each InputLayer's own shape) take the data's sizes, or are refused
    graph.inputs = sized_shapes(model_file.path, graph.inputs, input_shapes)
    added = expand_activations(graph)
    for node in graph.nodes:
        kind = node.spec.class_name
        if not node.spec.support.keras3_import:
            raise UnsupportedLayerError(node.name, kind, "deploykit cannot rebuild it from a Keras 3 file")
        node.spec.config = tf_keras_config(node.name, kind, node.spec.config)
    return graph, added


def _input_shape(model_file: ModelFile) -> tuple | None:
    """The single input's declared per-sample shape (None for an unsized axis), wherever the file records it."""
    config = model_file.config.get("config", {})
    shape = None
    for layer in model_file.layer_configs():
        if layer.get("class_name") == "InputLayer":
            c = layer.get("config", {})
            shape = c.get("batch_shape") or c.get("batch_input_shape")
            break
    shape = shape or config.get("build_input_shape") or (model_file.config.get("build_config") or {}).get("input_shape")
    return tuple(shape[1:]) if shape else None


def tf_keras_config(name: str, kind: str, config: dict) -> dict:
    """Translate one Keras 3 layer config to tf_keras, refusing what tf_keras cannot express."""
    from deploykit.backend import keras

    config = wrapped_layers(
        name, kind, rnn_options(name, kind, config, to_keras3=False), tf_keras_config, to_keras3=False
    )
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
    cls = getattr(keras.layers, kind, None)
    shapes = {key: out.pop(key, None) for key, _default in BUILD_SHAPES.get(kind, ())}  # not constructor options
    if cls is not None:
        out = {**_accepted_options(cls, name, kind, out, _TF_KERAS_LAYER_KEYS, _keras3_class(kind)), **shapes}
    try:
        cls.from_config(copy.deepcopy(out))
    except Exception as exc:
        raise UnsupportedLayerError(
            name, kind, f"tf_keras cannot build it from the Keras 3 config ({type(exc).__name__}: {exc})"
        ) from None
    return out


@functools.cache
def _keras3_class(kind: str):
    """Keras 3's layer class of that name (None when it has none): an option tf_keras lacks, at its default in it,
    is neutral (Keras 3's Resizing adds ``fill_mode="constant"``, used only with ``pad_to_aspect_ratio``). Looked
    up once per class name (a class does not change in a process), not once per layer."""
    with keras3_context() as keras3:
        return getattr(keras3.layers, kind, None)


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


#: Weights the two Keras name differently: (tf_keras name, Keras 3 name) per layer type.
_WEIGHT_NAMES = {"DepthwiseConv2D": {"depthwise_kernel": "kernel"}}


def _copy_weights(path, source, target) -> None:
    """Set ``target``'s (tf_keras) weights from ``source``'s (Keras 3), matched by name."""
    if ordered_weights(type(target).__name__):
        return _copy_in_order(path, source, target)
    have = {
        w.name.split("/")[-1]: np.asarray(v)
        for w, v in zip(source.weights, source.get_weights())
        if not any(s in w.name for s in _NOT_WEIGHTS)
    }
    names = _WEIGHT_NAMES.get(type(target).__name__, {})
    values = []
    for w in target.weights:
        short = w.name.split("/")[-1].split(":")[0]
        value = have.pop(names.get(short, short), None)
        if value is None or tuple(value.shape) != tuple(w.shape):
            got = "missing" if value is None else f"shape {value.shape}"
            raise ModelLoadError(
                f"model {path}: layer {target.name!r} weight {short!r} of shape {tuple(w.shape)} "
                f"is {got} in the Keras 3 file"
            )
        values.append(value)
    if have:
        raise ModelLoadError(
            f"model {path}: layer {target.name!r} has Keras 3 weights tf_keras does not use: {sorted(have)}"
        )
    if values:
        target.set_weights(values)


def _copy_depthwise(source, target) -> None:
    """A grouped Conv2D's kernel (and bias) into the DepthwiseConv2D standing for it (deploykit.keras3.ops)."""
    kernel, *rest = source.get_weights()
    target.set_weights([depthwise_kernel(kernel, target.depth_multiplier), *rest])


def _copy_in_order(path, source, target) -> None:
    """A wrapper's weights (its layers name theirs alike): the same order and shapes in both Keras."""
    values = [
        np.asarray(v)
        for w, v in zip(source.weights, source.get_weights())
        if not any(s in w.path for s in _NOT_WEIGHTS)
    ]
    shapes = [tuple(w.shape) for w in target.weights]
    if [tuple(v.shape) for v in values] != shapes:
        raise ModelLoadError(
            f"model {path}: layer {target.name!r} weights of shapes {shapes} do not match the Keras 3 "
            f"file's {[tuple(v.shape) for v in values]}"
        )
    target.set_weights(values)


def _check_inputs(graph: Graph, seed: int):
    """The random inputs the rebuild is checked on: one array, or one per input in the model's order; an input an
    Embedding (or CategoryEncoding) reads gets valid ids (a normal draw holds negative ids, which they refuse)."""
    if len(graph.inputs) == 1:
        return random_inputs(graph, CHECK_SAMPLES, seed)
    return [random_inputs(one_input(graph, name), CHECK_SAMPLES, seed + i) for i, name in enumerate(graph.inputs)]


def _own_change(keras3, source, x) -> float:
    """How far the Keras 3 model's own outputs move when its inputs change by 1e-6 of themselves (relative to the
    outputs' RMS when above 1): float rounding's reach, which a rebuild's summation order cannot do better than."""
    from deploykit.core.evaluate import output_scale

    moved = [a * np.float32(1 + 1e-6) for a in x] if isinstance(x, list) else x * np.float32(1 + 1e-6)
    base = joined_outputs(source(x, training=False), keras3.ops.convert_to_numpy).astype(np.float64)
    other = joined_outputs(source(moved, training=False), keras3.ops.convert_to_numpy)
    return float(np.max(np.abs(base - other))) / output_scale(base)


def _max_abs_diff(path, keras3, source, model, x) -> float:
    """The largest output difference on random inputs, divided by the outputs' RMS when that is above 1."""
    from deploykit.core.evaluate import output_scale

    expected = joined_outputs(source(x, training=False), keras3.ops.convert_to_numpy)
    got = joined_outputs(model(x, training=False))
    if expected.shape != got.shape:
        raise ModelLoadError(
            f"model {path}: the tf_keras model gives outputs of shape {got.shape}, the Keras 3 model {expected.shape}"
        )
    return float(np.max(np.abs(expected.astype(np.float64) - got))) / output_scale(expected)


def joined_outputs(out, to_numpy=np.asarray) -> np.ndarray:
    """A model's outputs as one array [N, ...]: several outputs flattened side by side (deploykit.core.multi_io);
    ``to_numpy`` converts one (Keras 3's tensors need its ``ops.convert_to_numpy``)."""
    if not isinstance(out, (list, tuple, dict)):
        return np.asarray(to_numpy(out))
    parts = list(out.values()) if isinstance(out, dict) else list(out)
    arrays = [np.asarray(to_numpy(p)) for p in parts]
    return np.concatenate([a.reshape(len(a), -1) for a in arrays], axis=1)


@contextlib.contextmanager
def keras3_context():
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


# --- back to Keras 3 ------------------------------------------------------------------------


def save_keras3(model, path: str | os.PathLike, *, seed: int = 0):
    """Save a tf_keras model as a Keras 3 ``.keras`` file (atomically), after checking Keras 3 computes the same.

    The model is read as a graph and rebuilt in Keras 3 layer by layer (the
    config differences between the two Keras mapped back), with the same
    weights; both are compared on random inputs within :data:`TOLERANCE`
    before anything is written.
    """
    from pathlib import Path

    path = Path(path)
    if path.suffix != ".keras":
        raise ModelLoadError(f"model path {path}: Keras 3 files use the .keras suffix")
    graph = graph_from_model(model, unsafe=True)
    with keras3_context() as keras3:
        rebuilt = _keras3_model(keras3, graph)
        diff = _max_abs_diff(path, keras3, rebuilt, model, _check_inputs(graph, seed))
        if not diff <= TOLERANCE:
            raise ModelLoadError(
                f"model {path}: the Keras 3 rebuild differs from the tf_keras model by {diff:.3g} "
                f"(relative to the outputs' RMS when above 1; tolerance {TOLERANCE:g}); not written"
            )
        with atomic_path(path) as tmp:
            rebuilt.save(str(tmp))
        del rebuilt
    return path


def _keras3_model(keras3, graph: Graph):
    """The Keras 3 twin of a graph: Sequential when it is a single path, functional otherwise."""
    layers = {}
    for node in graph.nodes:
        kind = node.spec.class_name
        cls = getattr(keras3.layers, kind, None)
        if cls is None:
            raise UnsupportedLayerError(node.name, kind, "Keras 3 has no layer of that name")
        try:
            layers[node.name] = cls.from_config(_keras3_config(cls, kind, node.spec.config))
        except Exception as exc:
            raise UnsupportedLayerError(
                node.name,
                kind,
                f"Keras 3 cannot build it from the tf_keras config "
                f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})",
            ) from None
    if graph.path() is not None:
        name, shape = next(iter(graph.inputs.items()))
        model = keras3.Sequential([keras3.Input(shape=shape, name=name), *layers.values()], name=graph.name)
    else:
        tensors = {name: keras3.Input(shape=shape, name=name) for name, shape in graph.inputs.items()}
        for node in graph.nodes:
            call_layer(layers[node.name], node, tensors)
        outputs = [tensors[o] for o in graph.outputs]
        model = keras3.Model(
            [tensors[n] for n in graph.inputs] if len(graph.inputs) > 1 else tensors[next(iter(graph.inputs))],
            outputs if len(outputs) > 1 else outputs[0],
            name=graph.name,
        )
    for node in graph.nodes:
        if node.spec.weights:
            _set_keras3_weights(layers[node.name], node.spec.weights)
    return model


def _set_keras3_weights(layer, weights) -> None:
    """Keras 3 keeps non-model state (a dropout's seed generator) among its variables: skip it."""
    values = list(weights)
    targets = [v for v in layer.weights if not any(s in v.path for s in _NOT_WEIGHTS)]
    if len(targets) != len(values):
        raise UnsupportedLayerError(
            layer.name, type(layer).__name__, f"Keras 3 holds {len(targets)} weights, tf_keras {len(values)}"
        )
    for variable, value in zip(targets, values):
        variable.assign(value)
    finalize = getattr(layer, "finalize_state", None)
    if callable(finalize):  # a Keras 3 Normalization computes with tensors derived from its variables, as
        finalize()  # load_own_variables does after loading; without this it would run on its build-time values


# tf_keras config keys Keras 3 does not take (or names differently).
_TO_KERAS3_RENAMED = {kind: {new: old for old, new in names.items()} for kind, names in _RENAMED.items()}
_TF_KERAS_ONLY = ("batch_input_shape", "input_shape", "batch_size")


_LAYER_KEYS = ("name", "trainable", "dtype")
#: What tf_keras's base Layer takes besides a layer's own arguments.
_TF_KERAS_LAYER_KEYS = ("name", "trainable", "dtype", "dynamic", "input_dim", "activity_regularizer", "autocast")
#: Values that mean "the default" in either Keras: an option the other lacks may be dropped when it holds one.
_NEUTRAL_VALUES = (None, False, True, [], {}, "channels_last")


def _keras3_config(cls, kind: str, config: dict) -> dict:
    """A tf_keras layer config for Keras 3: renamed keys, and options Keras 3 lacks dropped when neutral."""
    from deploykit.backend import keras

    name = str(config.get("name", kind))
    config = wrapped_layers(
        name, kind, rnn_options(name, kind, config, to_keras3=True), _keras3_inner_config, to_keras3=True
    )
    renamed = _TO_KERAS3_RENAMED.get(kind, {})
    tf_keras_only = (*_TF_KERAS_ONLY, *(key for key, _default in BUILD_SHAPES.get(kind, ())))
    out = {renamed.get(k, k): copy.deepcopy(v) for k, v in config.items() if k not in tf_keras_only}
    out = _accepted_options(cls, str(out.get("name", kind)), kind, out, _LAYER_KEYS, getattr(keras.layers, kind, None))
    axis = out.get("axis")
    if kind == "BatchNormalization" and isinstance(axis, list) and len(axis) == 1:
        out["axis"] = int(axis[0])  # Keras 3 takes one int (tf_keras writes a list)
    return out


def _keras3_inner_config(name: str, kind: str, config: dict) -> dict:
    """A wrapped layer's tf_keras config for Keras 3 (Keras 3 is imported: this runs inside ``keras3_context()``)."""
    import keras as keras3

    return _keras3_config(getattr(keras3.layers, kind), kind, config)


def _accepted_options(cls, name: str, kind: str, config: dict, layer_keys, source=None) -> dict:
    """``config`` without the options ``cls`` does not take: dropped when neutral, refused otherwise.

    Initializers, regularizers and constraints are always dropped when not taken: they only
    matter for training from scratch. An option equal to its default in the ``source`` class
    (the layer's class in the Keras the config comes from) is neutral too.
    """
    import inspect

    defaults = {k: p.default for k, p in _init_parameters(source).items()}
    params = _init_parameters(cls)
    accepted = set(params)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        accepted |= set(layer_keys)  # passed on to the base Layer
    out = {}
    for key, value in config.items():
        if key in accepted:
            out[key] = value
            continue
        training_only = key.endswith(("_initializer", "_regularizer", "_constraint"))
        neutral = any(
            value is v or (type(value) is type(v) and value == v) for v in (*_NEUTRAL_VALUES, defaults.get(key))
        )
        if not (training_only or neutral) or (key == "trainable" and value is False):
            raise UnsupportedLayerError(name, kind, f"option {key}={value!r} has no equivalent in the other Keras")
    return out


def _init_parameters(cls) -> dict:
    """The constructor parameters of ``cls`` and of the bases its ``**kwargs`` reach (subclasses win)."""
    import inspect

    params = {}
    for base in getattr(cls, "__mro__", ()):
        if "__init__" not in vars(base) or base is object:
            continue
        try:
            own = inspect.signature(base.__init__).parameters
        except (TypeError, ValueError):
            break
        params = {**own, **params}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in own.values()):
            break
    return params


# --- Keras 3 objects for the Python API ----------------------------------------------------


def to_keras3(model, *, seed: int = 0):
    """A Keras 3 model object computing what the tf_keras ``model`` computes (checked within :data:`TOLERANCE`).

    What the Python API gives back to a caller who passed a Keras 3 model (:mod:`deploykit.io.keras3_api`):
    an object ``keras.saving.save_model`` saves and Keras 3 code can call.
    """
    graph = graph_from_model(model, unsafe=True)
    with keras3_context() as keras3:
        rebuilt = _keras3_model(keras3, graph)
        diff = _max_abs_diff(model.name, keras3, rebuilt, model, _check_inputs(graph, seed))
    if not diff <= TOLERANCE:
        raise ModelLoadError(
            f"model {model.name}: the Keras 3 rebuild differs from the tf_keras model by {diff:.3g} "
            f"(relative to the outputs' RMS when above 1; tolerance {TOLERANCE:g})"
        )
    return rebuilt
