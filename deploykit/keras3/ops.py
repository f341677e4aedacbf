"""Keras 3 operation layers (and nested models), rewritten as plain built-in layers before import.

Keras 3 saves a functional model's ``ops.*`` calls and Python arithmetic on
tensors (``x + 3.0``, ``x * (1 / 6)``, ``ops.relu6(x)``: MobileNetV3's hard-swish)
as *operation layers* (``module: keras.src.ops.numpy`` / ``keras.src.ops.nn``)
whose call arguments may hold constants; keras.applications' ConvNeXt nests
``Sequential`` blocks and uses its own ``LayerScale``. None of them exist in
tf_keras. :func:`lower_config` rewrites the model config, without running
anything from the file, into layers every deploykit step knows:

- ``x + c``, ``x - c``, ``c - x``, ``x * c``, ``x / c``, ``-x`` (a scalar ``c``, a
  constant per channel, or one of any shape that broadcasts into a sample, such as
  a learned position embedding frozen by :mod:`deploykit.keras3.inline`): ``Rescaling(scale, offset)``;
- ``maximum(x, c)``, ``minimum(x, c)``, ``clip(x, lo, hi)``, ``relu6``: ``ReLU``
  with ``max_value`` between two ``Rescaling`` shifts (none when the bound is 0);
- ``ops.nn`` activations (``relu``, ``sigmoid``, ``hard_sigmoid``, ``hard_silu``...):
  ``Activation`` (Keras 3 names, expanded by :mod:`deploykit.keras3.activations`);
- the same arithmetic on two tensors: the merge layer of that name (``Add``...);
- ``x @ W`` with W a constant matrix (a custom layer's own weight, frozen when inlined): ``Dense``; ``a @ b`` of two
  tensors, a matrix each per sample: ``Dot``;
- ``normalize(x, axis)`` (L2): ``UnitNormalization(axis)``;
- ``abs(x)``: ``ReLU(x) + ReLU(-x)`` (``Rescaling(-1)``, ``Add``); ``square(x)``: ``Multiply`` of x with itself;
- ``cast(x, "float32")``: the identity (``Activation("linear")``) on the float32 arrays deploykit feeds;
- ``concatenate``, ``expand_dims``, ``squeeze``, ``reshape``, ``transpose``, and ``mean`` / ``max`` / ``sum``
  over a sequence's steps or an image's positions: ``Concatenate``, ``Reshape``, ``Permute``, global pooling
  (:mod:`deploykit.keras3.shape_ops`, from the shapes Keras 3 writes beside each tensor);
- nested models (ConvNeXt's ``Sequential`` blocks, a transfer-learning base) and data augmentation:
  flattened first (:mod:`deploykit.core.nested`);
- ConvNeXt's ``LayerScale`` (``x * gamma``): a per-channel ``Rescaling`` whose
  scale is read from the file's weights (:func:`fill_from_source`); InceptionResNetV2's
  ``CustomScaleLayer`` (``x + y * scale``): ``Rescaling`` then ``Add``;
- a ``Conv2D`` with one group per input channel (ConvNeXt's 7x7 ``groups=channels``):
  the ``DepthwiseConv2D`` it is, its kernel reshaped (:func:`depthwise_kernel`). tf_keras
  runs a grouped convolution as an XLA-compiled function that tf2onnx leaves as a
  ``PartitionedCall`` no runtime knows; a depthwise layer every step knows.

Anything else is left as it is, and refused further on with its name. The
import then checks the rebuilt model against the Keras 3 one as for any file.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from deploykit.core.nested import Nesting, flatten, fresh_name, is_tensor, layer_name, tensor_ref
from deploykit.errors import UnsupportedLayerError
from deploykit.keras3.shape_ops import SHAPE_OPS, lower_shape_op

#: Where Keras 3 defines operations (``keras.activations.relu(x)`` on a tensor is an operation of the last).
_OPS = (
    "keras.src.ops.numpy",
    "keras.src.ops.nn",
    "keras.src.ops.math",
    "keras.src.ops.core",
    "keras.src.ops.image",
    "keras.src.activations.activations",
)
#: Keras 3 ``ops.nn`` operations that are an activation of the same meaning (Keras 3 names).
_ACTIVATIONS = {
    "Relu": "relu",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "Softplus": "softplus",
    "Softsign": "softsign",
    "Silu": "silu",
    "Swish": "silu",
    "HardSigmoid": "hard_sigmoid",
    "HardSilu": "hard_silu",
    "HardSwish": "hard_silu",
    "Selu": "selu",
    "LogSigmoid": "log_sigmoid",
    "Exp": "exponential",
    "Mish": "mish",
    "HardTanh": "hard_tanh",
    "TanhShrink": "tanh_shrink",
}
#: ``ops.nn`` operations with options: (built-in layer, {option: the operation's default}).
_CONFIGURED = {
    "Softmax": ("Softmax", {"axis": -1}),
    "LeakyRelu": ("LeakyReLU", {"negative_slope": 0.2}),
    "Elu": ("ELU", {"alpha": 1.0}),
    "Gelu": ("Activation", {"approximate": True}),
    "ReLU": ("ReLU", {"negative_slope": 0.0, "max_value": None, "threshold": 0.0}),  # keras.activations.relu
}
#: Products of a tensor and a constant matrix, read as a Dense layer with that kernel (:func:`_product`).
_PRODUCTS = ("Matmul", "Dot")
#: Two-tensor operations with a built-in merge layer of the same meaning.
_MERGES = {"Add": "Add", "Subtract": "Subtract", "Multiply": "Multiply", "Maximum": "Maximum", "Minimum": "Minimum"}
#: Where keras.applications defines ConvNeXt's LayerScale (``x * gamma``, gamma of shape [channels]).
_LAYER_SCALE = ("keras.src.applications.convnext", "LayerScale")
#: InceptionResNetV2's residual join: ``inputs[0] + inputs[1] * scale`` (a float in its config).
_CUSTOM_SCALE = ("keras.src.applications.inception_resnet_v2", "CustomScaleLayer")


@dataclass
class Lowering:
    """A model config rewritten into built-in layers, and where each rewritten layer's weights come from."""

    config: dict
    synthetic: set[str] = field(default_factory=set)  # layers with no Keras 3 layer behind them (no weights)
    nesting: Nesting = field(default_factory=Nesting)  # where inlined layers sit; augmentation removed
    layer_scales: set[str] = field(default_factory=set)  # Rescaling layers standing for a LayerScale
    depthwise: set[str] = field(default_factory=set)  # DepthwiseConv2D layers standing for a grouped Conv2D
    constants: dict[str, list] = field(default_factory=dict)  # weights of layers standing for x @ W (W a constant)

    def source_layer(self, source, name: str):
        """The Keras 3 layer (of the loaded ``source`` model) a rebuilt layer copies its weights from."""
        return self.nesting.source_layer(source, name)


