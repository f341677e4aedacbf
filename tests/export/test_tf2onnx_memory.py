"""tf2onnx's optimizer rewrote each node's protobuf in place after every pass, and upb's arenas kept every deleted
copy of the weights (ConvNeXtTiny: 7 GB for 112 MB of weights; ConvNeXtLarge killed at 22 GB). deploykit makes each
rewrite a fresh NodeProto (deploykit.export.tf2onnx_ops): the converted graph must be the one tf2onnx makes itself."""

import collections

import numpy as np


def _convert(model):
    import tf2onnx

    from deploykit.backend import tf

    spec = [tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="input")]
    return tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)[0]


def test_fresh_node_protos_give_the_graph_tf2onnx_gives(monkeypatch):
    import onnxruntime as ort
    from onnx.numpy_helper import to_array
    from tf2onnx.graph import Node

    import deploykit.export.tf2onnx_ops  # noqa: F401  (applies the fix)
    from deploykit.backend import keras

    assert Node.update_proto.deploykit_fresh
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.BatchNormalization()(keras.layers.Conv2D(16, 3, padding="same")(inputs))
    x = keras.layers.Dense(64, activation="gelu")(keras.layers.Flatten()(keras.layers.MaxPooling2D()(x)))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    fresh = _convert(model)
    monkeypatch.setattr(Node, "update_proto", Node.update_proto.original)
    plain = _convert(model)
    assert [n.op_type for n in fresh.graph.node] == [n.op_type for n in plain.graph.node]
    weights = [collections.Counter(to_array(i).tobytes() for i in p.graph.initializer) for p in (fresh, plain)]
    assert weights[0] == weights[1] and sum(weights[0].values()) >= 4  # the kernels and biases, as tf2onnx wrote them
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype(np.float32)
    outs = [
        ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        for p in (fresh, plain)
    ]
    assert np.array_equal(outs[0], outs[1])
