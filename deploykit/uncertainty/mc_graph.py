"""Build the MC Dropout ONNX graph straight from a layer chain.

One onnxruntime call draws T dropout samples and reduces them. The layers
before the first dropout run once on the batch; the batch is then tiled T
times ([T*N, ...], one batched pass, no loop) and the rest of the network runs
on it; the probabilities are reshaped to [T, N, C] and reduced.

Randomness comes only from ONNX ``Dropout`` nodes in training mode (ratio and
``training_mode`` are constant inputs). AlphaDropout has no ONNX op: it uses
the keep-mask of a Dropout node (P(keep) = 1 - rate, as Keras draws it) with
``Where`` and Keras's affine correction. A Dropout mask is used rather than
``RandomUniformLike`` because onnxruntime seeds an unseeded RandomUniformLike
with one process-wide value, so every session of a process would repeat the
same draws; unseeded Dropout nodes share a generator that advances instead.

Seeds (onnxruntime's CPU kernels): a seeded Dropout node keeps its own
generator, created with the session; call k of the session draws from seed+k.
So with a fixed seed every new session repeats the same sequence of outputs
(call k of one session equals call k of another, for the same inputs and
``samples``), while successive calls of one session still differ; concurrent
calls each take the next seed, in no defined order. Without a seed, outputs
differ between calls, sessions and processes. (A quirk of that kernel: it
seeds a fresh minstd engine with seed+k, so the FIRST element of each mask
barely changes from one call to the next; every other element, and hence the
T samples of a call, vary as they should.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deploykit.chain import Chain, graph_of
from deploykit.graph import Graph, LayerSpec, Node
from deploykit.configs import Config, boolean, integer
from deploykit.contract import OUTPUT_NAMES, SAMPLES_NAME, SAMPLES_OUTPUT
from deploykit.errors import ConfigError, UnsupportedLayerError, UsageError
from deploykit.export.convert import DEFAULT_OPSET, INPUT_NAME
from deploykit.layers import Role

DEFAULT_SAMPLES = 30
DEFAULT_MAX_SAMPLES = 1000

# Keras's SELU constants (AlphaDropout's correction is built from them).
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_KERAS_EPSILON = 1e-7  # Normalization's floor on the standard deviation
_TINY = float(np.finfo(np.float32).tiny)  # floor inside log(p): 0 * log(0) counts as 0


def is_int(value) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class MCConfig(Config):
    """How the MC graph samples; validated on construction."""

    samples: int = DEFAULT_SAMPLES  # default T when a call does not feed `samples`
    max_samples: int = DEFAULT_MAX_SAMPLES  # the graph clamps `samples` to [1, max_samples]
    seed: int | None = None  # None: fresh draws; an int: every new session repeats the same sequence
    include_samples: bool = False  # also output the raw [T, N, C] probabilities

    def __post_init__(self) -> None:
        integer("samples", self.samples, 1)
        integer("max_samples", self.max_samples, 1)
        if self.samples > self.max_samples:
            raise ConfigError(f"samples must be at most max_samples ({self.max_samples}), got {self.samples}")
        integer("seed", self.seed, 0, optional=True)
        boolean("include_samples", self.include_samples)


def _as_graph(model_graph) -> Graph:
    """A :class:`Graph` from a graph or a chain view (the chain's specs are shared, not copied)."""
    return graph_of(model_graph) if isinstance(model_graph, Chain) else model_graph


def dropout_layers(model_graph) -> list[LayerSpec]:
    """The dropout layers (Dropout, AlphaDropout, SpatialDropout) of a graph or chain, in order."""
    return [n.spec for n in _as_graph(model_graph).nodes if n.spec.support.role is Role.DROPOUT]


def sampled_nodes(graph: Graph, start: frozenset = frozenset()) -> set[str]:
    """The nodes that differ between MC samples: every dropout and everything downstream of one (or of ``start``)."""
    sampled = set(start)
    for node in graph.nodes:  # topological: inputs are decided first
        if node.spec.support.role is Role.DROPOUT or any(i in sampled for i in node.inputs):
            sampled.add(node.name)
    return sampled


def first_dropout_index(model_graph) -> int:
    """How many layers run once per call (they have no dropout upstream); 0 without dropout."""
    graph = _as_graph(model_graph)
    sampled = sampled_nodes(graph)
    return len(graph.nodes) - len(sampled) if sampled else 0


def build_mc_graph(model_graph, config: MCConfig = MCConfig(), *, prefix_once: bool = True, opset: int = DEFAULT_OPSET):
    """The MC Dropout ``onnx.ModelProto`` of a graph (or chain), not yet checked or saved.

    Nodes are emitted in topological order; the ones with no dropout upstream
    run once on the batch, and every edge from them into the sampled region
    (a residual skip too) is tiled to [T * N, ...]: row ``t * N + n`` is sample
    ``t`` of instance ``n``. ``prefix_once=False`` tiles the input instead,
    running the whole network T times (same distribution, more work; kept to
    test the optimisation).
    """
    import onnx
    from onnx import TensorProto, helper

    graph = _as_graph(model_graph)
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise UnsupportedLayerError(graph.name, "model", "MC Dropout needs a single-input, single-output model")
    input_name, input_shape = next(iter(graph.inputs.items()))
    g = _Graph(config.seed, opset)
    samples = _samples_value(g, config)  # [T]
    sampled = sampled_nodes(graph, frozenset() if prefix_once else frozenset({input_name}))
    values = {input_name: (INPUT_NAME, tuple(input_shape))}
    tiled: dict[str, str] = {}

    def tile(name: str) -> str:
        if name not in tiled:
            x, shape = values[name]
            tiled[name] = g.op("Tile", [x, g.op("Concat", [samples, g.const([1] * len(shape), np.int64)], axis=0)])
        return tiled[name]

    if not prefix_once:
        values[input_name] = (tile(input_name), values[input_name][1])
    for node in graph.nodes:
        xs = [tile(i) if node.name in sampled and i not in sampled else values[i][0] for i in node.inputs]
        values[node.name] = _emit(g, node, xs, [values[i][1] for i in node.inputs])
    out = graph.outputs[0]
    x, shape = values[out]
    if out not in sampled:
        x = tile(out)
    if not graph.nodes or g.nodes[-1].op_type != "Softmax" or len(shape) != 1:
        last = graph.nodes[-1].spec if graph.nodes else None
        raise UnsupportedLayerError(last.name if last else graph.name, last.class_name if last else "model",
                                    "MC Dropout needs a model that ends with a softmax over classes (output [N, C])")
    num_classes = shape[0]
    probs = g.op("Reshape", [x, g.op("Concat", [samples, g.const([-1, num_classes], np.int64)], axis=0)])  # [T, N, C]
    outputs = _reduce(g, probs)
    if config.include_samples:
        outputs[SAMPLES_OUTPUT] = g.op("Identity", [probs])
    for name, value in outputs.items():
        g.nodes.append(helper.make_node("Identity", [value], [name], name=f"output_{name}"))

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    inputs = [helper.make_tensor_value_info(INPUT_NAME, f32, ["N", *input_shape]), _samples_input(g, config)]
    out_types = {"mean": (f32, ["N", num_classes]), "std": (f32, ["N", num_classes]),
                 "predictive_entropy": (f32, ["N"]), "mutual_information": (f32, ["N"]),
                 "predicted_class": (i64, ["N"]), SAMPLES_OUTPUT: (f32, ["T", "N", num_classes])}
    outs = [helper.make_tensor_value_info(name, *out_types[name]) for name in outputs]
    graph_proto = helper.make_graph(g.nodes, f"{graph.name}_mc_dropout", inputs, outs, initializer=g.inits,
                                    doc_string=_DOC.format(default=config.samples, limit=config.max_samples))
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(graph_proto, opset_imports=opsets, producer_name="deploykit",
                             ir_version=helper.find_min_ir_version_for(opsets))


#: From this opset the `samples` default is given by an optional-typed input (OptionalHasElement + If),
#: which onnxruntime accepts omitted without the "Initializer samples appears in graph inputs" warning
#: an initializer-backed input prints on every session. Below it (no Optional ops) the initializer stays.
OPTIONAL_INPUT_OPSET = 15


def _samples_input(g: _Graph, config: MCConfig):
    from onnx import TensorProto, helper

    if g.opset >= OPTIONAL_INPUT_OPSET:
        optional = helper.make_optional_type_proto(helper.make_tensor_type_proto(TensorProto.INT64, []))
        return helper.make_value_info(SAMPLES_NAME, optional)
    return helper.make_tensor_value_info(SAMPLES_NAME, TensorProto.INT64, [])


def _samples_value(g: _Graph, config: MCConfig) -> str:
    """The clamped sample count as a [1] int64 tensor: the fed `samples`, or the default when it is omitted."""
    import onnx
    from onnx import TensorProto, helper

    if g.opset >= OPTIONAL_INPUT_OPSET:
        scalar = lambda name: helper.make_tensor_value_info(name, TensorProto.INT64, [])  # noqa: E731
        fed = helper.make_graph([helper.make_node("OptionalGetElement", [SAMPLES_NAME], ["samples_fed"])],
                                "samples_fed", [], [scalar("samples_fed")])
        default = helper.make_graph([helper.make_node("Constant", [], ["samples_default"], value=helper.make_tensor(
            "samples_default_value", TensorProto.INT64, [], [config.samples]))], "samples_default", [], [scalar("samples_default")])
        value = g.op("If", [g.op("OptionalHasElement", [SAMPLES_NAME])], then_branch=fed, else_branch=default)
    else:
        g.inits.append(onnx.numpy_helper.from_array(np.array(config.samples, np.int64), SAMPLES_NAME))
        value = SAMPLES_NAME
    clamped = g.op("Max", [g.op("Min", [value, g.const(config.max_samples, np.int64)]), g.const(1, np.int64)])
    return g.op("Reshape", [clamped, g.const([1], np.int64)])


_DOC = ("MC Dropout: inputs `input` float32 [N, ...] and optional `samples` int64 scalar (default {default}, "
        "clamped to [1, {limit}]); outputs mean/std [N, C] over the samples (std: population), predictive_entropy "
        "and mutual_information [N] (natural log), predicted_class int64 [N] (argmax of mean).")


class _Graph:
    """Nodes and initializers under construction, with unique names and per-node seeds."""

    def __init__(self, seed: int | None, opset: int = DEFAULT_OPSET):
        self.opset = opset
        self.nodes, self.inits = [], []
        self._count = 0
        self._seed = seed
        self._true = None

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value, dtype=np.float32) -> str:
        import onnx

        name = self.name("const")
        self.inits.append(onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def true(self) -> str:
        if self._true is None:
            self._true = self.const(True, np.bool_)
        return self._true

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs):
        from onnx import helper

        outputs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=f"{outputs[0]}_node", **attrs))
        return outputs[0] if n_out == 1 else tuple(outputs)

    def reduce(self, op_type: str, x: str, axes: list[int], keepdims: int = 0) -> str:
        """ReduceMean / ReduceMax with ``axes`` as an attribute before opset 18 and as an input from 18 on."""
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, [x, self.const(list(axes), np.int64)], keepdims=keepdims)
        return self.op(op_type, [x], axes=list(axes), keepdims=keepdims)

    def dropout_seed(self) -> dict:
        """The seed attribute of the next Dropout node: distinct, well-spread seeds per node."""
        if self._seed is None:
            return {}
        index = sum(n.op_type == "Dropout" for n in self.nodes)
        return {"seed": int(np.random.SeedSequence([int(self._seed), index]).generate_state(1)[0] & 0x7FFFFFFF)}