def lower_config(config: dict) -> Lowering:
    """The model config with nested models inlined, augmentation removed (:mod:`deploykit.core.nested`) and
    operation layers rewritten (a copy)."""
    lowering = Lowering(copy.deepcopy(config))
    config = lowering.config = flatten(lowering.config, lowering.nesting, keras3=True)  # said by the loader
    inner = config.get("config")
    layers = inner.get("layers") if isinstance(inner, dict) else None
    if not isinstance(layers, list):
        return lowering
    if config.get("class_name") != "Functional":
        inner["layers"] = [_with_build_shapes(_grouped_as_depthwise(layer, lowering)) for layer in layers]
        return lowering
    names = {layer_name(layer) for layer in layers}
    out: list[dict] = []
    for layer in layers:
        if str(layer.get("module") or "") in _OPS:
            new = lower_operation(layer, names, lowering)
            lowering.synthetic |= {layer_name(n) for n in new}
            out += new
        elif (layer.get("module"), layer.get("class_name")) == _CUSTOM_SCALE:
            new = _custom_scale(layer, names)
            lowering.synthetic |= {layer_name(n) for n in new}
            out += new
        elif (layer.get("module"), layer.get("class_name")) == _LAYER_SCALE:
            out.append(_layer_scale(layer))
            lowering.layer_scales.add(layer_name(layer))
        else:
            out.append(layer)
    inner["layers"] = [_with_build_shapes(_grouped_as_depthwise(layer, lowering)) for layer in out]
    return lowering


def fill_from_source(graph, lowering: Lowering, source) -> None:
    """Put each LayerScale's gamma (from the loaded Keras 3 model) into the Rescaling standing for it."""
    for name in lowering.layer_scales:
        node = graph.node(name)
        weights = lowering.source_layer(source, name).get_weights()
        if len(weights) != 1 or np.ndim(weights[0]) != 1:
            raise UnsupportedLayerError(
                name, "LayerScale", f"expected one gamma vector, got shapes {[w.shape for w in weights]}"
            )
        node.spec.config["scale"] = [float(v) for v in np.asarray(weights[0], np.float32)]


