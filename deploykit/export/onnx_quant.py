"""ONNX quantization with onnxruntime's own tools: float16, int8-dynamic, int8-static (QDQ), with its knobs.

Each function takes and returns an ``onnx.ModelProto``; onnxruntime's
quantizers work on files, so they run in a scratch folder that is removed
afterwards. Inputs and outputs stay float32 in every variant.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from deploykit.core.multi_io import Layout
from deploykit.errors import UsageError, converting
from deploykit.export.config import ActivationType, CalibrationMethod
from deploykit.export.onnx_layers import excluded_nodes
from deploykit.log import quiet_native


def quantize_float16(proto):
    """float16 weights and arithmetic; the float32 input and output get Cast nodes (keep_io_types). The nodes that
    carry an input to an embedding's ids stay float32 (:func:`id_paths`)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    with converting("onnxruntime's float16 converter"):
        half = convert_float_to_float16(
            proto, keep_io_types=True, disable_shape_infer=False, node_block_list=id_paths(proto) or None
        )
    _drop_round_trips(half)
    wrapped = OnnxModel(half)
    wrapped.topological_sort()  # the converter appends the input Casts last; onnx.checker wants them first
    return wrapped.model


def _drop_round_trips(proto) -> None:
    """Remove the float32 -> float16 -> float32 Cast pairs the converter leaves before the nodes it keeps in float32
    (the input Cast it adds for keep_io_types included), in place: the round trip only rounds, an id included. The
    Cast back to float32 becomes an Identity of the float32 tensor; a float16 Cast nothing else reads is dropped."""
    from onnx import TensorProto, shape_inference

    def cast_to(node) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    graph = proto.graph
    inferred = shape_inference.infer_shapes(proto).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.input, *inferred.value_info]}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    for node in list(graph.node):
        if cast_to(node) != TensorProto.FLOAT16 or node.output[0] in outputs:
            continue
        if types.get(node.input[0]) != TensorProto.FLOAT:  # an Identity of it would not be float32
            continue
        users = readers.get(node.output[0], [])
        back = [u for u in users if cast_to(u) == TensorProto.FLOAT]
        for user in back:
            user.op_type = "Identity"
            del user.attribute[:]
            user.input[0] = node.input[0]
        if len(back) == len(users):
            graph.node.remove(node)


#: Ops whose outputs are shapes or sizes, whatever their input: a walk back from an id stops there.
_SHAPE_OPS = frozenset({"Shape", "Size", "Constant", "ConstantOfShape"})


def id_paths(proto) -> list[str]:
    """The nodes that carry a graph input to the ids of a Gather from a weight table (an Embedding's lookup).

    Ids reach a Gather through float nodes (deploykit's inputs are float32, a packed input is sliced, then Cast
    to int): in float16 an id above 2048 is rounded (9999 becomes 10000), and an id rounded past the table's end
    fails the lookup. These nodes are left in float32, which holds every id below 2**24 exactly."""
    graph = proto.graph
    producer = {out: node for node in graph.node for out in node.output}
    tables = {t.name for t in graph.initializer}
    inputs = {i.name for i in graph.input}
    blocked: set[str] = set()
    for gather in graph.node:
        if gather.op_type != "Gather" or len(gather.input) < 2 or gather.input[0] not in tables:
            continue
        path, todo, reaches_input = set(), [gather.input[1]], False
        while todo:
            tensor = todo.pop()
            reaches_input |= tensor in inputs
            node = producer.get(tensor)
            if node is None or node.name in path or node.op_type in _SHAPE_OPS:
                continue
            path.add(node.name)
            todo.extend(node.input)
        if reaches_input:
            blocked |= path
    return sorted(blocked)


#: Ops onnxruntime's dynamic quantizer may turn to integer kernels that deploykit leaves in float: a dynamically
#: quantized Conv runs as ``ConvInteger``, which onnxruntime's CPU provider computes without fast int8 kernels
#: (a small CNN: 2.8x slower than float32 at batch 1, 3.4x at batch 256, 1 thread; ``benchmarks/bench_faster.py``).
#: Convolutions get int8 from the calibrated variants (``int8-static``, TFLite ``int8-full``) instead.
DYNAMIC_FLOAT_OPS = frozenset({"Conv"})


def dynamic_op_types() -> list[str]:
    """The op types ``int8-dynamic`` quantizes: onnxruntime's integer-op registry less :data:`DYNAMIC_FLOAT_OPS`."""
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    return sorted(set(IntegerOpsRegistry) - DYNAMIC_FLOAT_OPS)