#: One emitter per Keras class (as tf2onnx registers one handler per op): ``(g, node, xs, in_shapes) -> (output, shape)``.
EMITTERS: dict[str, object] = {}


def emits(*class_names: str):
    """Register the function as the MC graph form of these Keras classes."""
    def register(fn):
        for name in class_names:
            EMITTERS[name] = fn
        return fn
    return register


def _emit(g: _Graph, node: Node, xs: list[str], shapes: list[tuple]):
    spec = node.spec
    fn = EMITTERS.get(spec.class_name)
    if fn is None:
        raise UnsupportedLayerError(spec.name, spec.class_name, "cannot be expressed in the MC Dropout graph")
    return fn(g, node, xs, shapes)


def _out_shape(node: Node) -> tuple:
    if node.shape is None:
        raise UnsupportedLayerError(node.name, node.spec.class_name, "its output shape is unknown (read the model with its shapes)")
    return tuple(node.shape)


@emits("InputLayer")
def _emit_identity(g, node, xs, shapes):
    return xs[0], shapes[0]


@emits("Flatten", "Reshape")
def _emit_reshape(g, node, xs, shapes):
    return _reshape(g, node.spec, xs[0], shapes[0])


@emits("Dense")
def _emit_dense(g, node, xs, shapes):
    spec = node.spec
    kernel, *bias = spec.weights
    y = g.op("MatMul", [xs[0], g.const(kernel)])
    if bias and spec.config.get("use_bias", True):
        y = g.op("Add", [y, g.const(bias[0])])
    return _activation(g, spec, spec.config.get("activation", "linear"), y), (*shapes[0][:-1], int(kernel.shape[1]))