def _grouped_as_depthwise(layer: dict, lowering: Lowering) -> dict:
    """A ``Conv2D`` whose groups are its input channels as the ``DepthwiseConv2D`` it is (``filters / groups`` is
    the depth multiplier); any other layer unchanged. The input channels come from the layer's ``build_config``."""
    config = layer.get("config") or {}
    groups = config.get("groups") or 1
    shape = (layer.get("build_config") or {}).get("input_shape") or []
    if layer.get("class_name") != "Conv2D" or groups == 1 or config.get("data_format") == "channels_first":
        return layer
    if not shape or shape[-1] != groups or config.get("filters", 0) % groups:
        return layer  # a general grouped convolution: refused with its name when exported
    renamed = {"kernel_initializer": "depthwise_initializer", "kernel_regularizer": "depthwise_regularizer"}
    renamed["kernel_constraint"] = "depthwise_constraint"
    new = {renamed.get(k, k): v for k, v in config.items() if k not in ("filters", "groups")}
    new["depth_multiplier"] = config["filters"] // groups
    lowering.depthwise.add(layer_name(layer))
    return {**layer, "class_name": "DepthwiseConv2D", "config": new}


#: Layers whose tf_keras ``from_config`` builds their weights from input shapes its config names (Keras 3 keeps
#: them in the layer's build_config): layer -> (config key, the key it defaults to when absent).
BUILD_SHAPES = {"MultiHeadAttention": (("query_shape", None), ("value_shape", None), ("key_shape", "value_shape"))}


def _with_build_shapes(layer: dict) -> dict:
    """``layer`` with the input shapes tf_keras builds it from in its config, read off Keras 3's build_config."""
    keys = BUILD_SHAPES.get(str(layer.get("class_name")))
    if not keys:
        return layer
    shapes = ((layer.get("build_config") or {}).get("shapes_dict")) or {}
    config = dict(layer.get("config") or {})
    for key, default in keys:
        config[key] = shapes.get(key) or (config.get(default) if default else None)
    return {**layer, "config": config}


