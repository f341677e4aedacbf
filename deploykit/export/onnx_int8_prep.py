"""The int8 preparation of a float32 ONNX file: what :mod:`deploykit.export.int8_prep` does to a Keras model, done
on the graph, so ``deploykit export model.onnx --quantize int8-static`` is not bare onnxruntime.

onnxruntime's quantizers take a file as it is. Two things spoil int8 there that the Keras side prepares for:

1. kernels whose ranges one int8 scale per output channel cannot hold (a folded Normalization's rows ~10^6 apart,
   a column set by one outlier): every Gemm, MatMul and Conv (1-D, 2-D, depthwise) reading a constant kernel gets
   the same weight clip search, bias correction and requantization bound (:mod:`deploykit.export.int8_clip`),
   through the Keras layer it computes (a :class:`~deploykit.core.graph.LayerSpec`: Dense, Conv1D / Conv2D,
   DepthwiseConv2D, channels last), on its inputs measured in onnxruntime on the calibration samples;
2. inputs on scales far apart (raw tabular features): one int8 scale per tensor rounds the small features to zero,
   whether the first quantized op is the first MatMul of a folded file or the ``Mul`` of a Normalization the file
   still holds. With ``standardize_input`` (``QuantConfig``) a float standardization (``Sub``, ``Div``; its
   constants on the same grid as the Keras side's, :func:`~deploykit.export.int8_prep.on_grid`) goes in front of
   the first Gemm / MatMul, whose kernel rows and bias absorb it exactly, and it and every op before it stay in
   float (their names returned for the quantizer's ``keep_float``), so the first int8 tensor holds features of one
   scale.

The prepared graph is only the quantizer's input; validation compares the int8 file with the file given.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from deploykit.errors import ConversionError
from deploykit.export.int8_clip import clip_kernel, layer_rows
from deploykit.export.int8_prep import (
    STANDARDIZATION,
    STANDARDIZED,
    Int8Preparation,
    on_grid,
    standardization_scales,
)


@dataclass
class _Kernel:
    """One ONNX node reading a constant kernel, as the Keras layer it computes."""

    node: object  # onnx NodeProto
    spec: object  # deploykit.core.graph.LayerSpec, channels last
    bias_node: object | None  # the Add after a MatMul that holds its bias (None: Gemm's C, Conv's B, or none)
    pads: tuple[int, ...] = ()  # a conv's explicit pads, begin then end per spatial axis (the spec pads nothing)
    original: list = field(default_factory=list)  # the spec's weights as read: nothing is written where they stay

    def __post_init__(self) -> None:
        self.original = [w.copy() for w in self.spec.weights]

    @property
    def changed(self) -> bool:
        now = self.spec.weights
        return len(now) != len(self.original) or any(not np.array_equal(a, b) for a, b in zip(now, self.original))

    @property
    def input(self) -> str:
        return self.node.input[0]

    @property
    def dense(self) -> bool:
        return self.spec.class_name == "Dense"


def prepare_onnx_for_int8(
    proto, calibration: np.ndarray, *, standardize: bool = False, exact: bool = False
) -> tuple[object, Int8Preparation, tuple[str, ...]]:
    """``(prepared proto, Int8Preparation, the node names to keep in float)``; ``proto`` is not changed.

    ``standardize``: the float standardization in front of the first Gemm / MatMul (see the module's docstring),
    its constants as measured with ``exact``. A file whose first kernel op is a convolution is only clipped.
    """
    import onnx

    prepared = onnx.ModelProto()
    prepared.CopyFrom(proto)
    kernels = _kernels(prepared)
    in_float: tuple[str, ...] = ()
    standardized = False
    if standardize and kernels and kernels[0].dense:
        first = kernels[0]
        h = _inputs_of(prepared, [first], calibration)[0]
        mean, std = standardization_scales(h.reshape(-1, h.shape[-1]).astype(np.float64))
        if not exact:
            mean, std = on_grid(mean, std)
        ancestors = _ancestors(prepared, first.input)
        in_float = (*ancestors, *_standardize(prepared, first, mean, std))
        standardized = True
    clipped = []
    if kernels:
        inputs = _kernel_rows(prepared, kernels, calibration)
        for kernel, (rows, in_scale) in zip(kernels, inputs):
            clipped.append(clip_kernel(kernel.spec, rows, in_scale))
            if kernel.changed:  # a node left as it was keeps its (possibly shared) initializers
                _write_back(prepared, kernel)
    diff = max(
        float(np.abs(a - b).max())
        for a, b in zip(_run(prepared, [], calibration, outputs=True), _run(proto, [], calibration, outputs=True))
    )
    prep = Int8Preparation([], clipped, len(calibration), diff)
    if standardized:
        prep.steps.insert(0, STANDARDIZED)
    return prepared, prep, in_float


def first_kernel_is_dense(path) -> bool:
    """Whether the first kernel op of the float32 ONNX file ``path`` is a Gemm / MatMul (a Dense layer): where the
    float standardization goes."""
    from deploykit.onnx.file import load_onnx

    kernels = _kernels(load_onnx(path))
    return bool(kernels) and kernels[0].dense


#: Ops read as a Keras layer's kernel: Dense (Gemm, MatMul) and convolutions.
KERNEL_OPS = ("Gemm", "MatMul", "Conv")
#: Rows of calibration samples per onnxruntime run while measuring the kernels' inputs.
BATCH = 32


def _kernels(proto) -> list[_Kernel]:
    """The nodes reading a float32 constant kernel no other node reads, in graph order, as Keras layers (see
    :func:`_as_layer`); a node no Keras layer computes (a grouped conv, a transposed A, SAME_LOWER pads) is left."""
    import onnx
    from onnx import numpy_helper

    initializers = {t.name: t for t in proto.graph.initializer}
    readers = Counter(i for n in proto.graph.node for i in n.input)
    consumers: dict[str, list] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    found = []
    for node in proto.graph.node:
        if node.op_type not in KERNEL_OPS or len(node.input) < 2:
            continue
        weight = initializers.get(node.input[1])
        if weight is None or readers[node.input[1]] != 1 or weight.data_type != onnx.TensorProto.FLOAT:
            continue
        kernel = _as_layer(node, numpy_helper.to_array(weight), initializers, consumers)
        if kernel is not None:
            found.append(kernel)
    return found


def _as_layer(node, weight: np.ndarray, initializers: dict, consumers: dict) -> _Kernel | None:
    """``node`` as the Keras layer it computes (kernel channels last, its bias), or None."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    name = node.name or f"{node.op_type}:{node.output[0]}"
    bias, bias_node, out = None, None, node.output[0]
    if node.op_type == "Gemm":
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            return None
        kernel = weight.T if attrs.get("transB", 0) else weight
        bias = _constant(initializers, node.input[2] if len(node.input) > 2 else "", kernel.shape[-1])
        if len(node.input) > 2 and node.input[2] and bias is None:
            return None  # a C that is no per-unit bias (broadcast from a scalar or a tensor input)
    elif node.op_type == "MatMul":
        if weight.ndim != 2:
            return None
        kernel = weight
        after = consumers.get(out, [])
        if len(after) == 1 and after[0].op_type == "Add":
            other = [i for i in after[0].input if i != out]
            bias = _constant(initializers, other[0] if len(other) == 1 else "", kernel.shape[-1])
            if bias is not None:
                bias_node, out = after[0], after[0].output[0]
    else:
        return _as_conv(node, weight, attrs, name, initializers, consumers)
    relu = [n.op_type for n in consumers.get(out, [])] == ["Relu"]
    config = {"name": name, "units": int(kernel.shape[-1]), "use_bias": bias is not None}
    config["activation"] = "relu" if relu else "linear"
    spec = _spec("Dense", config, kernel, bias)
    return _Kernel(node, spec, bias_node)


def _as_conv(node, weight: np.ndarray, attrs: dict, name: str, initializers: dict, consumers: dict) -> _Kernel | None:
    """A Conv node as Conv1D / Conv2D (one group) or DepthwiseConv2D (one group per input channel), or None."""
    rank = weight.ndim - 2
    group = int(attrs.get("group", 1))
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if rank not in (1, 2) or auto_pad not in ("NOTSET", "VALID", "SAME_UPPER"):
        return None
    out_channels = weight.shape[0]
    if group == 1:
        kernel = weight.transpose(*range(2, 2 + rank), 1, 0)  # (O, I, *taps) -> (*taps, I, O)
        class_name = "Conv1D" if rank == 1 else "Conv2D"
    elif rank == 2 and weight.shape[1] == 1 and out_channels % group == 0:
        # output channel g * M + m reads input channel g: (g * M + m, 1, kh, kw) -> (kh, kw, g, m)
        kernel = weight.reshape(group, out_channels // group, *weight.shape[2:]).transpose(2, 3, 0, 1)
        class_name = "DepthwiseConv2D"
    else:
        return None
    bias = _constant(initializers, node.input[2] if len(node.input) > 2 else "", out_channels)
    if len(node.input) > 2 and node.input[2] and bias is None:
        return None
    pads = tuple(int(p) for p in attrs.get("pads", [0] * 2 * rank)) if auto_pad == "NOTSET" else (0,) * 2 * rank
    config = {
        "name": name,
        "kernel_size": tuple(int(k) for k in weight.shape[2:]),
        "strides": tuple(int(s) for s in attrs.get("strides", [1] * rank)),
        "dilation_rate": tuple(int(d) for d in attrs.get("dilations", [1] * rank)),
        "padding": "same" if auto_pad == "SAME_UPPER" else "valid",  # explicit pads are applied to the inputs
        "use_bias": bias is not None,
        "activation": "relu" if [n.op_type for n in consumers.get(node.output[0], [])] == ["Relu"] else "linear",
    }
    if class_name == "DepthwiseConv2D":
        config["depth_multiplier"] = out_channels // group
    else:
        config["filters"] = int(out_channels)
    return _Kernel(node, _spec(class_name, config, kernel, bias), None, pads)


def _constant(initializers: dict, name: str, units: int) -> np.ndarray | None:
    """The float32 initializer ``name`` as a per-unit vector of ``units`` values, or None."""
    from onnx import numpy_helper

    tensor = initializers.get(name)
    if tensor is None:
        return None
    value = numpy_helper.to_array(tensor)
    return value.reshape(units).astype(np.float32) if value.size == units and value.dtype == np.float32 else None


def _spec(class_name: str, config: dict, kernel: np.ndarray, bias: np.ndarray | None):
    from deploykit.core.graph import LayerSpec

    weights = [np.asarray(kernel, np.float32).copy()] + ([bias.copy()] if bias is not None else [])
    return LayerSpec(class_name, config, weights)


def _to_onnx(kernel: _Kernel) -> np.ndarray:
    """The spec's kernel in the node's own layout (the inverse of :func:`_as_layer`)."""
    w = kernel.spec.weights[0]
    op, attrs = kernel.node.op_type, {a.name: a for a in kernel.node.attribute}
    if op == "Gemm":
        return w.T if "transB" in attrs and attrs["transB"].i else w
    if op == "MatMul":
        return w
    if kernel.spec.class_name == "DepthwiseConv2D":  # (kh, kw, g, m) -> (g * M + m, 1, kh, kw)
        kh, kw, groups, mult = w.shape
        return w.transpose(2, 3, 0, 1).reshape(groups * mult, 1, kh, kw)
    rank = w.ndim - 2
    return w.transpose(rank + 1, rank, *range(rank))  # (*taps, I, O) -> (O, I, *taps)


def _write_back(proto, kernel: _Kernel) -> None:
    """The spec's kernel and bias into ``proto``: the kernel's initializer, and the bias where the node keeps it
    (Gemm's C, Conv's B, the Add after a MatMul), added when the clipping gave a bias-less node one. A bias
    initializer other nodes also read (tf2onnx stores equal constants once) is copied for this node first."""
    from onnx import helper

    node = kernel.node
    _set_initializer(proto, node.input[1], _to_onnx(kernel))
    if len(kernel.spec.weights) < 2:
        return
    bias = kernel.spec.weights[1]
    if kernel.bias_node is not None:
        holder = kernel.bias_node
        slot = next(k for k, i in enumerate(holder.input) if i != node.output[0])
    elif node.op_type in ("Gemm", "Conv"):
        holder, slot = node, 2
        while len(node.input) < 3:
            node.input.append("")
    else:  # a bias-less MatMul: an Add after it, under the MatMul's output name
        out = node.output[0]
        node.output[0] = f"{out}/deploykit_unbiased"
        add = helper.make_node(
            "Add", [node.output[0], f"{out}/deploykit_bias"], [out], name=f"{kernel.spec.name}/deploykit_bias_add"
        )
        proto.graph.node.insert(list(proto.graph.node).index(node) + 1, add)
        kernel.bias_node, holder, slot = add, add, 1
    name = holder.input[slot]
    readers = sum(i == name for n in proto.graph.node for i in n.input) if name else 0
    if not name or readers > 1:
        name = f"{kernel.spec.name}/deploykit_bias"
        holder.input[slot] = name
    _set_initializer(proto, name, bias)


def _set_initializer(proto, name: str, value: np.ndarray) -> None:
    """Set (or add) initializer ``name`` to ``value``, in the shape it had."""
    from onnx import numpy_helper

    for tensor in proto.graph.initializer:
        if tensor.name == name:
            tensor.CopyFrom(numpy_helper.from_array(np.asarray(value, np.float32).reshape(tuple(tensor.dims)), name))
            return
    proto.graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), name))


