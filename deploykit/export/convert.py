"""tf_keras -> ONNX conversion with tf2onnx: the one place deploykit calls it.

The graph has one input named ``input`` (float32, dynamic batch) and the outputs
:data:`~deploykit.core.contract.DETERMINISTIC_OUTPUTS` names for the model's output kind:
``probabilities`` (a softmax classifier), ``logits`` and ``probabilities`` (a logits
classifier: the Softmax is added to the graph), or ``prediction`` (a regressor). A binary head
(one sigmoid or linear unit) serves ``probabilities`` [N, 2] computed in the graph
(:mod:`deploykit.core.taskspec`).
"""

from __future__ import annotations

import contextlib
import os
import threading

from deploykit.core.contract import DETERMINISTIC_OUTPUTS, INPUT_NAME, KIND_DETERMINISTIC, OUTPUT_NAME  # noqa: F401  (re-exported: the exporters' names)
from deploykit.core.task import OutputKind
from deploykit.core.taskspec import TaskSpec, spec_of
from deploykit.errors import ConversionError, one_line
from deploykit.export.contract_onnx import check_model_outputs, width_sizes
from deploykit.log import quiet_native
from deploykit.onnx.builder import GraphBuilder
from deploykit.onnx.graph_ops import retarget

DEFAULT_OPSET = 17


def keras_to_onnx(model, opset: int = DEFAULT_OPSET, kind: OutputKind = OutputKind.PROBABILITIES):
    """Convert a tf_keras model to an ``onnx.ModelProto`` (not yet checked or saved), its outputs named for ``kind``."""
    import onnx
    import tf2onnx

    import deploykit.export.tf2onnx_ops  # noqa: F401  (registers the handlers tf2onnx lacks: Erfc for GELU)
    from deploykit.backend import tf

    spec = [tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name=INPUT_NAME)]
    try:
        with quiet_native(), grouped_convs_traced_plainly(model):  # grappler's I0000 lines from C++
            proto = _from_keras(tf2onnx, model, spec, opset)
    except Exception as exc:  # tf2onnx raises many types; all mean "this model did not convert"
        raise ConversionError(f"ONNX conversion failed: {one_line(exc)}") from exc
    spec = spec_of(kind)
    names = spec.served_outputs
    if spec.binary:
        _add_binary_head(proto, spec, opset)
    else:
        _rename_output(proto.graph, names[0])
        if spec.from_logits:
            _add_softmax(proto, spec, opset)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:  # an op tf2onnx left unconverted: no runtime would load the file
        raise ConversionError(f"ONNX conversion gave an invalid graph: {one_line(exc)}") from None
    width = model.output_shape[-1] if isinstance(model.output_shape, tuple) else None
    sizes = width_sizes(width, spec.classes(width) if isinstance(width, int) else None)
    check_model_outputs(proto, KIND_DETERMINISTIC, spec.task, sizes, output_kind=kind, where="ONNX export")
    return proto


@contextlib.contextmanager
def grouped_convs_traced_plainly(model):
    """Trace grouped convolutions (``groups > 1``) as the plain convolution op for the duration.

    tf_keras runs a grouped convolution through an XLA-compiled function (a workaround from when TensorFlow's CPU
    kernel lacked groups), which a converter sees as a ``PartitionedCall`` it leaves in the graph: an ONNX file no
    runtime loads. TensorFlow's own Conv2D op takes groups on CPU today, and tf2onnx converts it to an ONNX
    ``Conv`` with its ``group``; the model's outputs are the same.
    """
    patched = [
        layer
        for layer in getattr(model, "layers", ())
        if getattr(layer, "groups", 1) > 1 and hasattr(layer, "_jit_compiled_convolution_op")
    ]
    for layer in patched:
        layer._jit_compiled_convolution_op = layer.convolution_op
    try:
        yield
    finally:
        for layer in patched:
            layer.__dict__.pop("_jit_compiled_convolution_op", None)


_CATCH_ERRORS = "TF2ONNX_CATCH_ERRORS"
_env_lock = threading.Lock()
#: (model name, layer count) of the models whose in-place conversion failed in this process: their next
#: conversions (the pipeline's other variants and tries of the same network) go straight to the copying mode.
_COPYING_ONLY: set[tuple[str, int]] = set()


def _from_keras(tf2onnx, model, spec, opset: int):
    """tf2onnx's ``from_keras`` with its graph optimizers run in place; as tf2onnx runs them by default if that fails.

    By default tf2onnx deep-copies the whole graph, weights included, before each of its optimizer passes (a dozen,
    repeated until nothing changes), so that a pass that raises is skipped: a third of MobileNetV3Small's ONNX
    conversion, and a copy of every weight per pass for a big network. Run in place first (tf2onnx's own
    ``TF2ONNX_CATCH_ERRORS`` switch), the graph is the same when no pass fails. When one fails (tf2onnx's
    transpose pass raises on a scalar constant added after a transpose: MobileNetV3's hard-swish), the conversion
    runs again in tf2onnx's default mode, which skips that pass, so no model converts less often than before; that
    network's next conversions in this process start in that mode.
    """
    key = (str(getattr(model, "name", "")), len(getattr(model, "layers", ())))
    lean = weight_bytes(model) > LEAN_ABOVE
    if key not in _COPYING_ONLY:
        try:
            with _env(_CATCH_ERRORS, "FALSE"):
                return _convert(tf2onnx, model, spec, opset, lean)
        except Exception:  # noqa: BLE001  (a pass or the conversion failed: the default, copying mode decides)
            _COPYING_ONLY.add(key)
    with _env(_CATCH_ERRORS, "TRUE" if lean else None):  # unset: tf2onnx's default, copying mode
        return _convert(tf2onnx, model, spec, opset, lean)


