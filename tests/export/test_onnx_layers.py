"""A Keras layer's ONNX nodes (``deploykit.export.onnx_layers``): what ``--exclude`` and the int8 fallback reach.

tf2onnx turns a DepthwiseConv2D with a bias (every depthwise conv once the BatchNorm is folded) into a ``Conv`` of a
generated name (``Conv__341``); only its bias initializer keeps the layer's name. MobileNetV2 0.35's ``optimize``
then could not return ``block_1_depthwise`` to float. An untrained model hides it (zero folded biases are dropped
before tf2onnx names the node), so the models here get BatchNorm statistics as training leaves them.
"""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.errors import UsageError
from deploykit.export.onnx_layers import excluded_nodes, layer_nodes


def _graph(nodes, initializers):
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.full(shape, 0.5, np.float32), name) for name, shape in initializers]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph)


def test_a_generated_node_name_is_reached_through_the_weight_named_after_the_layer():
    from onnx import helper

    proto = _graph(
        [
            helper.make_node("Conv", ["x", "const_fold_opt__9", "m/dw/BiasAdd/ReadVariableOp:0"], ["h"], "Conv__7"),
            helper.make_node("Clip", ["h"], ["y"], "m/dw_relu/Relu6"),
        ],
        [("const_fold_opt__9", (2, 1, 3, 3)), ("m/dw/BiasAdd/ReadVariableOp:0", (2,))],
    )
    assert layer_nodes(proto, "dw") == ["Conv__7"]
    assert layer_nodes(proto, "dw_relu") == ["m/dw_relu/Relu6"]  # named after its op, as before
    assert excluded_nodes(proto, ("dw", "Conv__7")) == ["Conv__7"]  # a node's own name too, each node once
    with pytest.raises(UsageError, match="named 'dw2'"):  # a typo is still the user's error
        excluded_nodes(proto, ("dw2",))


def test_a_bias_two_layers_share_names_neither():
    """tf2onnx stores equal constants once: two convs' equal biases are one initializer named after one of them,
    which is no evidence that the other conv is that layer."""
    from onnx import helper

    proto = _graph(
        [
            helper.make_node("Conv", ["x", "k1", "m/a/BiasAdd/ReadVariableOp:0"], ["h"], "Conv__1"),
            helper.make_node("Conv", ["h", "k2", "m/a/BiasAdd/ReadVariableOp:0"], ["y"], "Conv__2"),
        ],
        [("k1", (2, 2, 1, 1)), ("k2", (2, 2, 1, 1)), ("m/a/BiasAdd/ReadVariableOp:0", (2,))],
    )
    with pytest.raises(UsageError, match="named 'a'"):
        excluded_nodes(proto, ("a",))


def _onnx_layout(layer) -> np.ndarray:
    """A Keras layer's kernel as an ONNX node holds it: Conv [out, in per group, kh, kw], MatMul [in, out]."""
    kernel = np.asarray(layer.get_weights()[0])
    if kernel.ndim == 2:
        return kernel
    if type(layer).__name__ == "DepthwiseConv2D":  # [kh, kw, channels, multiplier] -> one input channel per group
        kernel = kernel.reshape(*kernel.shape[:2], 1, -1)
    return kernel.transpose(3, 2, 0, 1)


def _weights(proto) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


def _holds(proto, nodes: list[str], kernel: np.ndarray) -> bool:
    weights = _weights(proto)
    found = [n for n in proto.graph.node if n.name in nodes and len(n.input) > 1 and n.input[1] in weights]
    return any(
        weights[n.input[1]].shape == kernel.shape and np.allclose(weights[n.input[1]], kernel, atol=1e-6) for n in found
    )


def _float_weight(proto, node_name: str) -> bool:
    """Whether the node reads its kernel as a float32 initializer (not through a DequantizeLinear: not int8)."""
    from onnx import TensorProto

    floats = {t.name for t in proto.graph.initializer if t.data_type == TensorProto.FLOAT}
    node = next(n for n in proto.graph.node if n.name == node_name)
    return node.input[1] in floats


