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


def test_big_weights_take_the_lean_path_and_give_the_same_outputs(monkeypatch):
    """Above ``LEAN_ABOVE`` bytes of weights the exporter takes tf2onnx's large-model path (no grappler; ConvNeXtBase:
    3.0 GB at the peak instead of 8.3 GB): the weights come back inline, every output as the default path gives it.
    The threshold is lowered so a tiny model takes it; an LSTM is in it, whose conversion has subgraph tensors."""
    import onnx
    import onnxruntime as ort

    from deploykit.backend import keras
    from deploykit.export import convert, tf2onnx_ops

    moved = []
    inline = tf2onnx_ops.inline_external
    monkeypatch.setattr(tf2onnx_ops, "inline_external", lambda proto, storage: moved.append(inline(proto, storage)))
    inputs = keras.Input((6, 4))
    seq = keras.layers.LSTM(16, return_sequences=True)(inputs)
    x = keras.layers.Dense(64, activation="gelu")(keras.layers.Flatten()(seq))
    x = keras.layers.BatchNormalization()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    model.layers[-2].set_weights([np.random.default_rng(1).uniform(0.5, 1.5, (64,)).astype(np.float32)] * 4)
    assert convert.weight_bytes(model) > 4 * 2048  # the LSTM and Dense kernels
    plain = convert.keras_to_onnx(model)
    monkeypatch.setattr(convert, "LEAN_ABOVE", 0)
    lean = convert.keras_to_onnx(model)
    assert moved == [1]  # tf2onnx moves tensors over 1,024 elements out (the 96x64 kernel); it came back
    external = [t for t in _all_tensors(lean.graph) if t.data_location == onnx.TensorProto.EXTERNAL]
    assert not external and sum(t.ByteSize() for t in _all_tensors(lean.graph)) > convert.weight_bytes(model)
    x = np.random.default_rng(0).normal(size=(5, 6, 4)).astype(np.float32)
    outs = [
        ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        for p in (lean, plain)
    ]
    assert np.abs(outs[0] - outs[1]).max() <= 1e-6
    assert np.abs(outs[0] - model(x, training=False).numpy()).max() <= 1e-5


def _all_tensors(graph):
    from deploykit.export.tf2onnx_ops import _tensors

    return list(_tensors(graph))
