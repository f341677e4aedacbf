"""Keras 3 operation layers, nested Sequential blocks and keras.applications' own layers, imported as built-ins.

Keras 3 saves ``x + 3.0``, ``ops.clip(x, 0, 6)``... as operation layers whose calls hold constants, and
keras.applications nests Sequential blocks (ConvNeXt) and uses LayerScale / CustomScaleLayer. The
import rewrites them from the config alone (deploykit.keras3.ops) into layers of the support table,
and the result computes what Keras 3 computes.
"""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.errors import UnsupportedLayerError
from deploykit.io.models import load_model


@pytest.fixture(scope="module")
def k3():
    import keras

    import deploykit.backend  # noqa: F401  (TF set up for tf_keras first, as in deploykit itself)

    return keras


def _roundtrip(k3, model, tmp_path, x):
    """Save with Keras 3, import with deploykit; the largest output difference and the tf_keras model."""
    model.save(tmp_path / "m.keras")
    imported = load_model(tmp_path / "m.keras")
    diff = np.abs(imported(x, training=False).numpy() - np.asarray(model(x, training=False))).max()
    return diff, imported


def test_operation_layers_on_constants_import_as_what_they_compute(k3, tmp_path):
    ops = k3.ops
    inputs = k3.Input((4, 4, 3))
    x = k3.layers.Conv2D(3, 1, name="conv")(inputs)
    x = ops.clip(x, -1.0, 6.0)
    x = ops.maximum(x, 0.5)
    x = ops.minimum(2.0, x)
    x = ops.divide(x, 2.0)
    x = 1.0 - x
    x = x * np.array([1.0, 2.0, 3.0], "float32")
    x = x + ops.convert_to_tensor(np.array([1.0, -2.0, 3.0], "float32"))
    x = ops.relu6(x * 4.0)
    x = x + 3.0
    x = ops.hard_sigmoid(x) + ops.hard_silu(x) + ops.sigmoid(x)  # tensor + tensor: Add layers
    x = ops.negative(x) / 3
    x = ops.subtract(x, 1) * 2
    x = ops.maximum(x, np.array([0.1, -0.2, -0.3], "float32"))
    x = ops.minimum(x, np.array([0.1, 0.2, -0.3], "float32"))
    x = ops.softmax(ops.elu(ops.leaky_relu(x * 5.0)) + ops.gelu(x, approximate=False))
    outputs = k3.layers.Dense(2, activation="softmax")(k3.layers.Flatten()(x))
    model = k3.Model(inputs, outputs)
    xs = np.random.default_rng(0).normal(0, 3, (64, 4, 4, 3)).astype(np.float32)
    diff, imported = _roundtrip(k3, model, tmp_path, xs)
    assert diff <= 1e-5
    kinds = {type(layer).__name__ for layer in imported.layers}
    assert {"Rescaling", "ReLU", "Add"} <= kinds


def test_mobilenet_v3_hard_swish_block_folds_and_exports(k3, tmp_path):
    """MobileNetV3's squeeze-excite gate: conv -> x + 3 -> relu6 -> x * (1/6) -> Multiply; the fold takes the +3."""
    from deploykit import fold_batchnorm

    inputs = k3.Input((8, 8, 4))
    h = k3.layers.BatchNormalization(name="bn")(k3.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs))
    gate = k3.layers.Conv2D(4, 1, name="se")(k3.layers.GlobalAveragePooling2D(keepdims=True)(h))
    gate = k3.layers.ReLU(6.0)(gate + 3.0) * (1.0 / 6.0)
    x = k3.layers.Multiply()([h, gate])
    model = k3.Model(inputs, k3.layers.Dense(3, activation="softmax")(k3.layers.GlobalAveragePooling2D()(x)))
    xs = np.random.default_rng(1).normal(size=(32, 8, 8, 4)).astype(np.float32)
    diff, imported = _roundtrip(k3, model, tmp_path, xs)
    assert diff <= 1e-5
    folded, report = fold_batchnorm(imported)
    assert {f.kind for f in report.folded} >= {"BatchNormalization", "Rescaling"}
    assert np.abs(folded(xs).numpy() - imported(xs).numpy()).max() <= 1e-5