#: Weights (bytes) above which the conversion takes tf2onnx's large-model path (:func:`_convert`).
LEAN_ABOVE = 256 * 2**20


def weight_bytes(model) -> int:
    """The bytes of the model's weights (what every copy the conversion makes costs)."""
    return sum(int(w.shape.num_elements() or 0) * w.dtype.size for w in getattr(model, "weights", ()))


def _convert(tf2onnx, model, spec, opset: int, lean: bool):
    """One tf2onnx conversion. ``lean`` (weights over :data:`LEAN_ABOVE`) takes tf2onnx's large-model path, its
    weights inlined back afterwards (:func:`~deploykit.export.tf2onnx_ops.inline_external`).

    The default path freezes the graph and runs TensorFlow's grappler on it, serialising the frozen GraphDef in and
    out of C++: with the tf2onnx graph, about 19 copies of the weights at the peak. ConvNeXtBase (333 MB) peaked at
    8.3 GB and ConvNeXtXLarge (1.4 GB) was killed on a 24 GiB machine. The large-model path keeps the constants out
    of the GraphDef and skips grappler (tf2onnx's own optimizers still fold constants, and onnxruntime folds what is
    left when it loads the file): ConvNeXtBase peaked at 3.0 GB, converted in a third of the time, within 1.2e-6 of
    Keras 3. Small models keep the default path, whose graph is the tidier.
    """
    from deploykit.export.tf2onnx_ops import inline_external

    proto, storage = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset, large_model=lean)
    if storage is not None:
        inline_external(proto, storage)
    return proto


@contextlib.contextmanager
def _env(name: str, value: str | None):
    """``os.environ[name] = value`` (None: unset) for the duration, the previous state restored after."""
    with _env_lock:
        old = os.environ.get(name)
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
        try:
            yield
        finally:
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def _rename_output(graph, name: str) -> None:
    old = graph.output[0].name
    if old == name:
        return
    retarget(graph, old, name)
    graph.output[0].name = name


def _add_softmax(proto, spec: TaskSpec, opset: int) -> None:
    """``probabilities = Softmax(logits)`` over the last axis (the spec's head), as a second graph output of the
    logits' type and shape."""
    graph, (logits, probabilities) = proto.graph, spec.served_outputs
    spec.onnx_probabilities(GraphBuilder(opset, "deploykit_head", proto), logits, output=probabilities)
    out = graph.output.add()
    out.CopyFrom(graph.output[0])
    out.name = probabilities


def _batch_axis(output):
    """A graph output's batch axis as a new output declares it: its name or size, else ``N``."""
    dims = output.type.tensor_type.shape.dim[:1]
    return next((d.dim_param or d.dim_value for d in dims if d.dim_param or d.dim_value), "N")


def add_probabilities(proto, kind: OutputKind) -> bool:
    """A converter's classifier file (its main output logits or one sigmoid / logit unit): the ``probabilities``
    output the contract serves, appended beside the file's own outputs, which keep their names for the user's
    clients. Nothing for a file that gives probabilities already (False)."""
    import onnx

    spec = spec_of(kind)
    if kind is OutputKind.PROBABILITIES or not spec.classification:
        return False
    graph, name = proto.graph, spec.served_outputs[-1]
    if any(o.name == name for o in graph.output):
        return False
    g, old = GraphBuilder.editing(proto, "deploykit_head"), graph.output[0]
    if kind is OutputKind.SIGMOID:
        spec.onnx_binary_of_probability(g, old.name, output=name)
    else:
        spec.onnx_probabilities(g, old.name, output=name)
    width = 2 if spec.binary else old.type.tensor_type.shape.dim[-1].dim_value or "K"
    graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [_batch_axis(old), width]))
    return True


def _add_binary_head(proto, spec: TaskSpec, opset: int) -> None:
    """A binary head's outputs: ``probabilities`` [N, 2] = Softmax(Concat(0, z)) on its logit z (a sigmoid head's:
    the input of its Sigmoid; without one, Concat(1 - p, p)), and a logits head's ``logits`` [N, 1] beside them."""
    import onnx

    graph, names, g = proto.graph, spec.served_outputs, GraphBuilder(opset, "deploykit_head", proto)
    old = graph.output[0]
    batch = _batch_axis(old)  # read before the output is renamed or removed
    if spec.from_logits:
        _rename_output(graph, names[0])  # logits [N, 1] stay an output
        spec.onnx_probabilities(g, names[0], output=names[-1])
    else:
        sigmoid = next((n for n in graph.node if old.name in n.output), None)
        p = old.name
        if sigmoid is not None and sigmoid.op_type == "Sigmoid":
            spec.onnx_probabilities(g, sigmoid.input[0], output=names[-1])
            if not any(p in n.input for n in graph.node):
                graph.node.remove(sigmoid)  # its P(class 1) is now the softmax's second column
        else:
            spec.onnx_binary_of_probability(g, p, output=names[-1])
        graph.output.remove(old)
    graph.output.append(onnx.helper.make_tensor_value_info(names[-1], onnx.TensorProto.FLOAT, [batch, 2]))
