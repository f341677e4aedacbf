"""The MC Dropout graph's ONNX form of each Keras layer: one emitter per class, registered with :func:`emits`.

As tf2onnx registers one handler per TensorFlow op, every layer class the
support table marks ``mc`` has an emitter here: ``(g, node, xs, in_shapes) ->
(output name, per-sample shape)``. Images stay NHWC between layers;
convolutions and pooling transpose to ONNX's NCHW and back (onnxruntime
removes the transpose pairs between consecutive convolutions). Everything is
standard ONNX from opset 13; the reductions follow the opset
(:meth:`~deploykit.onnx.builder.GraphBuilder.reduce`).
"""

from __future__ import annotations

import numpy as np

from deploykit.core.graph import LayerSpec, Node
from deploykit.core.layers import ALIASES
from deploykit.errors import UnsupportedLayerError
from deploykit.export.convert import DEFAULT_OPSET
from deploykit.fold.affine import batchnorm_scale_offset
from deploykit.onnx.builder import GraphBuilder
from deploykit.uncertainty.masks import DEFAULT_POOL, MaskKind, pool_keep, represented_rate

# Keras's SELU constants (AlphaDropout's correction is built from them).
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_KERAS_EPSILON = 1e-7  # Normalization's floor on the standard deviation


class MCGraph(GraphBuilder):
    """The MC Dropout graph under construction: the one ONNX builder plus per-node seeds and the dropout mask kind."""

    def __init__(
        self,
        seed: int | None,
        opset: int = DEFAULT_OPSET,
        mask: MaskKind = MaskKind.POOL,
        pool: int = DEFAULT_POOL,
        pool_layers: int = 1,
    ):
        super().__init__(opset)
        self.mask, self.pool = mask, pool
        # MaskKind.POOL: how many layers will draw a pooled mask (the first draws every layer's random offsets)
        self.pool_layers, self.offsets_drawn, self.pending_offsets = pool_layers, 0, []
        self._seed = seed
        self._tables = 0

    def dropout_seed(self) -> dict:
        """The seed attribute of the next Dropout node: distinct, well-spread seeds per node."""
        if self._seed is None:
            return {}
        index = sum(n.op_type == "Dropout" for n in self.nodes)
        return {"seed": int(np.random.SeedSequence([int(self._seed), index]).generate_state(1)[0] & 0x7FFFFFFF)}

    def table_rng(self) -> np.random.Generator:
        """The generator of the next pooled mask table: from the seed (reproducible exports) or fresh."""
        self._tables += 1
        return np.random.default_rng(None if self._seed is None else [int(self._seed), self._tables, 1])


#: One emitter per Keras class (as tf2onnx registers one handler per op):
#: ``(g, node, xs, in_shapes) -> (output, shape)``.
EMITTERS: dict[str, object] = {}


def emits(*class_names: str):
    """Register the function as the MC graph form of these Keras classes (and of their aliases, layers.ALIASES)."""

    def register(fn):
        for name in class_names:
            EMITTERS[name] = fn
        for alias, name in ALIASES.items():
            if name in class_names:
                EMITTERS[alias] = fn
        return fn

    return register


def emit(g: MCGraph, node: Node, xs: list[str], shapes: list[tuple]):
    spec = node.spec
    fn = EMITTERS.get(spec.class_name) if spec.support.mc else None  # the layer table says what the MC graph emits
    if fn is None:
        raise UnsupportedLayerError(spec.name, spec.class_name, "cannot be expressed in the MC Dropout graph")
    return fn(g, node, xs, shapes)


def _out_shape(node: Node) -> tuple:
    if node.shape is None:
        raise UnsupportedLayerError(
            node.name, node.spec.class_name, "its output shape is unknown (read the model with its shapes)"
        )
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


_MERGE_OPS = {"Add": "Add", "Multiply": "Mul", "Subtract": "Sub", "Maximum": "Max", "Minimum": "Min", "Average": "Add"}


@emits(*_MERGE_OPS)
def _emit_merge(g, node, xs, shapes):
    kind = node.spec.class_name
    if kind == "Subtract" and len(xs) != 2:
        raise UnsupportedLayerError(node.name, kind, f"Subtract takes two inputs, got {len(xs)}")
    y = xs[0]
    for x in xs[1:]:
        y = g.op(_MERGE_OPS[kind], [y, x])
    if kind == "Average":
        y = g.op("Div", [y, g.const(float(len(xs)))])
    return y, _out_shape(node)