def test_nested_sequential_layer_scale_and_custom_scale_are_inlined(k3, tmp_path):
    from keras.src.applications.convnext import LayerScale
    from keras.src.applications.inception_resnet_v2 import CustomScaleLayer

    inputs = k3.Input((6, 6, 3))
    stem = k3.Sequential(
        [
            k3.layers.Conv2D(8, 2, strides=2, name="stem_conv"),
            k3.layers.LayerNormalization(epsilon=1e-6, name="stem_ln"),
        ],
        name="stem",
    )
    h = stem(inputs)
    branch = k3.layers.Dense(8, name="pointwise")(h)
    scaled = LayerScale(1e-6, 8, name="layer_scale")(branch)
    h = k3.layers.Add(name="residual")([h, scaled])
    h = CustomScaleLayer(0.17, name="custom_scale")([h, k3.layers.Conv2D(8, 1, name="side")(h)])
    model = k3.Model(inputs, k3.layers.Dense(2)(k3.layers.GlobalAveragePooling2D()(h)))
    model.get_layer("layer_scale").set_weights([np.linspace(0.5, 2.0, 8).astype("float32")])
    xs = np.random.default_rng(2).normal(size=(32, 6, 6, 3)).astype(np.float32)
    diff, imported = _roundtrip(k3, model, tmp_path, xs)
    assert diff <= 1e-5
    names = {layer.name: type(layer).__name__ for layer in imported.layers}
    assert names["stem_conv"] == "Conv2D" and names["stem_ln"] == "LayerNormalization" and "stem" not in names
    assert names["layer_scale"] == "Rescaling" and names["custom_scale"] == "Add"
    np.testing.assert_array_equal(
        np.asarray(imported.get_layer("layer_scale").scale, np.float32), np.linspace(0.5, 2.0, 8).astype("float32")
    )


@pytest.mark.parametrize("op", ["constant_over_tensor", "sin", "gelu"])
def test_an_operation_without_a_built_in_equivalent_is_refused_by_name(k3, tmp_path, op):
    inputs = k3.Input((4,))
    x = k3.layers.Dense(4)(inputs)
    x = {"constant_over_tensor": lambda: 2.0 / x, "sin": lambda: k3.ops.sin(x), "gelu": lambda: k3.ops.gelu(x)}[op]()
    k3.Model(inputs, k3.layers.Dense(2)(x)).save(tmp_path / "m.keras")
    with pytest.raises(UnsupportedLayerError, match="true_divide|sin|gelu"):
        load_model(tmp_path / "m.keras")


def test_built_in_layers_no_step_understands_still_import_and_export(k3, tmp_path):
    """NASNet's Cropping2D is outside the layer table (a Permute is in it for the MC graph only): imported,
    exported, computing the same."""
    from deploykit import export_variant
    from deploykit.core.layers import Role, support_for
    from deploykit.export.runtimes import OnnxRunner

    inputs = k3.Input((8, 8, 3))
    x = k3.layers.Cropping2D(((1, 0), (1, 0)), name="crop")(k3.layers.Conv2D(4, 3, padding="same")(inputs))
    x = k3.layers.Permute((2, 1, 3), name="permute")(x)
    model = k3.Model(inputs, k3.layers.Dense(3, activation="softmax")(k3.layers.Flatten()(x)))
    xs = np.random.default_rng(3).normal(size=(16, 8, 8, 3)).astype(np.float32)
    diff, imported = _roundtrip(k3, model, tmp_path, xs)
    assert diff <= 1e-5
    assert support_for(imported.get_layer("crop")).role is Role.OTHER
    export_variant(imported, "onnx", "float32", tmp_path / "m.onnx")
    assert np.abs(OnnxRunner(tmp_path / "m.onnx").predict(xs) - np.asarray(model(xs))).max() <= 1e-5