def quantize_int8_dynamic(
    proto, *, per_channel: bool = True, exclude: tuple[str, ...] = (), keep_float: tuple[str, ...] = ()
):
    """int8 weights (symmetric; per output channel unless ``per_channel=False``); activations quantized at run time.

    Dense layers (MatMul), embeddings (Gather), attention and LSTM; convolutions stay float32
    (:data:`DYNAMIC_FLOAT_OPS`: slower as dynamic int8 than as float). ``exclude``: ONNX node names or Keras
    layer names whose nodes stay float.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with (
        _scratch(proto) as (src, dst),
        quiet_native(),
        converting("onnxruntime's dynamic quantizer"),
    ):  # the quantizer warns on the root logger ("consider pre-processing")
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            nodes_to_exclude=_excluded(proto, exclude, keep_float),
            op_types_to_quantize=dynamic_op_types(),
        )
        return _load(dst)


def quantize_int8_static(
    proto,
    calibration: np.ndarray,
    *,
    per_channel: bool = True,
    method: CalibrationMethod = CalibrationMethod.MINMAX,
    exclude: tuple[str, ...] = (),
    activation_type: ActivationType = ActivationType.AUTO,
    keep_float: tuple[str, ...] = (),
):
    """QDQ int8 weights and activations, activation ranges calibrated on ``calibration`` with ``method``;
    activations as ``activation_type`` (defaults as ``QuantConfig``'s; ``auto`` is resolved here, on this CPU).

    Runs ``quant_pre_process`` (shape inference and graph optimisation) first,
    as onnxruntime recommends; ``exclude`` is resolved on the pre-processed graph (``keep_float``: see
    :func:`_excluded`).
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    unsigned = activation_type.resolved() is ActivationType.UINT8
    with (
        _scratch(proto) as (src, dst),
        quiet_native(),
    ):  # the quantizer warns on the root logger ("consider pre-processing")
        pre = src.with_name("pre.onnx")
        pre_process(src, pre)
        prepared = onnx.load(str(pre))
        heads = float_heads(prepared)
        if heads:
            onnx.save(prepared, str(pre))  # the heads named (float_heads names an unnamed one)
        excluded = [*_excluded(prepared, exclude, keep_float), *(h for h in heads if h not in exclude)]
        with (
            contextlib.redirect_stdout(io.StringIO()),  # the histogram calibrators print their progress
            converting("onnxruntime's static quantizer"),
        ):
            quantize_static(
                str(pre),
                str(dst),
                _Reader(calibration, proto),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=QuantType.QUInt8 if unsigned else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=_ORT_METHOD[method](),
                nodes_to_exclude=excluded,
            )
        return _load(dst)


def pre_process(src, dst) -> None:
    """onnxruntime's ``quant_pre_process`` of ``src`` into ``dst``; where it fails, again without its symbolic shape
    inference (ONNX's own shape inference is all the quantizer needs). That step fails on graphs it does not model:
    an attention block's Einsum and dynamic reshapes ("Incomplete symbolic shape inference"), a ConvTranspose's
    output size (an ``AssertionError`` from sympy). A failure of the retry is the quantizer's (a ConversionError).

    Run from ``dst``'s folder: on that failure onnxruntime first saves ``sym_shape_infer_temp.onnx`` in the
    current directory (the user's), which must not be left there."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = Path(src).resolve(), Path(dst).resolve()
    with contextlib.chdir(dst.parent):
        try:
            quant_pre_process(str(src), str(dst))
        except Exception:  # noqa: BLE001  (symbolic shape inference raises many types; the retry skips it)
            with converting("onnxruntime's quantization pre-processing"):
                quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)


def _excluded(proto, exclude: tuple[str, ...], keep_float: tuple[str, ...]) -> list[str]:
    """The nodes left in float: those ``exclude`` selects (a name selecting none is a UsageError) and the nodes of
    ``keep_float`` the graph still has (node names deploykit's preparation gave; graph optimisation may have
    removed one, which is no error of the user's)."""
    names = {n.name for n in proto.graph.node}
    selected = excluded_nodes(proto, exclude)
    return [*selected, *(n for n in keep_float if n in names and n not in selected)]


def _ort_method(name: str):
    def get():
        from onnxruntime.quantization import CalibrationMethod as Ort

        return getattr(Ort, name)

    return get


_ORT_METHOD = {
    CalibrationMethod.MINMAX: _ort_method("MinMax"),
    CalibrationMethod.ENTROPY: _ort_method("Entropy"),
    CalibrationMethod.PERCENTILE: _ort_method("Percentile"),
}


def graph_input(proto) -> str:
    """The name of the graph's first real input (initializers listed as inputs are not inputs)."""
    return next(iter(graph_inputs(proto)))


def graph_inputs(proto) -> dict[str, tuple[int | None, ...]]:
    """The graph's real inputs (initializers listed as inputs are not inputs): name -> per-sample shape, an axis
    without a fixed size as None."""
    initializers = {t.name for t in proto.graph.initializer}
    return {
        v.name: tuple(d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim[1:])
        for v in proto.graph.input
        if v.name not in initializers
    }


def fixed_inputs(proto) -> dict[str, tuple[int, ...]]:
    """:func:`graph_inputs`, each with a fixed per-sample shape (calibration rows are read as one; a
    :class:`~deploykit.errors.UsageError` names the input that has not)."""
    inputs = graph_inputs(proto)
    for name, dims in inputs.items():
        if None in dims:
            raise UsageError(f"input {name!r} has unknown axes after the batch axis; quantization needs a fixed shape")
    return inputs


def input_layout(proto) -> Layout | None:
    """How a graph with several inputs reads one packed row (every input flattened, side by side in name order, as
    :class:`~deploykit.export.runtimes.OnnxRunner` and the data of such a model hold them); None with one input."""
    inputs = graph_inputs(proto)
    return Layout.of(fixed_inputs(proto), {}) if len(inputs) > 1 else None


#: Ops that turn scores into probabilities. Quantized at the end of the graph they round every probability to the
#: int8 step (1/256): zeros whose log costs the NLL far more than any accuracy shows (+24% on a small convnet), as
#: the int8-full TFLite softmax did. They run in float: the model's body stays int8.
PROBABILITY_OPS = ("Softmax", "Sigmoid", "LogSoftmax")
#: Ops between a probability op and a graph output that move or pick values without computing new ones (a binary
#: head's [1 - p, p] is a Sub and a Concat).
_PASS_THROUGH = ("Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Sub", "Slice")


def float_heads(proto) -> list[str]:
    """The names of the probability ops (:data:`PROBABILITY_OPS`) whose outputs reach a graph output through
    pass-through ops only, and of those pass-through ops (a sigmoid's ``[1 - p, p]``: quantized, its ``Sub`` and
    ``Concat`` would put the sigmoid's output back on the int8 grid); an unnamed one is given a name in ``proto``
    so the quantizer can exclude it."""
    producers = {out: node for node in proto.graph.node for out in node.output}
    heads, seen, stack = [], set(), [(o.name, ()) for o in proto.graph.output]
    while stack:
        tensor, path = stack.pop()
        node = producers.get(tensor)
        key = (id(node), *map(id, path))
        if node is None or key in seen:
            continue
        seen.add(key)
        if node.op_type in PROBABILITY_OPS:
            for kept in (node, *path):
                kept.name = kept.name or f"deploykit_float_head_{len(heads)}"
                if kept.name not in heads:
                    heads.append(kept.name)
        elif node.op_type in _PASS_THROUGH and len(path) < MAX_PASS_THROUGH:
            stack.extend((name, (*path, node)) for name in node.input)
    return heads


#: Pass-through ops followed back from a graph output to its probability op (a served head has two or three).
MAX_PASS_THROUGH = 8


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over an array, one sample per call: a graph with several inputs
    gets each row cut into them as the runners cut a packed row (:func:`input_layout`)."""

    def __init__(self, x: np.ndarray, proto):
        self._rows = iter(np.asarray(x, dtype=np.float32))
        self._layout = input_layout(proto)
        self._name = graph_input(proto)

    def get_next(self):
        row = next(self._rows, None)
        if row is None:
            return None
        return {self._name: row[None]} if self._layout is None else self._layout.split_inputs(row[None])


@contextlib.contextmanager
def _scratch(proto) -> Iterator[tuple[Path, Path]]:
    """A temporary folder holding ``src.onnx`` (the input model); yields (src, dst)."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="deploykit-quant-") as tmp:
        root = Path(tmp)
        onnx.save(proto, str(root / "src.onnx"))
        yield root / "src.onnx", root / "dst.onnx"


def _load(path: Path):
    import onnx

    return onnx.load(str(path))