@emits("Concatenate")
def _emit_concat(g, node, xs, shapes):
    axis = int(node.spec.config.get("axis", -1))
    return g.op("Concat", xs, axis=axis), _out_shape(node)


@emits("Permute")
def _emit_permute(g, node, xs, shapes):
    dims = [int(d) for d in node.spec.config["dims"]]  # per-sample axes, 1-based: the batch axis stays first
    return g.op("Transpose", [xs[0]], perm=[0, *dims]), tuple(shapes[0][d - 1] for d in dims)


@emits("Dot")
def _emit_dot(g, node, xs, shapes):
    """``Dot(axes=[2, 1])`` of two per-sample matrices ([m, k] @ [k, n]: keras.io's CCT pools with it)."""
    spec = node.spec
    axes = spec.config.get("axes")
    axes = [axes, axes] if isinstance(axes, int) else [int(a) for a in axes]
    if len(xs) != 2 or any(len(s) != 2 for s in shapes) or axes != [2, 1] or spec.config.get("normalize"):
        raise UnsupportedLayerError(
            spec.name, spec.class_name, "the MC Dropout graph emits Dot(axes=[2, 1]) of two matrices per sample only"
        )
    return g.op("MatMul", xs), (shapes[0][0], shapes[1][1])


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
        raise UnsupportedLayerError(
            spec.name, spec.class_name, "channels_first is not supported in the MC Dropout graph"
        )
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


@emits("Conv2DTranspose")
def _emit_conv_transpose(g, node, xs, shapes):
    """ONNX ConvTranspose with the pads Keras crops (its 'same' output is input x stride, odd crop at the end)."""
    spec = node.spec
    kernel = np.asarray(spec.weights[0])  # (kh, kw, filters, inputs) -> ONNX (inputs, filters, kh, kw)
    bias = spec.weights[1] if spec.config.get("use_bias", True) else None
    attrs = _conv_transpose_attrs(spec, kernel.shape[:2], shapes[0][:2], _out_shape(node)[:2])
    inputs = [_to_channels_first(g, xs[0], 4), g.const(np.transpose(kernel, (3, 2, 0, 1)))]
    if bias is not None:
        inputs.append(g.const(bias))
    y = _to_channels_last(g, g.op("ConvTranspose", inputs, **attrs), 4)
    return _activation(g, spec, spec.config.get("activation", "linear"), y), _out_shape(node)