@emits("BatchNormalization")
def _emit_batchnorm(g, node, xs, shapes):
    return _batchnorm(g, node.spec, xs[0], shapes[0]), shapes[0]


@emits("Normalization")
def _emit_normalization(g, node, xs, shapes):
    return _normalization(g, node.spec, xs[0], shapes[0]), shapes[0]


@emits("Dropout", "AlphaDropout", "SpatialDropout1D", "SpatialDropout2D")
def _emit_dropout(g, node, xs, shapes):
    return _dropout(g, node.spec, xs[0], shapes[0]), shapes[0]


@emits("Activation", "LeakyReLU", "PReLU", "ELU", "ReLU", "Softmax")
def _emit_activation(g, node, xs, shapes):
    return _activation_layer(g, node.spec, xs[0]), shapes[0]


@emits("Rescaling")
def _emit_rescaling(g, node, xs, shapes):
    cfg = node.spec.config
    y = g.op("Mul", [xs[0], g.const(np.asarray(cfg.get("scale", 1.0), np.float32))])
    return g.op("Add", [y, g.const(np.asarray(cfg.get("offset", 0.0), np.float32))]), shapes[0]


@emits("Add", "Multiply")
def _emit_merge(g, node, xs, shapes):
    op = "Add" if node.spec.class_name == "Add" else "Mul"
    y = xs[0]
    for x in xs[1:]:
        y = g.op(op, [y, x])
    return y, _out_shape(node)