def _standardize(proto, first: _Kernel, mean: np.ndarray, std: np.ndarray) -> list[str]:
    """A float ``(x - mean) / std`` in front of ``first`` (a Dense), its kernel rows times ``std`` and its bias plus
    ``mean @ kernel``: exact (``W x + b = (diag(s) W) ((x - m) / s) + (b + m W)``). Returns the names of the nodes
    put in."""
    from onnx import helper, numpy_helper

    spec = first.spec
    kernel = spec.weights[0].astype(np.float64)
    bias = spec.weights[1].astype(np.float64) if len(spec.weights) > 1 else np.zeros(kernel.shape[-1])
    spec.weights = [(kernel * std[:, None]).astype(np.float32), (bias + mean @ kernel).astype(np.float32)]
    spec.config["use_bias"] = True
    _write_back(proto, first)
    x, root = first.input, STANDARDIZATION
    proto.graph.initializer.extend(
        [
            numpy_helper.from_array(mean.astype(np.float32), f"{root}/mean"),
            numpy_helper.from_array(std.astype(np.float32), f"{root}/std"),
        ]
    )
    nodes = [
        helper.make_node("Sub", [x, f"{root}/mean"], [f"{root}/centred"], name=f"{root}/sub"),
        helper.make_node("Div", [f"{root}/centred", f"{root}/std"], [f"{root}/output"], name=f"{root}/div"),
    ]
    at = list(proto.graph.node).index(first.node)
    for k, node in enumerate(nodes):
        proto.graph.node.insert(at + k, node)
    first.node.input[0] = f"{root}/output"
    return [node.name for node in nodes]