def depthwise_kernel(kernel: np.ndarray, multiplier: int) -> np.ndarray:
    """A grouped Conv2D kernel (kh, kw, 1, channels * multiplier), one group per input channel, as the depthwise
    kernel (kh, kw, channels, multiplier): output channel ``c * multiplier + m`` reads input channel ``c`` in both."""
    kh, kw, _one, out = kernel.shape
    return np.asarray(kernel).reshape(kh, kw, out // multiplier, multiplier)


# --- config pieces --------------------------------------------------------------------------


def _builtin(kind: str, name: str, source: dict | None, **config) -> dict:
    """A Keras 3 layer config of a built-in layer called on ``source`` (a tensor reference)."""
    layer = {
        "module": "keras.layers",
        "class_name": kind,
        "registered_name": None,
        "config": {"name": name, "trainable": True, "dtype": "float32", **config},
    }
    if source is not None:
        layer["inbound_nodes"] = [{"args": [source], "kwargs": {}}]
    return layer


def _call(layer: dict) -> tuple[list, dict]:
    name, kind = layer_name(layer), str(layer.get("class_name"))
    calls = layer.get("inbound_nodes") or []
    if len(calls) != 1 or not isinstance(calls[0], dict):
        raise UnsupportedLayerError(name, kind, f"called {len(calls)} times; deploykit reads operations called once")
    kwargs = {k: v for k, v in (calls[0].get("kwargs") or {}).items() if v is not None}
    return list(calls[0].get("args") or []), kwargs


def _constant(value, name: str, kind: str) -> np.ndarray | None:
    """A numeric constant argument as float64 (scalars and ``__numpy__`` / ``__tensor__`` arrays), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return np.asarray(float(value))
    if isinstance(value, dict) and value.get("class_name") in ("__numpy__", "__tensor__"):
        try:
            return np.asarray((value.get("config") or {}).get("value"), np.float64)
        except (TypeError, ValueError):
            raise UnsupportedLayerError(name, kind, "a constant argument that is not numeric") from None
    return None


def _rescaling_constant(c: np.ndarray, sample: tuple | None, name: str, kind: str) -> float | list:
    """A constant as Rescaling takes it: a scalar, one value per channel, or (nested lists) any shape that
    broadcasts into one sample of the tensor (``sample``: its shape without the batch axis, None when unknown).

    A constant with a batch axis of 1 loses it; one that would widen the tensor (or give it a batch axis of its
    own) is refused: Rescaling keeps its input's shape.
    """
    if c.size == 1:
        return float(c.reshape(()))
    while c.ndim > 1 and c.shape[0] == 1 and (sample is None or c.ndim > len(sample)):
        c = c[0]
    if all(d == 1 for d in c.shape[:-1]):  # per channel (the common case, and what every step folds)
        return [float(v) for v in c.reshape(-1)]
    fits = sample is not None and c.ndim <= len(sample)
    fits = fits and all(d in (1, s) for d, s in zip(c.shape[::-1], sample[::-1]))
    if not fits:
        raise UnsupportedLayerError(
            name, kind, f"a constant of shape {c.shape} does not broadcast into a sample of shape {sample}"
        )
    return c.tolist()


def _neg(c):
    return (-np.asarray(c)).tolist() if isinstance(c, list) else -c


def _inv(c, name: str, kind: str):
    values = np.asarray(c, np.float64)
    if np.any(values == 0):
        raise UnsupportedLayerError(name, kind, "divides by a constant holding 0")
    return (1.0 / values).tolist() if isinstance(c, list) else 1.0 / c


# --- operation layers -----------------------------------------------------------------------


def lower_operation(layer: dict, names: set[str], lowering: Lowering) -> list[dict]:
    """The built-in layers computing one operation layer; the last keeps its name (its readers are unchanged)."""
    name, kind = layer_name(layer), str(layer.get("class_name"))
    args, kwargs = _call(layer)
    options = {k: v for k, v in (layer.get("config") or {}).items() if k not in ("name", "trainable", "dtype")}
    if len(args) == 1 and is_tensor(args[0]) and not kwargs:  # x alone: the operations that need more than one step
        if kind == "Cast":
            return [_cast(name, kind, args[0], (layer.get("config") or {}).get("dtype"))]
        if kind == "Normalize":
            return [_unit_norm(name, kind, args[0], options)]
        if kind == "Absolute":
            return _absolute(name, args[0], names)
        if kind == "Square":
            return [_merged("Multiply", name, args * 2)]
    if kind in _PRODUCTS and not kwargs and not options and len(args) == 2 and is_tensor(args[0]):
        return [_product(name, kind, args, lowering)]
    if kind in SHAPE_OPS and not kwargs:  # concatenate, reshape, pool a sequence...: from the input shapes
        return lower_shape_op(name, kind, args, options, _builtin, lambda base: fresh_name(base, names))
    tensors = [a for a in args if is_tensor(a)]
    if kwargs or not tensors:
        raise UnsupportedLayerError(
            name,
            kind,
            f"an operation called with {kwargs or args}; deploykit reads operations on one tensor and constants",
        )
    if len(tensors) == len(args) == 2 and kind in _MERGES and not options:
        return [_merged(_MERGES[kind], name, tensors)]
    if len(tensors) != 1:
        raise UnsupportedLayerError(name, kind, "an operation on several tensors with no built-in layer equivalent")
    x, first = tensors[0], is_tensor(args[0])
    constants = [_constant(a, name, kind) for a in args if not is_tensor(a)]
    if any(c is None for c in constants):
        raise UnsupportedLayerError(
            name, kind, f"called with {args[1:] if first else args[:1]}; deploykit reads numeric constants only"
        )
    sample = _sample_shape(x)
    steps = _steps(name, kind, options, [_rescaling_constant(c, sample, name, kind) for c in constants], first)
    out, source = [], x
    for i, (layer_kind, config) in enumerate(steps):
        step_name = name if i == len(steps) - 1 else fresh_name(f"{name}_{layer_kind.lower()}", names)
        out.append(_builtin(layer_kind, step_name, source, **config))
        source = tensor_ref(step_name)
    return out


def _cast(name: str, kind: str, x: dict, dtype) -> dict:
    """``cast(x, "float32")``: the identity (an ``Activation("linear")``) on what deploykit feeds, float32 arrays; a
    cast to any other type (an integer one truncates) is refused by name."""
    if dtype != "float32":
        raise UnsupportedLayerError(name, kind, f"casts to {dtype}; deploykit's artifacts compute in float32")
    return _builtin("Activation", name, x, activation="linear")


def _merged(kind: str, name: str, tensors: list) -> dict:
    """A merge layer (``Add``, ``Multiply``...) called on the list ``tensors``."""
    return {**_builtin(kind, name, None), "inbound_nodes": [{"args": [list(tensors)], "kwargs": {}}]}


def _unit_norm(name: str, kind: str, x: dict, options: dict) -> dict:
    """``ops.normalize(x, axis)`` of order 2 (``tf.math.l2_normalize``: an embedding network's unit vectors):
    ``UnitNormalization(axis)``, which divides by the L2 norm as TensorFlow does. The two differ only on vectors of
    a norm below the epsilons (1e-7, 1e-6), refused above 1e-6."""
    if (
        options.get("order", 2) != 2
        or float(options.get("epsilon") or 0.0) > 1e-6
        or set(options) - {"axis", "order", "epsilon"}
    ):
        raise UnsupportedLayerError(name, kind, f"a normalization with {options}; deploykit reads the L2 one")
    return _builtin("UnitNormalization", name, x, axis=options.get("axis", -1))


def _absolute(name: str, x: dict, names: set[str]) -> list[dict]:
    """``abs(x)`` (a siamese network's L1 distance, ``tf.math.abs(a - b)``) = relu(x) + relu(-x): exact."""
    positive, negated, negative = (fresh_name(f"{name}_{part}", names) for part in ("positive", "negated", "negative"))
    return [
        _builtin("ReLU", positive, x, **_relu()[1]),
        _builtin("Rescaling", negated, x, scale=-1.0, offset=0.0),
        _builtin("ReLU", negative, tensor_ref(negated), **_relu()[1]),
        _merged("Add", name, [tensor_ref(positive), tensor_ref(negative)]),
    ]


def _sample_shape(tensor: dict) -> tuple | None:
    """The per-sample shape Keras 3 wrote beside a tensor reference (None when it wrote none, or unsized axes)."""
    shape = (tensor.get("config") or {}).get("shape")
    if not isinstance(shape, (list, tuple)) or len(shape) < 1 or any(d is None for d in shape[1:]):
        return None
    return tuple(int(d) for d in shape[1:])


def _product(name: str, kind: str, args: list, lowering: Lowering) -> dict:
    """``x @ W`` (``ops.matmul`` / ``ops.dot``, W a constant [in, out]: the Keras guide's ``Linear`` layer, its
    weight frozen by :mod:`deploykit.keras3.inline`): a Dense layer with no bias whose kernel is W, so every step
    (pruning, int8) treats it as the Dense layer it is."""
    if is_tensor(args[1]):
        return _batch_product(name, kind, args)
    kernel = _constant(args[1], name, kind)
    sample = _sample_shape(args[0])
    if kernel is None or kernel.ndim != 2 or not sample or sample[-1] != kernel.shape[0]:
        raise UnsupportedLayerError(
            name, kind, "a product deploykit reads only as a tensor [..., in] times a constant matrix [in, out]"
        )
    lowering.constants[name] = [kernel.astype(np.float32)]
    return _builtin("Dense", name, args[0], units=int(kernel.shape[1]), use_bias=False, activation="linear")


def _batch_product(name: str, kind: str, args: list) -> dict:
    """``a @ b`` of two tensors [N, m, k] and [N, k, n] (keras.io's CCT pools a sequence with its attention weights
    this way): the ``Dot`` layer over a's last axis and b's first per-sample axis."""
    a, b = _sample_shape(args[0]), _sample_shape(args[1])
    if kind != "Matmul" or not a or not b or len(a) != 2 or len(b) != 2 or a[1] != b[0]:
        raise UnsupportedLayerError(
            name, kind, f"a product of tensors of shapes {a} and {b}; deploykit reads [m, k] @ [k, n] per sample"
        )
    return {**_builtin("Dot", name, None, axes=[2, 1], normalize=False), "inbound_nodes": [
        {"args": [[args[0], args[1]]], "kwargs": {}}
    ]}  # fmt: skip


def _rescale(scale=1.0, offset=0.0) -> tuple[str, dict]:
    return "Rescaling", {"scale": scale, "offset": offset}


def _relu(max_value=None) -> tuple[str, dict]:
    return "ReLU", {"max_value": max_value, "negative_slope": 0.0, "threshold": 0.0}


def _between(lo: float, hi: float | None) -> list[tuple[str, dict]]:
    """clip(x, lo, hi) (hi None: max(x, lo)) = ReLU(max hi - lo) of x - lo, plus lo."""
    if lo == 0:
        return [_relu(hi)]
    return [_rescale(1.0, -lo), _relu(None if hi is None else hi - lo), _rescale(1.0, lo)]


def _steps(name: str, kind: str, options: dict, constants: list, first: bool) -> list[tuple[str, dict]]:
    """(layer class, config) of the layers computing ``kind`` on a tensor x and ``constants``."""
    if kind in _ACTIVATIONS and not constants and not options:
        return [("Activation", {"activation": _ACTIVATIONS[kind]})]
    if kind == "Relu6" and not constants and not options:
        return [_relu(6.0)]
    if kind in _CONFIGURED and not constants and set(options) <= set(_CONFIGURED[kind][1]):
        return [_configured(name, kind, options)]
    if kind == "Negative" and not constants and not options:
        return [_rescale(-1.0)]
    if kind == "Clip" and not constants and set(options) == {"x_min", "x_max"}:
        lo, hi = float(options["x_min"]), float(options["x_max"])
        if lo > hi:
            raise UnsupportedLayerError(name, kind, f"clips to an empty range [{lo}, {hi}]")
        return _between(lo, hi)
    if len(constants) != 1 or options:
        raise UnsupportedLayerError(name, kind, "an operation layer deploykit has no built-in equivalent for")
    c = constants[0]
    if kind == "Add":
        return [_rescale(1.0, c)]
    if kind == "Subtract":
        return [_rescale(1.0, _neg(c))] if first else [_rescale(-1.0, c)]
    if kind == "Multiply":
        return [_rescale(c, 0.0)]
    if kind in ("Divide", "TrueDivide") and first:
        return [_rescale(_inv(c, name, kind), 0.0)]
    if kind == "Maximum":  # max(x, c) = max(x - c, 0) + c
        return [_relu()] if not isinstance(c, list) and c == 0 else [_rescale(1.0, _neg(c)), _relu(), _rescale(1.0, c)]
    if kind == "Minimum":  # min(x, c) = c - max(c - x, 0)
        return [_rescale(-1.0, c), _relu(), _rescale(-1.0, c)]
    raise UnsupportedLayerError(name, kind, "an operation with a constant deploykit has no built-in equivalent for")


def _layer_scale(layer: dict) -> dict:
    """ConvNeXt's LayerScale (x * gamma) as a Rescaling; its per-channel scale is filled from the weights."""
    config = layer.get("config") or {}
    rescaling = _builtin("Rescaling", layer_name(layer), None, scale=1.0, offset=0.0)
    rescaling["config"]["trainable"] = bool(config.get("trainable", True))
    rescaling["inbound_nodes"] = layer.get("inbound_nodes")
    return rescaling


def _custom_scale(layer: dict, names: set[str]) -> list[dict]:
    """InceptionResNetV2's CustomScaleLayer, ``x + y * scale``: Rescaling(scale) of y, then Add (same rounding)."""
    name, kind = layer_name(layer), str(layer.get("class_name"))
    args, kwargs = _call(layer)
    tensors = args[0] if len(args) == 1 and isinstance(args[0], list) else args
    scale = _constant((layer.get("config") or {}).get("scale"), name, kind)
    if kwargs or len(tensors) != 2 or not all(is_tensor(t) for t in tensors) or scale is None or scale.size != 1:
        raise UnsupportedLayerError(name, kind, "expected a call on two tensors and a scalar scale")
    scaled = fresh_name(f"{name}_scaled", names)
    return [
        _builtin("Rescaling", scaled, tensors[1], scale=float(scale.reshape(())), offset=0.0),
        _merged("Add", name, [tensors[0], tensor_ref(scaled)]),
    ]


def _configured(name: str, kind: str, options: dict) -> tuple[str, dict]:
    """An ``ops.nn`` operation with options as its layer, the operation's defaults filled in (they may differ
    from the layer's: ``ops.leaky_relu`` slopes 0.2, ``LeakyReLU`` 0.3)."""
    layer, defaults = _CONFIGURED[kind]
    config = {**defaults, **options}
    if kind == "Gelu":  # the "gelu" activation is the exact (erf) form
        if config["approximate"]:
            raise UnsupportedLayerError(name, kind, "the tanh approximation of GELU has no built-in layer equivalent")
        return layer, {"activation": "gelu"}
    return layer, config