@emits("Concatenate")
def _emit_concat(g, node, xs, shapes):
    axis = int(node.spec.config.get("axis", -1))
    return g.op("Concat", xs, axis=axis), _out_shape(node)


def _to_channels_first(g, x: str, rank: int) -> str:
    return g.op("Transpose", [x], perm=[0, rank - 1, *range(1, rank - 1)])


def _to_channels_last(g, x: str, rank: int) -> str:
    return g.op("Transpose", [x], perm=[0, *range(2, rank), 1])


def _spatial(spec: LayerSpec, key: str, n: int, default=None) -> list[int]:
    value = spec.config.get(key, default)
    value = [value] * n if isinstance(value, int) else list(value)
    return [int(v) for v in value]


def _conv_attrs(spec: LayerSpec, n: int, kernel_spatial) -> dict:
    if spec.config.get("data_format", "channels_last") not in (None, "channels_last"):
        raise UnsupportedLayerError(spec.name, spec.class_name, "channels_first is not supported in the MC Dropout graph")
    strides = _spatial(spec, "strides", n, 1)
    dilations = _spatial(spec, "dilation_rate", n, 1)
    attrs = {"strides": strides, "dilations": dilations, "kernel_shape": [int(k) for k in kernel_spatial]}
    padding = spec.config.get("padding", "valid")
    if padding == "same":
        attrs["auto_pad"] = "SAME_UPPER"  # TF puts the odd padding at the end, as SAME_UPPER does
    elif padding == "causal":
        attrs["pads"] = [dilations[0] * (int(kernel_spatial[0]) - 1), 0]
    return attrs