def _ancestors(proto, tensor: str) -> list[str]:
    """The names of the nodes ``tensor`` is computed from (unnamed ones are named here), in graph order."""
    nodes = list(proto.graph.node)
    producers = {out: k for k, node in enumerate(nodes) for out in node.output}
    seen: set[int] = set()
    stack = [tensor]
    while stack:
        k = producers.get(stack.pop())
        if k is not None and k not in seen:
            seen.add(k)
            stack.extend(nodes[k].input)
    for k in sorted(seen):
        nodes[k].name = nodes[k].name or f"deploykit_float_input_{k}"
    return [nodes[k].name for k in sorted(seen)]


def _run(proto, tensors: list[str], x: np.ndarray, outputs: bool = False) -> list[np.ndarray]:
    """The values of ``tensors`` (and, with ``outputs``, of the graph's outputs first) on ``x``, in batches of
    :data:`BATCH`, concatenated; onnxruntime with its graph optimizations off, so every named tensor still exists."""
    batches = list(_batches(proto, tensors, x, outputs))
    return [np.concatenate(parts) for parts in zip(*batches)]


def _batches(proto, tensors: list[str], x: np.ndarray, outputs: bool = False):
    """Per batch of ``x``: the values of ``tensors`` (after the graph's outputs with ``outputs``)."""
    import onnx

    from deploykit.export.onnx_quant import graph_input, graph_inputs, input_layout
    from deploykit.onnx.sessions import proto_session

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    sources, layout, first = set(graph_inputs(proto)), input_layout(proto), graph_input(proto)
    declared = {o.name for o in probe.graph.output}
    probe.graph.output.extend(
        [onnx.ValueInfoProto(name=t) for t in dict.fromkeys(tensors) if t not in declared and t not in sources]
    )
    names = ([o.name for o in proto.graph.output] if outputs else []) + [t for t in tensors if t not in sources]
    session = proto_session(probe, what="int8 preparation", optimized=False)
    for start in range(0, len(x), BATCH):
        part = np.ascontiguousarray(x[start : start + BATCH], np.float32)
        feed = {first: part} if layout is None else layout.split_inputs(part)  # several inputs: a packed row, cut
        try:
            values = iter(session.run(names, feed))
        except Exception as exc:
            raise ConversionError(
                "int8 preparation: onnxruntime cannot run the file on the calibration samples "
                f"({type(exc).__name__}: {exc})"
            ) from None
        head = [next(values) for _ in proto.graph.output] if outputs else []
        yield [*head, *(feed[t] if t in sources else next(values) for t in tensors)]