@pytest.mark.parametrize("multiplier", [1, 2])
def test_a_conv_with_one_group_per_channel_imports_as_depthwise_and_exports(k3, tmp_path, multiplier):
    """ConvNeXt's 7x7 ``Conv2D(groups=channels)``: tf_keras would run it as an XLA function that tf2onnx leaves
    as a PartitionedCall no runtime knows; imported as the DepthwiseConv2D it is, onnxruntime runs it as Keras 3
    does. Any other grouped conv stays a Conv2D, traced as TensorFlow's plain grouped op for the export."""
    import onnxruntime as ort

    from deploykit import export_onnx

    inputs = k3.Input((8, 8, 6))
    x = k3.layers.Conv2D(6 * multiplier, 3, padding="same", groups=6, name="grouped")(inputs)
    x = k3.layers.Conv2D(4, 3, groups=2, name="two_groups")(k3.layers.Conv2D(4, 1)(x))  # left as a Conv2D
    model = k3.Model(inputs, k3.layers.Dense(3, activation="softmax")(k3.layers.GlobalAveragePooling2D()(x)))
    xs = np.random.default_rng(2).normal(size=(16, 8, 8, 6)).astype(np.float32)
    diff, imported = _roundtrip(k3, model, tmp_path, xs)
    assert diff <= 1e-5
    assert type(imported.get_layer("grouped")).__name__ == "DepthwiseConv2D"
    assert imported.get_layer("grouped").depth_multiplier == multiplier
    assert type(imported.get_layer("two_groups")).__name__ == "Conv2D"
    export_onnx(imported, tmp_path / "grouped.onnx")  # a general grouped conv: an ONNX Conv with its group
    session = ort.InferenceSession(str(tmp_path / "grouped.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: xs})[0]
    assert np.abs(got - np.asarray(model(xs))).max() <= 1e-5

    single = k3.Sequential([k3.Input((8, 8, 6)), k3.layers.Conv2D(6, 3, groups=6, name="g"), k3.layers.Flatten()])
    diff, imported = _roundtrip(k3, single, tmp_path, xs)
    assert diff <= 1e-5 and type(imported.get_layer("g")).__name__ == "DepthwiseConv2D"
    export_onnx(imported, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: xs})[0]
    assert np.abs(got - np.asarray(single(xs))).max() <= 1e-5


def test_a_failed_rebuild_check_says_when_the_keras3_model_is_chaotic_on_its_own(k3):
    """A deep network with large random weights moves by whole outputs when its inputs change by 1e-6 of
    themselves: float rounding decides its outputs, and the refusal says so rather than blaming the rebuild."""
    from deploykit.keras3.convert import TOLERANCE, _chaotic, _own_change

    def net(stddev: float):
        init = k3.initializers.RandomNormal(stddev=stddev, seed=0)
        layers = [k3.layers.Dense(32, activation="tanh", kernel_initializer=init) for _ in range(24)]
        return k3.Sequential([k3.Input((32,)), *layers, k3.layers.Dense(3, kernel_initializer=init)])

    x = np.random.default_rng(3).standard_normal((64, 32)).astype(np.float32)
    chaotic, tame = _own_change(k3, net(4 / np.sqrt(32)), x), _own_change(k3, net(0.5 / np.sqrt(32)), x)
    assert chaotic > 100 * TOLERANCE and tame < TOLERANCE
    assert "itself moves by" in _chaotic(chaotic) and _chaotic(tame) == ""


def test_operations_that_move_or_pool_values_import_as_the_layers_they_are(k3, tmp_path):
    """keras.io-style functional code: ops.concatenate, expand_dims, squeeze, reshape, transpose, and mean / max /
    sum over a sequence's steps or an image's positions, rewritten from the shapes Keras 3 saves beside each tensor
    (every one was refused: "an operation layer deploykit has no built-in equivalent for"). The imported model
    computes what Keras 3 computes, and exports."""
    import onnxruntime as ort

    from deploykit.export import export_onnx

    ops, layers = k3.ops, k3.layers
    inputs = k3.Input((4, 6))
    seq = layers.Dense(6, activation="relu")(inputs)
    both = ops.concatenate([seq, inputs], axis=1)  # [8, 6]
    image = ops.expand_dims(both, -1)  # [8, 6, 1]
    image = layers.Conv2D(3, 3, padding="same")(image)  # [8, 6, 3]
    pooled = ops.concatenate([ops.mean(image, axis=(1, 2)), ops.max(image, axis=[1, 2])], axis=-1)  # [6]
    steps = ops.squeeze(ops.expand_dims(ops.transpose(seq, (0, 2, 1)), 1), axis=1)  # [6, 4]
    summed = ops.sum(steps, axis=1, keepdims=True)  # [1, 4]
    flat = ops.reshape(summed, (-1, 4))
    outputs = layers.Dense(3, activation="softmax")(ops.concatenate([pooled, flat, ops.max(seq, axis=-2)], axis=1))
    model = k3.Model(inputs, outputs)
    xs = np.random.default_rng(0).normal(size=(32, 4, 6)).astype(np.float32)
    diff, imported = _roundtrip(k3, model, tmp_path, xs)
    assert diff <= 1e-5
    kinds = {type(layer).__name__ for layer in imported.layers}
    assert {"Concatenate", "Reshape", "Permute", "GlobalAveragePooling2D", "GlobalMaxPooling1D"} <= kinds
    path = export_onnx(imported, tmp_path / "m.onnx").path
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: xs})[0]
    assert np.abs(got - np.asarray(model(xs))).max() <= 1e-5


@pytest.mark.parametrize(
    ("op", "says"),
    [
        ("mean_over_channels", "built-in layers pool the axes between the batch and the channels"),
        ("transpose_batch", "move the batch axis"),
        ("sum_of_everything", "includes the batch axis"),
        ("concatenate_batch", "includes the batch axis"),
    ],
)
def test_a_move_or_pooling_with_no_built_in_layer_is_refused_by_name(k3, tmp_path, op, says):
    ops = k3.ops
    inputs = k3.Input((4, 6))
    x = k3.layers.Dense(6)(inputs)
    x = {
        "mean_over_channels": lambda: ops.mean(x, axis=-1),
        "transpose_batch": lambda: ops.transpose(x, (1, 0, 2)),
        "sum_of_everything": lambda: ops.sum(x),
        "concatenate_batch": lambda: ops.concatenate([x, x], axis=0),
    }[op]()
    k3.Model(inputs, x).save(tmp_path / "m.keras")
    with pytest.raises(UnsupportedLayerError, match=says):
        load_model(tmp_path / "m.keras")