def _conv(g, spec: LayerSpec, x: str, rank: int, onnx_kernel: np.ndarray, bias, group: int) -> str:
    attrs = _conv_attrs(spec, rank - 2, onnx_kernel.shape[2:])
    inputs = [_to_channels_first(g, x, rank), g.const(onnx_kernel)]
    if bias is not None:
        inputs.append(g.const(bias))
    return _to_channels_last(g, g.op("Conv", inputs, group=group, **attrs), rank)


@emits("Conv1D", "Conv2D")
def _emit_conv(g, node, xs, shapes):
    spec = node.spec
    kernel = np.asarray(spec.weights[0])
    n = kernel.ndim - 2
    onnx_kernel = np.transpose(kernel, (n + 1, n, *range(n)))  # (k..., in, out) -> (out, in, k...)
    bias = spec.weights[1] if spec.config.get("use_bias", True) else None
    y = _conv(g, spec, xs[0], n + 2, onnx_kernel, bias, int(spec.config.get("groups", 1) or 1))
    return _activation(g, spec, spec.config.get("activation", "linear"), y), _out_shape(node)


def _depthwise_kernel(kernel: np.ndarray) -> np.ndarray:
    """(kh, kw, cin, mult) -> (cin * mult, 1, kh, kw): output channel c * mult + m, as Keras orders them."""
    kh, kw = kernel.shape[:2]
    return np.transpose(kernel.reshape(kh, kw, -1), (2, 0, 1))[:, None]


@emits("DepthwiseConv2D")
def _emit_depthwise(g, node, xs, shapes):
    spec = node.spec
    kernel = np.asarray(spec.weights[0])
    bias = spec.weights[1] if spec.config.get("use_bias", True) else None
    y = _conv(g, spec, xs[0], 4, _depthwise_kernel(kernel), bias, int(kernel.shape[2]))
    return _activation(g, spec, spec.config.get("activation", "linear"), y), _out_shape(node)


@emits("SeparableConv2D")
def _emit_separable(g, node, xs, shapes):
    spec = node.spec
    depthwise, pointwise = np.asarray(spec.weights[0]), np.asarray(spec.weights[1])
    bias = spec.weights[2] if spec.config.get("use_bias", True) else None
    y = _conv(g, spec, xs[0], 4, _depthwise_kernel(depthwise), None, int(depthwise.shape[2]))
    one = LayerSpec("Conv2D", {"name": spec.name, "padding": "valid"})
    y = _conv(g, one, y, 4, np.transpose(pointwise, (3, 2, 0, 1)), bias, 1)
    return _activation(g, spec, spec.config.get("activation", "linear"), y), _out_shape(node)


@emits("MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D", "MaxPool1D", "MaxPool2D",
       "AvgPool1D", "AvgPool2D")
def _emit_pool(g, node, xs, shapes):
    spec = node.spec
    rank = len(shapes[0]) + 1
    size = _spatial(spec, "pool_size", rank - 2)
    strides = spec.config.get("strides") or size
    attrs = _conv_attrs(LayerSpec(spec.class_name, {**spec.config, "strides": strides, "dilation_rate": 1}), rank - 2, size)
    attrs.pop("dilations")
    op = "MaxPool" if "Max" in spec.class_name else "AveragePool"  # AveragePool excludes the padding, as TF does
    y = g.op(op, [_to_channels_first(g, xs[0], rank)], **attrs)
    return _to_channels_last(g, y, rank), _out_shape(node)


@emits("GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
       "GlobalAvgPool1D", "GlobalAvgPool2D", "GlobalMaxPool1D", "GlobalMaxPool2D")
def _emit_global_pool(g, node, xs, shapes):
    spec = node.spec
    op = "ReduceMax" if "Max" in spec.class_name else "ReduceMean"
    axes = list(range(1, len(shapes[0])))
    return g.reduce(op, xs[0], axes, keepdims=int(bool(spec.config.get("keepdims", False)))), _out_shape(node)