def _inputs_of(proto, kernels: list[_Kernel], calibration: np.ndarray) -> list[np.ndarray]:
    """Each kernel's input on the calibration samples, as onnxruntime computes it (channels first for a conv)."""
    return _run(proto, [k.input for k in kernels], calibration)


def _kernel_rows(proto, kernels: list[_Kernel], calibration: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """Per kernel: its input rows (a conv's sampled receptive fields) and its input's int8 scale
    (:func:`~deploykit.export.int8_clip.layer_rows`), from onnxruntime's values made channels last and padded."""
    runs = _batches(proto, [k.input for k in kernels], calibration)

    def inputs(part: np.ndarray) -> list[np.ndarray]:
        return [_channels_last(k, h) for k, h in zip(kernels, next(runs))]

    return layer_rows([k.spec for k in kernels], inputs, calibration, BATCH)


def _channels_last(kernel: _Kernel, h: np.ndarray) -> np.ndarray:
    """A kernel's input as its Keras layer reads it: a Dense's as it is (its last axis), a conv's channels last with
    its explicit pads applied."""
    if kernel.dense:
        return h
    h = np.moveaxis(h, 1, -1)
    rank = h.ndim - 2
    if any(kernel.pads):
        widths = [(kernel.pads[k], kernel.pads[k + rank]) for k in range(rank)]
        h = np.pad(h, [(0, 0), *widths, (0, 0)])
    return h
