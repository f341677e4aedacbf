"""tf_keras -> ONNX conversion with tf2onnx: the one place deploykit calls it.

The graph has one input named ``input`` (float32, dynamic batch) and the outputs
:data:`~deploykit.contract.DETERMINISTIC_OUTPUTS` names for the model's output kind:
``probabilities`` (a softmax classifier), ``logits`` and ``probabilities`` (a logits
classifier: the Softmax is added to the graph), or ``prediction`` (a regressor).
"""

from __future__ import annotations

from deploykit.contract import DETERMINISTIC_OUTPUTS, INPUT_NAME, OUTPUT_NAME  # noqa: F401  (re-exported: the exporters' names)
from deploykit.log import quiet_native
from deploykit.task import OutputKind

DEFAULT_OPSET = 17


def keras_to_onnx(model, opset: int = DEFAULT_OPSET, kind: OutputKind = OutputKind.PROBABILITIES):
    """Convert a tf_keras model to an ``onnx.ModelProto`` (not yet checked or saved), its outputs named for ``kind``."""
    import onnx
    import tf2onnx

    import deploykit.export.tf2onnx_ops  # noqa: F401  (registers the handlers tf2onnx lacks: Erfc for GELU)

    from deploykit.backend import tf

    spec = [tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name=INPUT_NAME)]
    with quiet_native():  # grappler's I0000 lines from C++
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
    names = DETERMINISTIC_OUTPUTS[kind.value]
    _rename_output(proto.graph, names[0])
    if kind is OutputKind.LOGITS:
        _add_softmax(proto.graph, names[0], names[1])
    onnx.checker.check_model(proto)
    return proto


def _rename_output(graph, name: str) -> None:
    old = graph.output[0].name
    if old == name:
        return
    for node in graph.node:
        for i, out in enumerate(node.output):
            if out == old:
                node.output[i] = name
    graph.output[0].name = name


def _add_softmax(graph, logits: str, probabilities: str) -> None:
    """``probabilities = Softmax(logits)`` over the last axis, as a second graph output of the logits' type and shape."""
    import onnx

    graph.node.append(onnx.helper.make_node("Softmax", [logits], [probabilities], axis=-1, name="deploykit_softmax"))
    out = graph.output.add()
    out.CopyFrom(graph.output[0])
    out.name = probabilities