@emits("ZeroPadding1D", "ZeroPadding2D")
def _emit_zero_padding(g, node, xs, shapes):
    spec = node.spec
    n = len(shapes[0]) - 1
    pad = spec.config.get("padding", 1)
    pairs = [(pad, pad)] * n if isinstance(pad, int) else [(p, p) if isinstance(p, int) else tuple(p) for p in pad]
    if n == 1 and len(pairs) == 2 and all(isinstance(p, int) for p in pad):
        pairs = [tuple(pad)]  # ZeroPadding1D((left, right))
    begins, ends = [0, *[int(p[0]) for p in pairs], 0], [0, *[int(p[1]) for p in pairs], 0]
    return g.op("Pad", [xs[0], g.const(begins + ends, np.int64)], mode="constant"), _out_shape(node)


@emits("LayerNormalization")
def _emit_layer_norm(g, node, xs, shapes):
    spec = node.spec
    cfg = spec.config
    rank = len(shapes[0]) + 1
    axes = cfg.get("axis", -1)
    axes = sorted(a % rank for a in ([axes] if isinstance(axes, int) else axes))
    mean = g.reduce("ReduceMean", xs[0], axes, keepdims=1)
    centered = g.op("Sub", [xs[0], mean])
    var = g.reduce("ReduceMean", g.op("Mul", [centered, centered]), axes, keepdims=1)
    y = g.op("Div", [centered, g.op("Sqrt", [g.op("Add", [var, g.const(float(cfg.get("epsilon", 1e-3)))])])])
    w = list(spec.weights)
    bshape = [shapes[0][a - 1] if a in axes else 1 for a in range(1, rank)]
    if cfg.get("scale", True):
        y = g.op("Mul", [y, g.const(np.asarray(w.pop(0)).reshape(bshape))])
    if cfg.get("center", True):
        y = g.op("Add", [y, g.const(np.asarray(w.pop(0)).reshape(bshape))])
    return y, shapes[0]


@emits("Embedding")
def _emit_embedding(g, node, xs, shapes):
    from onnx import TensorProto

    ids = g.op("Cast", [xs[0]], to=TensorProto.INT64)
    return g.op("Gather", [g.const(node.spec.weights[0]), ids], axis=0), _out_shape(node)


def _reshape(g: _Graph, spec: LayerSpec, x: str, shape: tuple):
    if spec.class_name == "Flatten":
        new = (int(np.prod(shape)),)
    else:
        target = [int(d) for d in spec.config["target_shape"]]
        if -1 in target:
            known = int(np.prod([d for d in target if d != -1]))
            target[target.index(-1)] = int(np.prod(shape)) // known
        new = tuple(target)
    return g.op("Reshape", [x, g.const([0, *new], np.int64)]), new  # 0 keeps the batch axis


def _last_axis_only(spec: LayerSpec, axes, rank: int) -> None:
    axes = [axes] if isinstance(axes, int) else list(axes)
    if any(a not in (-1, rank) for a in axes) or len(axes) != 1:
        raise UnsupportedLayerError(spec.name, spec.class_name,
                                    f"only the last (feature) axis is supported, got axis {axes}")


def _batchnorm(g: _Graph, spec: LayerSpec, x: str, shape: tuple) -> str:
    """Inference BatchNormalization with its moving statistics: x * scale + offset."""
    cfg = spec.config
    _last_axis_only(spec, cfg.get("axis", -1), len(shape))
    w = [np.asarray(a, np.float64) for a in spec.weights]
    gamma = w.pop(0) if cfg.get("scale", True) else 1.0
    beta = w.pop(0) if cfg.get("center", True) else 0.0
    mean, var = w
    scale = gamma / np.sqrt(var + float(cfg.get("epsilon", 1e-3)))
    offset = beta - mean * scale
    return g.op("Add", [g.op("Mul", [x, g.const(scale)]), g.const(offset)])