def _randomize_batchnorm(model, seed: int = 0) -> None:
    """BatchNorm statistics as a training leaves them (non-zero shifts), so the fold gives every conv a bias."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, var = (tuple(w.shape) for w in layer.weights)
            layer.set_weights(
                [
                    rng.uniform(0.8, 1.2, gamma).astype("float32"),
                    rng.normal(0, 0.3, beta).astype("float32"),
                    rng.normal(0, 0.3, mean).astype("float32"),
                    rng.uniform(0.8, 1.2, var).astype("float32"),
                ]
            )


@pytest.mark.slow
def test_export_int8_static_keeps_an_excluded_depthwise_conv_in_float(tmp_path):
    """The user's path: a Keras 3 model saved as users save it, ``export_onnx(..., exclude=("dw",))``."""
    import keras

    import deploykit.backend  # noqa: F401  (TF set up for tf_keras first, as in deploykit itself)
    from deploykit import load_model
    from deploykit.export.config import QuantConfig
    from deploykit.export.onnx_export import export_onnx
    from deploykit.export.runtimes import OnnxRunner

    layers = keras.layers
    source = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            layers.Conv2D(8, 1, name="expand"),
            layers.BatchNormalization(),
            layers.ReLU(6.0),
            layers.DepthwiseConv2D(3, use_bias=False, name="dw"),
            layers.BatchNormalization(),
            layers.ReLU(6.0),
            layers.GlobalAveragePooling2D(),
            layers.Dense(3, activation="softmax", name="out"),
        ]
    )
    _randomize_batchnorm(source)
    source.save(tmp_path / "model.keras")
    model = load_model(tmp_path / "model.keras")
    x = np.random.default_rng(1).uniform(0, 1, (64, 8, 8, 3)).astype(np.float32)

    config = QuantConfig(num_calibration=32, exclude=("dw",))
    export_onnx(model, tmp_path / "int8.onnx", quantization="int8-static", calibration_data=x, config=config)
    import onnx

    proto = onnx.load(str(tmp_path / "int8.onnx"))
    convs = [n.name for n in proto.graph.node if n.op_type == "Conv"]
    (dw,) = layer_nodes(proto, "dw")
    assert "dw" not in dw.split("/")  # the case this covers: the node is not named after the layer
    assert _float_weight(proto, dw)
    assert [c for c in convs if c != dw] and not any(_float_weight(proto, c) for c in convs if c != dw)  # int8
    assert OnnxRunner(tmp_path / "int8.onnx").predict(x[:4]).shape == (4, 3)


@pytest.mark.slow
def test_every_conv_of_a_folded_mobilenet_v2_maps_to_the_node_holding_its_kernel(tmp_path):
    """keras.applications MobileNetV2 (alpha 0.35, 96x96, weights=None), folded as optimize folds it: every Conv2D,
    DepthwiseConv2D and Dense layer selects a node reading its kernel, and excluding the depthwise convs leaves
    exactly those nodes in float in the int8-static graph."""
    import keras

    import deploykit.backend  # noqa: F401
    from deploykit import load_model
    from deploykit.export.convert import keras_to_onnx
    from deploykit.export.onnx_quant import quantize_int8_static
    from deploykit.fold import fold_batchnorm

    source = keras.applications.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), weights=None, classes=10)
    _randomize_batchnorm(source)
    source.save(tmp_path / "model.keras")
    folded, _ = fold_batchnorm(load_model(tmp_path / "model.keras"))
    proto = keras_to_onnx(folded)

    kinds = ("Conv2D", "DepthwiseConv2D", "Dense")
    weighted = [layer for layer in folded.layers if type(layer).__name__ in kinds]
    depthwise = [layer.name for layer in weighted if type(layer).__name__ == "DepthwiseConv2D"]
    assert len(depthwise) == 17 and len(weighted) == 53
    unmapped = [
        layer.name for layer in weighted if not _holds(proto, layer_nodes(proto, layer.name), _onnx_layout(layer))
    ]
    assert not unmapped

    x = np.random.default_rng(0).uniform(-1, 1, (4, 96, 96, 3)).astype(np.float32)
    int8 = quantize_int8_static(proto, x, exclude=tuple(depthwise))
    kept = {node for name in depthwise for node in layer_nodes(int8, name) if node in _conv_names(int8)}
    assert len(kept) == 17
    assert {c for c in _conv_names(int8) if _float_weight(int8, c)} == kept


def _conv_names(proto) -> list[str]:
    return [n.name for n in proto.graph.node if n.op_type == "Conv"]
