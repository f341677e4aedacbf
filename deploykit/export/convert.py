"""tf_keras -> ONNX conversion with tf2onnx: the one place deploykit calls it.

The graph has one input named ``input`` (float32, dynamic batch) and one
output named ``probabilities``.
"""

from __future__ import annotations

from deploykit.contract import INPUT_NAME, OUTPUT_NAME  # noqa: F401  (re-exported: the exporters' names)
from deploykit.log import quiet_native

DEFAULT_OPSET = 17


def keras_to_onnx(model, opset: int = DEFAULT_OPSET):
    """Convert a tf_keras model to an ``onnx.ModelProto`` (not yet checked or saved)."""
    import onnx
    import tf2onnx

    import deploykit.export.tf2onnx_ops  # noqa: F401  (registers the handlers tf2onnx lacks: Erfc for GELU)

    from deploykit.backend import tf

    spec = [tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name=INPUT_NAME)]
    with quiet_native():  # grappler's I0000 lines from C++
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
    graph = proto.graph
    old = graph.output[0].name
    if old != OUTPUT_NAME:
        for node in graph.node:
            for i, name in enumerate(node.output):
                if name == old:
                    node.output[i] = OUTPUT_NAME
        graph.output[0].name = OUTPUT_NAME
    onnx.checker.check_model(proto)
    return proto