def _normalization(g: _Graph, spec: LayerSpec, x: str, shape: tuple) -> str:
    """Keras Normalization: (x - mean) / max(sqrt(var), 1e-7), or its inverse."""
    cfg = spec.config
    if spec.weights:
        mean, var = np.asarray(spec.weights[0], np.float64), np.asarray(spec.weights[1], np.float64)
    elif cfg.get("mean") is not None and cfg.get("variance") is not None:
        mean, var = np.asarray(cfg["mean"], np.float64), np.asarray(cfg["variance"], np.float64)
    else:
        raise UnsupportedLayerError(spec.name, spec.class_name, "Normalization was never adapted (no mean and variance)")
    if mean.size == 1:
        mean, var = mean.reshape(()), var.reshape(())
    elif mean.size == shape[-1]:
        mean, var = mean.reshape(shape[-1]), var.reshape(shape[-1])
    elif mean.size == int(np.prod(shape)):
        mean, var = mean.reshape(shape), var.reshape(shape)
    else:
        raise UnsupportedLayerError(spec.name, spec.class_name, f"statistics of size {mean.size} do not fit inputs {shape}")
    std = np.maximum(np.sqrt(var), _KERAS_EPSILON)
    if cfg.get("invert", False):
        return g.op("Add", [g.op("Mul", [x, g.const(std)]), g.const(mean)])
    return g.op("Div", [g.op("Sub", [x, g.const(mean)]), g.const(std)])


def _dropout(g: _Graph, spec: LayerSpec, x: str, shape: tuple = ()) -> str:
    """Dropout kept active (ONNX Dropout, training_mode true); AlphaDropout from its keep-mask.

    SpatialDropout drops whole channels: the keep-mask is drawn on a
    [N, 1, ..., C] tensor (the input reduced over its positions) and broadcast.
    """
    from onnx import TensorProto

    rate = float(spec.config.get("rate", 0.0))
    if spec.config.get("noise_shape") is not None:
        raise UnsupportedLayerError(spec.name, spec.class_name, "a noise_shape is not supported in the MC Dropout graph")
    if not 0.0 <= rate < 1.0:
        raise UnsupportedLayerError(spec.name, spec.class_name, f"rate must be in [0, 1), got {rate}")
    if spec.class_name.startswith("SpatialDropout"):
        per_channel = g.reduce("ReduceMax", x, list(range(1, len(shape))), keepdims=1)
        _, keep = g.op("Dropout", [per_channel, g.const(rate), g.true()], n_out=2, **g.dropout_seed())
        factor = g.op("Mul", [g.op("Cast", [keep], to=TensorProto.FLOAT), g.const(1.0 / (1.0 - rate))])
        return g.op("Mul", [x, factor])
    if spec.class_name not in ("Dropout", "AlphaDropout"):
        raise UnsupportedLayerError(spec.name, spec.class_name, "no MC Dropout form for this dropout type")
    # The keep-mask output must be used: onnxruntime's DropoutElimination removes any Dropout node
    # whose mask is unused, whatever its training_mode.
    dropped, keep = g.op("Dropout", [x, g.const(rate), g.true()], n_out=2, **g.dropout_seed())
    if spec.class_name == "Dropout":
        # `dropped` is already 0 where the mask is off; Mul by the mask costs far less than Where.
        return g.op("Mul", [dropped, g.op("Cast", [keep], to=TensorProto.FLOAT)])
    # tf_keras AlphaDropout: dropped units are set to alpha_p, then a * x + b restores mean and variance.
    alpha_p = -_SELU_ALPHA * _SELU_SCALE
    a = ((1 - rate) * (1 + rate * alpha_p**2)) ** -0.5
    b = -a * alpha_p * rate
    kept = g.op("Where", [keep, x, g.const(alpha_p)])
    return g.op("Add", [g.op("Mul", [kept, g.const(a)]), g.const(b)])


def _activation_layer(g: _Graph, spec: LayerSpec, x: str) -> str:
    cfg = spec.config
    kind = spec.class_name
    if kind == "Activation":
        return _activation(g, spec, cfg.get("activation", "linear"), x)
    if kind == "Softmax":
        return g.op("Softmax", [x], axis=int(cfg.get("axis", -1)))
    if kind == "ELU":
        return g.op("Elu", [x], alpha=float(cfg.get("alpha", 1.0)))
    if kind == "LeakyReLU":
        return g.op("LeakyRelu", [x], alpha=float(cfg.get("alpha", 0.3)))
    if kind == "PReLU":
        return g.op("PRelu", [x, g.const(spec.weights[0])])
    if kind == "ReLU":
        if float(cfg.get("threshold") or 0.0) != 0.0:
            raise UnsupportedLayerError(spec.name, kind, "a non-zero threshold is not supported")
        slope = float(cfg.get("negative_slope") or 0.0)
        y = g.op("LeakyRelu", [x], alpha=slope) if slope else g.op("Relu", [x])
        if cfg.get("max_value") is not None:
            y = g.op("Min", [y, g.const(float(cfg["max_value"]))])
        return y
    raise UnsupportedLayerError(spec.name, kind, "no ONNX form for this activation layer")


