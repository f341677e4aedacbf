"""Structured pruning through depthwise convs: MobileNetV2's expansion channels reach its projection conv through
BN -> ReLU6 -> (ZeroPadding) -> DepthwiseConv2D -> BN -> ReLU6; removing one takes its depthwise filter with it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # a Keras 3 model trained one epoch, pruned and fine-tuned one epoch


def _inverted_residual_net(keras):
    """A stem, an inverted residual block with its Add (stride 1), and one without (stride 2, ZeroPadding), as
    keras.applications.MobileNetV2 writes them."""
    layers = keras.layers
    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = layers.ReLU(6.0)(layers.BatchNormalization()(x))
    h = layers.Conv2D(24, 1, use_bias=False, name="expand_1")(x)
    h = layers.ReLU(6.0)(layers.BatchNormalization()(h))
    h = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="depthwise_1")(h)
    h = layers.ReLU(6.0)(layers.BatchNormalization()(h))
    h = layers.BatchNormalization()(layers.Conv2D(8, 1, use_bias=False, name="project_1")(h))
    x = layers.Add()([x, h])
    h = layers.Conv2D(24, 1, use_bias=False, name="expand_2")(x)
    h = layers.ReLU(6.0)(layers.BatchNormalization()(h))
    h = layers.ZeroPadding2D(((0, 1), (0, 1)))(h)
    h = layers.DepthwiseConv2D(3, strides=2, use_bias=True, name="depthwise_2")(h)
    h = layers.ReLU(6.0)(layers.BatchNormalization()(h))
    h = layers.BatchNormalization()(layers.Conv2D(16, 1, use_bias=False, name="project_2")(h))
    x = layers.GlobalAveragePooling2D()(layers.ReLU(6.0)(h))
    return keras.Model(inputs, layers.Dense(10, activation="softmax", name="out")(x))


def _channels(model) -> dict[str, int]:
    out = {}
    for layer in model.layers:
        kind = type(layer).__name__
        if kind in ("Conv2D", "Dense"):
            out[layer.name] = layer.get_weights()[0].shape[-1]
        elif kind == "DepthwiseConv2D":
            out[layer.name] = layer.get_weights()[0].shape[-2]
    return out


def test_expansion_channels_go_through_the_depthwise_and_the_add_keeps_its_own(digits, tmp_path):
    import keras
    import onnxruntime as ort

    from deploykit.export import export_onnx
    from deploykit.io.models import load_model
    from deploykit.sparsity import prune_structured

    data = dataclasses.replace(
        digits,
        **{f"x_{s}": getattr(digits, f"x_{s}").reshape(-1, 8, 8, 1) / 16 for s in ("train", "val", "test")},
    )
    keras.utils.set_random_seed(0)
    built = _inverted_residual_net(keras)
    built.compile("adam", "sparse_categorical_crossentropy")
    built.fit(data.x_train, data.y_train, epochs=1, verbose=0)
    built.save(tmp_path / "mbv2_block.keras")
    model = load_model(tmp_path / "mbv2_block.keras")

    result, report = prune_structured(model, data, 0.5, epochs=1)  # compact checks the outputs are unchanged
    after = _channels(result)
    assert after["expand_1"] == after["depthwise_1"] == 12 and after["expand_2"] == after["depthwise_2"] == 12
    assert after["project_2"] == 8  # reaches the Dense through BN, ReLU6 and global pooling: free
    assert after["stem"] == after["project_1"] == 8 and after["out"] == 10  # the Add couples them; the outputs stay
    skipped = {layer.name: layer.skipped for layer in report.layers if layer.skipped}
    assert set(skipped) == {"stem", "project_1"} and all("coupled" in why for why in skipped.values())
    assert report.mac_ratio > 1.5
    path = export_onnx(result, tmp_path / "pruned.onnx").path
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probs = session.run(None, {session.get_inputs()[0].name: data.x_test.astype(np.float32)})[0]
    np.testing.assert_allclose(probs, np.asarray(result(data.x_test, training=False)), atol=1e-5)


def test_a_depthwise_that_multiplies_its_channels_is_a_barrier(digits, tmp_path):
    """depth_multiplier 2: output channel c * 2 + m reads input channel c; the routing does not follow it."""
    from deploykit.backend import keras
    from deploykit.core.graph import graph_from_model
    from deploykit.sparsity.dead_neurons import _route

    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 1, name="expand")(inputs)
    h = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(h)
    h = keras.layers.Conv2D(4, 1, name="project")(h)
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(h))
    graph = graph_from_model(keras.Model(inputs, outputs))
    why = _route(graph, graph.node("expand"))
    assert isinstance(why, str) and "'dw'" in why