def test_slicing_imports_as_crops_and_reshapes(k3, tmp_path):
    """``x[:, -1]`` (a sequence's last step), ``x[:, 2:5]``, ``x[..., 1:3]`` (channels) and a tabular ``x[:, :3]``
    are Keras 3 ``GetItem`` operation layers; each was refused ("an operation layer deploykit has no built-in
    equivalent for"). They import as Cropping1D with Permute / Reshape around it, compute what Keras 3 computes,
    and export."""
    import onnxruntime as ort

    from deploykit.export import export_onnx

    layers = k3.layers
    inputs = k3.Input((8, 6))
    seq = layers.Dense(6)(inputs)
    last, steps, channels = seq[:, -1, :], seq[:, 2:5], seq[..., 1:3]
    table = layers.Dense(5)(last)[:, :3]
    image = layers.Reshape((4, 2, 6))(seq)[:, 1:, -1]  # two axes cut, the second dropped
    joined = [last, layers.Flatten()(steps), layers.Flatten()(channels), table, layers.Flatten()(image)]
    model = k3.Model(inputs, layers.Dense(3)(layers.Concatenate()(joined)))
    xs = np.random.default_rng(0).normal(size=(16, 8, 6)).astype(np.float32)
    diff, imported = _roundtrip(k3, model, tmp_path, xs)
    assert diff <= 1e-5
    assert "Cropping1D" in {type(layer).__name__ for layer in imported.layers}
    path = export_onnx(imported, tmp_path / "m.onnx").path
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: xs})[0]
    assert np.abs(got - np.asarray(model(xs))).max() <= 1e-5


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ((slice(None), slice(None, None, 2)), "slices of step 1"),
        ((slice(0, 4),), "cuts the batch axis"),
        ((slice(None), slice(5, 2)), "keeps nothing of axis 1"),
    ],
)
def test_a_slice_no_crop_can_take_is_refused_by_name(k3, tmp_path, key, says):
    inputs = k3.Input((8, 6))
    k3.Model(inputs, k3.layers.Dense(6)(inputs)[key]).save(tmp_path / "m.keras")
    with pytest.raises(UnsupportedLayerError, match=says):
        load_model(tmp_path / "m.keras")


def test_a_cast_to_float32_is_the_identity_and_any_other_cast_is_refused(k3, tmp_path):
    """``ops.cast(x, "float32")`` (a ``keras.src.ops.core`` operation) was refused as an unknown layer; it is the
    identity on the float32 arrays deploykit feeds. A cast to an integer type truncates: refused by name."""
    inputs = k3.Input((4,))
    model = k3.Model(inputs, k3.ops.cast(k3.layers.Dense(3)(k3.ops.cast(inputs, "float32")), "float32"))
    xs = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    diff, imported = _roundtrip(k3, model, tmp_path, xs)
    assert diff <= 1e-6
    kinds = [type(layer).__name__ for layer in imported.layers]
    assert [k for k in kinds if k != "InputLayer"] == ["Activation", "Dense", "Activation"]
    k3.Model(inputs, k3.ops.cast(inputs, "int32")).save(tmp_path / "int.keras")
    with pytest.raises(UnsupportedLayerError, match="casts to int32"):
        load_model(tmp_path / "int.keras")


def test_abs_square_and_normalize_import_as_relus_a_product_and_unit_normalization(k3, tmp_path):
    """``ops.abs(a - b)`` (a siamese network's L1 distance), ``ops.square`` and ``ops.normalize`` (unit vectors)
    were refused ("an operation layer deploykit has no built-in equivalent for"): abs is ReLU(x) + ReLU(-x), square
    a Multiply of x with itself, normalize a UnitNormalization."""
    inputs = k3.Input((5,))
    a, b = k3.layers.Dense(4)(inputs), k3.layers.Dense(4)(inputs)
    model = k3.Model(inputs, k3.layers.Dense(2)(k3.ops.normalize(k3.ops.abs(a - b) + k3.ops.square(a), axis=-1)))
    xs = np.random.default_rng(9).normal(size=(16, 5)).astype(np.float32)
    diff, imported = _roundtrip(k3, model, tmp_path, xs)
    assert diff <= 1e-5
    kinds = [type(layer).__name__ for layer in imported.layers]
    assert kinds.count("ReLU") == 2 and "Multiply" in kinds and "UnitNormalization" in kinds