def _activation(g: _Graph, spec: LayerSpec, name, x: str) -> str:
    """A Keras activation given by name, as ONNX ops."""
    if name in (None, "linear"):
        return x
    simple = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softplus": "Softplus",
              "softsign": "Softsign", "exponential": "Exp", "selu": "Selu", "elu": "Elu"}
    if name in simple:
        return g.op(simple[name], [x])  # ONNX Selu / Elu defaults are Keras's constants
    if name == "softmax":
        return g.op("Softmax", [x], axis=-1)
    if name == "log_softmax":
        return g.op("LogSoftmax", [x], axis=-1)
    if name == "hard_sigmoid":
        return g.op("HardSigmoid", [x], alpha=0.2, beta=0.5)
    if name == "leaky_relu":  # tf.nn.leaky_relu's default slope
        return g.op("LeakyRelu", [x], alpha=0.2)
    if name == "relu6":
        return g.op("Clip", [x, g.const(0.0), g.const(6.0)])
    if name in ("swish", "silu"):
        return g.op("Mul", [x, g.op("Sigmoid", [x])])
    if name in ("hard_swish", "hard_silu"):  # x * relu6(x + 3) / 6
        return g.op("Mul", [x, g.op("HardSigmoid", [x], alpha=1.0 / 6.0, beta=0.5)])
    if name == "mish":
        return g.op("Mul", [x, g.op("Tanh", [g.op("Softplus", [x])])])
    if name == "gelu":  # exact (erf) form, Keras's default
        erf = g.op("Erf", [g.op("Mul", [x, g.const(1 / np.sqrt(2.0))])])
        return g.op("Mul", [g.op("Mul", [x, g.const(0.5)]), g.op("Add", [erf, g.const(1.0)])])
    raise UnsupportedLayerError(spec.name, spec.class_name, f"activation {name!r} has no ONNX form in deploykit")


def _reduce(g: _Graph, probs: str) -> dict[str, str]:
    """Mean, std, predictive entropy and mutual information of [T, N, C] probabilities."""
    mean = g.reduce("ReduceMean", probs, [0])
    diff = g.op("Sub", [probs, mean])
    std = g.op("Sqrt", [g.reduce("ReduceMean", g.op("Mul", [diff, diff]), [0])])
    tiny = g.const(_TINY)
    minus_one = g.const(-1.0)

    def entropy(p: str, class_axis: int) -> str:
        plogp = g.op("Mul", [p, g.op("Log", [g.op("Max", [p, tiny])])])
        return g.op("Mul", [g.reduce("ReduceSum", plogp, [class_axis]), minus_one])

    predictive = entropy(mean, 1)
    expected = g.reduce("ReduceMean", entropy(probs, 2), [0])
    # H(mean) >= mean H (Jensen); clip the float rounding below zero.
    mutual = g.op("Max", [g.op("Sub", [predictive, expected]), g.const(0.0)])
    predicted = g.op("ArgMax", [mean], axis=1, keepdims=0)
    return {"mean": mean, "std": std, "predictive_entropy": predictive, "mutual_information": mutual,
            "predicted_class": predicted}


def check_has_dropout(model_graph) -> None:
    """Raise a clear error when no dropout layer would sample."""
    if not any(float(s.config.get("rate", 0.0)) > 0 for s in dropout_layers(model_graph)):
        raise UsageError(
            f"model {model_graph.name!r} has no Dropout or AlphaDropout layer with a rate > 0, so MC Dropout has nothing "
            "to sample; train it with dropout (e.g. deploykit train --dropout 0.2)"
        )