def _conv_transpose_attrs(spec: LayerSpec, kernel: tuple, size_in: tuple, size_out: tuple) -> dict:
    """Strides, dilations and explicit pads: the full transposed output cropped to the layer's own size, the
    smaller half first (as TF crops), so no auto_pad convention of a runtime decides it."""
    if spec.config.get("data_format", "channels_last") not in (None, "channels_last"):
        raise UnsupportedLayerError(
            spec.name, spec.class_name, "channels_first is not supported in the MC Dropout graph"
        )
    if spec.config.get("output_padding") is not None:
        raise UnsupportedLayerError(
            spec.name, spec.class_name, "output_padding is not supported in the MC Dropout graph"
        )
    strides, dilations = _spatial(spec, "strides", 2, 1), _spatial(spec, "dilation_rate", 2, 1)
    full = [s * (i - 1) + d * (k - 1) + 1 for s, i, d, k in zip(strides, size_in, dilations, kernel)]
    crop = [f - int(o) for f, o in zip(full, size_out)]
    extra = [max(-c, 0) for c in crop]  # a stride past the kernel: rows beyond the full size, added at the end
    crop = [max(c, 0) for c in crop]
    return {
        "strides": strides,
        "dilations": dilations,
        "kernel_shape": [int(k) for k in kernel],
        "pads": [c // 2 for c in crop] + [c - c // 2 for c in crop],
        **({"output_padding": extra} if any(extra) else {}),
    }


@emits(
    "MaxPooling1D",
    "MaxPooling2D",
    "AveragePooling1D",
    "AveragePooling2D",
)
def _emit_pool(g, node, xs, shapes):
    spec = node.spec
    rank = len(shapes[0]) + 1
    size = _spatial(spec, "pool_size", rank - 2)
    strides = spec.config.get("strides") or size
    attrs = _conv_attrs(
        LayerSpec(spec.class_name, {**spec.config, "strides": strides, "dilation_rate": 1}), rank - 2, size
    )
    attrs.pop("dilations")
    op = "MaxPool" if "Max" in spec.class_name else "AveragePool"  # AveragePool excludes the padding, as TF does
    y = g.op(op, [_to_channels_first(g, xs[0], rank)], **attrs)
    return _to_channels_last(g, y, rank), _out_shape(node)


@emits(
    "GlobalAveragePooling1D",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling1D",
    "GlobalMaxPooling2D",
)
def _emit_global_pool(g, node, xs, shapes):
    spec = node.spec
    op = "ReduceMax" if "Max" in spec.class_name else "ReduceMean"
    axes = list(range(1, len(shapes[0])))
    return g.reduce(op, xs[0], axes, keepdims=int(bool(spec.config.get("keepdims", False)))), _out_shape(node)


@emits("Cropping1D")
def _emit_cropping(g, node, xs, shapes):
    """Keep steps ``begin .. length - end`` of axis 1 (how a packed input is cut into the model's inputs)."""
    begin, end = (int(v) for v in node.spec.config["cropping"])
    stop = int(shapes[0][0]) - end
    return g.op(
        "Slice", [xs[0], g.const([begin], np.int64), g.const([stop], np.int64), g.const([1], np.int64)]
    ), _out_shape(node)


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


@emits("UnitNormalization")
def _emit_unit_norm(g, node, xs, shapes):
    """``x / sqrt(max(sum(x ** 2), 1e-12))`` over the layer's axes, as ``tf.math.l2_normalize`` computes it."""
    rank = len(shapes[0]) + 1
    axes = node.spec.config.get("axis", -1)
    axes = sorted(a % rank for a in ([axes] if isinstance(axes, int) else axes))
    square_sum = g.reduce("ReduceSum", g.op("Mul", [xs[0], xs[0]]), axes, keepdims=1)
    return g.op("Div", [xs[0], g.op("Sqrt", [g.op("Max", [square_sum, g.const(1e-12)])])]), shapes[0]


@emits("MultiHeadAttention")
def _emit_attention(g, node, xs, shapes):
    """Keras' MultiHeadAttention on sequences ([N, T, D]), as its einsums compute it.

    ``mha(query, value[, key])``: per-head projections, scaled dot products, a softmax over the key positions, the
    weighted values, the output projection. Its own attention dropout is not sampled (it acts inside the layer;
    the MC model samples the model's Dropout layers).
    """
    spec, cfg = node.spec, node.spec.config
    if len(xs) not in (2, 3) or any(len(s) != 2 for s in shapes):
        raise UnsupportedLayerError(
            spec.name, spec.class_name, "the MC Dropout graph emits attention over sequences [N, T, D] only"
        )
    axes = cfg.get("attention_axes")
    if axes is not None and [int(a) % 3 for a in ([axes] if isinstance(axes, int) else axes)] != [1]:
        raise UnsupportedLayerError(spec.name, spec.class_name, f"attention_axes={axes} has no MC Dropout form")
    query, value = xs[0], xs[1]
    key = xs[2] if len(xs) == 3 else value
    w = [np.asarray(v, np.float32) for v in spec.weights]
    bias = bool(cfg.get("use_bias", True))
    step = 2 if bias else 1
    wq, wk, wv, wo = (w[i * step] for i in range(4))
    if wo.ndim != 3:
        shape = cfg.get("output_shape")
        raise UnsupportedLayerError(spec.name, spec.class_name, f"output_shape={shape} has no MC Dropout form")

    def project(x, kernel, index, equation):
        y = g.op("Einsum", [x, g.const(kernel)], equation=equation)
        return g.op("Add", [y, g.const(w[index * step + 1])]) if bias else y

    q = project(query, wq, 0, "btd,dhk->bthk")
    k = project(key, wk, 1, "bsd,dhk->bshk")
    v = project(value, wv, 2, "bsd,dhv->bshv")
    q = g.op("Mul", [q, g.const(1.0 / np.sqrt(float(wq.shape[-1])))])
    scores = g.op("Einsum", [k, q], equation="bshk,bthk->bhts")
    probs = g.op("Softmax", [scores], axis=-1)
    context = g.op("Einsum", [probs, v], equation="bhts,bshv->bthv")
    out = g.op("Einsum", [context, g.const(wo)], equation="bthv,hvo->bto")
    if bias:
        out = g.op("Add", [out, g.const(w[7].reshape(-1))])
    return out, _out_shape(node)


@emits("Embedding")
def _emit_embedding(g, node, xs, shapes):
    from onnx import TensorProto

    if node.spec.config.get("mask_zero"):  # the layers after it would skip the masked steps; ONNX has no masks
        raise UnsupportedLayerError(
            node.name, node.spec.class_name, "mask_zero=True has no form in the MC Dropout graph"
        )
    ids = g.op("Cast", [xs[0]], to=TensorProto.INT64)
    return g.op("Gather", [g.const(node.spec.weights[0]), ids], axis=0), _out_shape(node)


def _reshape(g: MCGraph, spec: LayerSpec, x: str, shape: tuple):
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
        raise UnsupportedLayerError(
            spec.name, spec.class_name, f"only the last (feature) axis is supported, got axis {axes}"
        )


def _batchnorm(g: MCGraph, spec: LayerSpec, x: str, shape: tuple) -> str:
    """Inference BatchNormalization with its moving statistics: x * scale + offset."""
    cfg = spec.config
    _last_axis_only(spec, cfg.get("axis", -1), len(shape))
    scale, offset = batchnorm_scale_offset(spec)  # the formula the fold uses too
    return g.op("Add", [g.op("Mul", [x, g.const(scale)]), g.const(offset)])


def _normalization(g: MCGraph, spec: LayerSpec, x: str, shape: tuple) -> str:
    """Keras Normalization: (x - mean) / max(sqrt(var), 1e-7), or its inverse."""
    cfg = spec.config
    if spec.weights:
        mean, var = np.asarray(spec.weights[0], np.float64), np.asarray(spec.weights[1], np.float64)
    elif cfg.get("mean") is not None and cfg.get("variance") is not None:
        mean, var = np.asarray(cfg["mean"], np.float64), np.asarray(cfg["variance"], np.float64)
    else:
        raise UnsupportedLayerError(
            spec.name, spec.class_name, "Normalization was never adapted (no mean and variance)"
        )
    if mean.size == 1:
        mean, var = mean.reshape(()), var.reshape(())
    elif mean.size == shape[-1]:
        mean, var = mean.reshape(shape[-1]), var.reshape(shape[-1])
    elif mean.size == int(np.prod(shape)):
        mean, var = mean.reshape(shape), var.reshape(shape)
    else:
        raise UnsupportedLayerError(
            spec.name, spec.class_name, f"statistics of size {mean.size} do not fit inputs {shape}"
        )
    std = np.maximum(np.sqrt(var), _KERAS_EPSILON)
    if cfg.get("invert", False):
        return g.op("Add", [g.op("Mul", [x, g.const(std)]), g.const(mean)])
    return g.op("Div", [g.op("Sub", [x, g.const(mean)]), g.const(std)])


def mask_shape(spec: LayerSpec, shape: tuple) -> tuple[int, ...]:
    """The per-row shape one dropout mask is drawn on: the input's, with 1 on the axes the mask is broadcast along.

    SpatialDropout draws one value per channel; a ``noise_shape`` (EfficientNet's drop-connect,
    ``(None, 1, 1, 1)``: one value per sample) has 1 where the mask is shared, and ``None`` or the
    input's size where each element gets its own draw, as Keras reads it.
    """
    shape = tuple(int(d) for d in shape)
    if spec.class_name.startswith("SpatialDropout"):
        return (*[1] * (len(shape) - 1), shape[-1]) if shape else ()
    noise = spec.config.get("noise_shape")
    if noise is None:
        return shape
    noise = list(noise)
    if len(noise) != len(shape) + 1:
        raise UnsupportedLayerError(spec.name, spec.class_name, f"noise_shape {noise} does not fit inputs {shape}")
    if noise[0] == 1:
        raise UnsupportedLayerError(
            spec.name,
            spec.class_name,
            "a noise_shape sharing one mask across the batch would give every MC sample the same mask",
        )
    out = []
    for d, n in zip(shape, noise[1:]):
        if n is not None and int(n) not in (1, d):
            raise UnsupportedLayerError(spec.name, spec.class_name, f"noise_shape {noise} does not fit inputs {shape}")
        out.append(1 if n is not None and int(n) == 1 and d != 1 else d)
    return tuple(out)


def _dropout(g: MCGraph, spec: LayerSpec, x: str, shape: tuple = ()) -> str:
    """Dropout kept active: a pooled mask (:mod:`deploykit.uncertainty.masks`) or ONNX Dropout in training mode.

    AlphaDropout uses the keep flags with Keras's affine correction. A mask drawn on fewer values
    than the input has (SpatialDropout: one per channel; a ``noise_shape``: see :func:`mask_shape`)
    is broadcast along the other axes.
    """
    rate = float(spec.config.get("rate", 0.0))
    if not 0.0 <= rate < 1.0:
        raise UnsupportedLayerError(spec.name, spec.class_name, f"rate must be in [0, 1), got {rate}")
    if not spec.class_name.startswith("SpatialDropout") and spec.class_name not in ("Dropout", "AlphaDropout"):
        raise UnsupportedLayerError(spec.name, spec.class_name, "no MC Dropout form for this dropout type")
    on = mask_shape(spec, shape)
    alpha = spec.class_name == "AlphaDropout"
    if g.mask is MaskKind.POOL:
        width = int(np.prod(on))
        mask = pool_keep(g, x, len(shape) + 1, width, rate, g.pool, g.table_rng(), as_bool=alpha)
        if len(shape) > 1 or on != tuple(shape):
            mask = g.op("Reshape", [mask, g.const([0, *on], np.int64)])
        return _alpha_dropout(g, x, mask, represented_rate(rate, g.pool)) if alpha else g.op("Mul", [x, mask])
    return _onnx_dropout(g, x, rate, shape, on, alpha)


def _onnx_dropout(g: MCGraph, x: str, rate: float, shape: tuple, on: tuple, alpha: bool) -> str:
    """:attr:`MaskKind.DROPOUT`: the keep mask of an ONNX Dropout node (one draw per element of ``on``)."""
    from onnx import TensorProto

    shared = [i + 1 for i, (d, m) in enumerate(zip(shape, on)) if m == 1 and d != 1]
    if shared:  # the mask is drawn on [N, ...] reduced over the shared axes, and broadcast
        reduced = g.reduce("ReduceMax", x, shared, keepdims=1)
        _, keep = g.op("Dropout", [reduced, g.const(rate), g.true()], n_out=2, **g.dropout_seed())
        if alpha:
            return _alpha_dropout(g, x, keep, rate)
        factor = g.op("Mul", [g.op("Cast", [keep], to=TensorProto.FLOAT), g.const(1.0 / (1.0 - rate))])
        return g.op("Mul", [x, factor])
    # The keep-mask output must be used: onnxruntime's DropoutElimination removes any Dropout node
    # whose mask is unused, whatever its training_mode.
    dropped, keep = g.op("Dropout", [x, g.const(rate), g.true()], n_out=2, **g.dropout_seed())
    if alpha:
        return _alpha_dropout(g, x, keep, rate)
    # `dropped` is already 0 where the mask is off; Mul by the mask costs far less than Where.
    return g.op("Mul", [dropped, g.op("Cast", [keep], to=TensorProto.FLOAT)])


def _alpha_dropout(g: MCGraph, x: str, keep: str, rate: float) -> str:
    """tf_keras AlphaDropout: dropped units are set to alpha_p, then a * x + b restores mean and variance."""
    alpha_p = -_SELU_ALPHA * _SELU_SCALE
    a = ((1 - rate) * (1 + rate * alpha_p**2)) ** -0.5
    b = -a * alpha_p * rate
    kept = g.op("Where", [keep, x, g.const(alpha_p)])
    return g.op("Add", [g.op("Mul", [kept, g.const(a)]), g.const(b)])


def _activation_layer(g: MCGraph, spec: LayerSpec, x: str) -> str:
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


def _activation(g: MCGraph, spec: LayerSpec, name, x: str) -> str:
    """A Keras activation given by name, as ONNX ops."""
    if isinstance(name, dict):  # a function of the user's a tf.keras file names (its code given): no ONNX form
        name = str(name.get("config") if isinstance(name.get("config"), str) else name.get("class_name"))
    if name in (None, "linear"):
        return x
    simple = {
        "relu": "Relu",
        "sigmoid": "Sigmoid",
        "tanh": "Tanh",
        "softplus": "Softplus",
        "softsign": "Softsign",
        "exponential": "Exp",
        "selu": "Selu",
        "elu": "Elu",
    }
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
