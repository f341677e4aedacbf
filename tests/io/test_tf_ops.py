"""TensorFlow calls in tf_keras models, read as the built-in layers computing them (deploykit.io.tf_ops).

Users of TensorFlow <= 2.15 built functional models with TensorFlow on their tensors: TensorFlow's
transfer-learning tutorial preprocesses with ``mobilenet_v2.preprocess_input`` (``x / 127.5 - 1``), tf_keras's own
MobileNetV3 computes its hard-swish with ``x + 3`` and ``x * (1 / 6)``, and models line tensors up with
``tf.concat``, ``tf.reduce_mean`` and ``x[:, -1]``. tf_keras saves each call as a ``TFOpLambda`` layer naming the
function, and deploykit refused every one (as custom code, or "called with extra arguments"). Now each call of a
known function is the built-in layer it computes; any other function is refused by name before the file loads.
The models are built as their authors wrote them, with tf_keras and TensorFlow, and saved in both formats.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import tensorflow as tf  # module-level, as a user's script has it: the Lambda functions below read it as a global

from deploykit.core.tf_ops import TF_OP_LAYERS
from deploykit.errors import UnsupportedLayerError
from deploykit.io.models import load_model, save_model
from tests.uncertainty.support import run, session, zero_graph_dropout


@pytest.fixture(scope="module")
def tfk():
    from deploykit.backend import keras

    return keras


def _no_tf_ops(model) -> bool:
    return not any(type(layer).__name__ in TF_OP_LAYERS for layer in model.layers)


def _onnx_outputs(model, path, x):
    from deploykit.export import export_onnx

    sess = session(export_onnx(model, path).path)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _transfer_tutorial(keras):
    """TensorFlow's "Transfer learning and fine-tuning" tutorial's model, at 32x32 with a small base."""
    data_augmentation = keras.Sequential([keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.2)])
    preprocess_input = keras.applications.mobilenet_v2.preprocess_input
    base_model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False, weights=None, alpha=0.35)
    base_model.trainable = False
    inputs = keras.Input(shape=(32, 32, 3))
    x = data_augmentation(inputs)
    x = preprocess_input(x)
    x = base_model(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    return keras.Model(inputs, keras.layers.Dense(1)(x))


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_the_tensorflow_transfer_learning_tutorial_model_loads_and_exports(tfk, tmp_path, suffix):
    from deploykit.core.nested import flattened

    model = _transfer_tutorial(tfk)
    save_model(model, tmp_path / f"tutorial{suffix}")
    loaded = load_model(tmp_path / f"tutorial{suffix}")
    assert _no_tf_ops(loaded)
    assert any("read 2 TensorFlow operations" in line for line in flattened(loaded)), flattened(loaded)
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    want = model(x, training=False).numpy()
    assert np.abs(loaded(x).numpy() - want).max() <= 1e-5
    assert np.abs(_onnx_outputs(loaded, tmp_path / "m.onnx", x) - want).max() <= 1e-4


def test_tf_keras_mobilenet_v3_loads_with_its_hard_swish_as_layers(tfk, tmp_path):
    """keras.applications.MobileNetV3Small of tf_keras: its hard-swish is ``x + 3`` / ``x * (1 / 6)``."""
    model = tfk.applications.MobileNetV3Small(input_shape=(32, 32, 3), weights=None, classes=4)
    save_model(model, tmp_path / "mnv3.keras")
    loaded = load_model(tmp_path / "mnv3.keras")
    assert _no_tf_ops(loaded)
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    assert np.abs(loaded(x).numpy() - model(x, training=False).numpy()).max() <= 1e-5


def _tf_calls(keras):
    """Most of the table (deploykit.core.tf_ops.TF_FUNCTIONS), each called as TensorFlow code calls it."""
    inputs = keras.Input((8, 6))
    a = keras.layers.Dense(6, name="a")(tf.cast(inputs, tf.float32))
    both = tf.concat([a * inputs, inputs], axis=-1)  # tensor * tensor, concat
    pooled = tf.reduce_mean(both, axis=1)  # over the steps
    summed = tf.math.reduce_sum(tf.transpose(a, perm=[0, 2, 1]), axis=1, keepdims=True)  # [1, 8]
    last = inputs[:, -1, :]
    g = tf.nn.gelu(keras.layers.Dense(5)(last))  # exact, as TensorFlow's default
    g = tf.reshape(tf.expand_dims(g, -1), (-1, 5))
    s = tf.nn.leaky_relu(tf.clip_by_value(g, -1.0, 2.0), alpha=0.1)
    s = tf.nn.softmax(tf.nn.bias_add(s, tf.constant([0.1, 0.2, 0.3, 0.4, 0.5])), axis=-1)
    attended = tf.squeeze(tf.linalg.matmul(tf.expand_dims(pooled[:, :6], 1), tf.expand_dims(a[:, 0, :], -1)), -1)
    distance = tf.math.abs(g - 0.5) + tf.math.square(s)  # a siamese network's L1 distance, a squared one
    distance = tf.math.l2_normalize(distance, axis=-1)  # an embedding network's unit vectors
    x = tf.concat([pooled, s, tf.nn.relu6(g) - 1.0, tf.squeeze(summed, 1), attended, -tf.math.sigmoid(g), distance],
                  axis=1)  # fmt: skip
    x = keras.layers.Dropout(0.3)(tf.nn.silu(x))
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_tensorflow_calls_between_layers_read_as_the_layers_they_are(tfk, tmp_path, suffix):
    """Each call becomes built-in layers; the model computes what tf_keras computes, in onnxruntime too, and the
    MC Dropout graph (rates at 0) emits every layer and computes it as well."""
    from deploykit.core.graph import graph_from_model
    from deploykit.uncertainty.mc_graph import MCConfig, build_mc_graph

    model = _tf_calls(tfk)
    save_model(model, tmp_path / f"m{suffix}")
    loaded = load_model(tmp_path / f"m{suffix}")
    assert _no_tf_ops(loaded)
    x = np.random.default_rng(1).normal(size=(16, 8, 6)).astype(np.float32)
    want = model(x, training=False).numpy()
    assert np.abs(loaded(x).numpy() - want).max() <= 1e-5
    assert np.abs(_onnx_outputs(loaded, tmp_path / "m.onnx", x) - want).max() <= 1e-5
    mc = run(session(build_mc_graph(zero_graph_dropout(graph_from_model(loaded)), MCConfig(samples=2))), x)
    assert np.abs(mc["mean"] - want).max() <= 1e-5


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_tensorflow_calls_on_two_tensors_inside_and_around_a_nested_model(tfk, tmp_path, suffix):
    """``a * b`` keeps its second tensor among the call's keyword arguments (``{"y": ["ib", 0, 0]}``): flattening the
    nested model re-links those reads too (they named the nested model, which no longer exists)."""
    inner_in = tfk.Input((6,))
    a, b = tfk.layers.Dense(6, name="ia")(inner_in), tfk.layers.Dense(6, name="ib")(inner_in)
    inner = tfk.Model(inner_in, a * b + tf.concat([a, b], -1)[:, :6], name="inner")
    inputs = tfk.Input((6,))
    h = inner(tfk.layers.Dense(6, name="oa")(inputs))
    model = tfk.Model(inputs, tfk.layers.Dense(3, activation="softmax")(tfk.layers.Dense(6, name="ob")(h) * h))
    save_model(model, tmp_path / f"m{suffix}")
    loaded = load_model(tmp_path / f"m{suffix}")
    assert _no_tf_ops(loaded)
    x = np.random.default_rng(3).normal(size=(8, 6)).astype(np.float32)
    assert np.abs(loaded(x).numpy() - model(x).numpy()).max() <= 1e-6


def test_the_timeseries_transformer_tutorials_residuals_are_add_layers(tfk, tmp_path):
    """keras.io's "Timeseries classification with a Transformer" in tf.keras: ``res = x + inputs`` after a
    MultiHeadAttention. tf_keras' ``from_config`` pops MultiHeadAttention's build shapes from the config it is given,
    so the rebuild must not reuse one config twice (it failed with ``KeyError: 'query_shape'``)."""
    layers = tfk.layers
    inputs = tfk.Input((12, 5))
    x = layers.MultiHeadAttention(key_dim=4, num_heads=2, dropout=0.25)(*[layers.LayerNormalization()(inputs)] * 2)
    res = layers.Dropout(0.25)(x) + inputs
    x = layers.Conv1D(5, 1)(layers.Conv1D(4, 1, activation="relu")(layers.LayerNormalization()(res))) + res
    model = tfk.Model(inputs, layers.Dense(2, activation="softmax")(layers.GlobalAveragePooling1D()(x)))
    save_model(model, tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    assert _no_tf_ops(loaded)
    assert sum(type(layer).__name__ == "Add" for layer in loaded.layers) == 2
    x = np.random.default_rng(6).normal(size=(8, 12, 5)).astype(np.float32)
    assert np.abs(loaded(x).numpy() - model(x).numpy()).max() <= 1e-5


def test_a_live_tf_keras_object_with_tensorflow_calls_exports_through_the_api(tfk, tmp_path):
    model = _tf_calls(tfk)
    x = np.random.default_rng(2).normal(size=(8, 8, 6)).astype(np.float32)
    want = model(x, training=False).numpy()
    assert np.abs(_onnx_outputs(model, tmp_path / "m.onnx", x) - want).max() <= 1e-5


def _saved_with_function(tfk, tmp_path, suffix, function: str):
    """A small model whose ``x / 16`` layer names ``function`` instead (the file edited, as a hostile one would)."""
    inputs = tfk.Input((4,))
    model = tfk.Model(inputs, tfk.layers.Dense(2)(inputs / 16.0))
    path = tmp_path / f"m{suffix}"
    save_model(model, path)
    if suffix == ".keras":
        with zipfile.ZipFile(path) as z:
            files = {n: z.read(n) for n in z.namelist()}
        files["config.json"] = files["config.json"].replace(b'"math.truediv"', json.dumps(function).encode())
        with zipfile.ZipFile(path, "w") as z:
            for n, data in files.items():
                z.writestr(n, data)
    else:
        import h5py

        with h5py.File(path, "r+") as f:
            config = f.attrs["model_config"]
            config = config.decode() if isinstance(config, bytes) else config
            f.attrs["model_config"] = config.replace('"math.truediv"', json.dumps(function))
    return path


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
@pytest.mark.parametrize("unsafe", [False, True])
@pytest.mark.parametrize("function", ["io.write_file", "math.cumsum"])
def test_a_tensorflow_function_outside_the_table_is_refused_by_name_before_loading(
    tfk, tmp_path, monkeypatch, suffix, unsafe, function
):
    """Any TensorFlow function can be named in a file; one deploykit does not read (a harmless one, or one that
    writes files) is refused, naming it, before tf_keras deserializes anything, ``--unsafe`` or not."""
    import deploykit.io.models as models

    path = _saved_with_function(tfk, tmp_path, suffix, function)

    def no_load(*args, **kwargs):
        raise AssertionError("tf_keras was asked to load the file")

    monkeypatch.setattr(models, "_LOADERS", {fmt: no_load for fmt in models._LOADERS})
    with pytest.raises(UnsupportedLayerError, match=rf"calls tf\.{function}, a TensorFlow function"):
        load_model(path, unsafe=unsafe)


def test_a_call_with_an_option_no_layer_computes_is_refused_by_name(tfk, tmp_path):
    inputs = tfk.Input((3, 4))
    a = tfk.layers.Dense(4)(inputs)
    out = tf.linalg.matmul(a, inputs, transpose_b=True)
    save_model(tfk.Model(inputs, tfk.layers.Flatten()(out)), tmp_path / "m.keras")
    with pytest.raises(UnsupportedLayerError, match=r"transpose_b=True"):
        load_model(tmp_path / "m.keras")


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_a_trusted_lambda_making_tensorflow_calls_is_read_as_the_layers_they_are(tfk, tmp_path, suffix):
    """TensorFlow's time-series tutorial's ``Lambda(lambda x: x[:, -1:, :])``, the book's ``Lambda(lambda x: x *
    200.0)`` and a Sequential ``Lambda(lambda x: tf.reduce_mean(x, axis=1))``: with ``unsafe`` (the file's code
    trusted, as before) each function is traced into the built-in layers its calls are, so no Lambda is left for
    the steps that cannot read one. Without ``unsafe`` the file is still refused."""
    from deploykit.errors import UnsafeModelError

    inputs = tfk.Input((8, 6))
    h = tfk.layers.Dense(4)(tfk.layers.Lambda(lambda x: x[:, -1:, :])(inputs))
    h = tfk.layers.Flatten()(tfk.layers.Lambda(lambda x: x * 200.0)(h))
    functional = tfk.Model(inputs, tfk.layers.Dense(3, activation="softmax")(h))
    sequential = tfk.Sequential(
        [tfk.Input((8, 6)), tfk.layers.Lambda(lambda x: tf.reduce_mean(x, axis=1)), tfk.layers.Dense(2)]
    )
    x = np.random.default_rng(4).normal(size=(8, 8, 6)).astype(np.float32)
    for model in (functional, sequential):
        path = tmp_path / f"{model.name}{suffix}"
        save_model(model, path)
        with pytest.raises(UnsafeModelError, match="Lambda"):
            load_model(path)
        loaded = load_model(path, unsafe=True)
        assert "Lambda" not in {type(layer).__name__ for layer in loaded.layers}
        assert np.abs(loaded(x).numpy() - model(x).numpy()).max() <= 1e-6


def _segmentation_tutorial(keras):
    """tensorflow.org/tutorials/images/segmentation's U-Net, its code (pix2pix's ``upsample`` with TensorFlow's
    ``tf.random_normal_initializer``), at 32x32 with a small base: a nested model of five outputs, Sequential blocks."""

    def upsample(filters, size):
        initializer = tf.random_normal_initializer(0.0, 0.02)
        result = keras.Sequential()
        result.add(keras.layers.Conv2DTranspose(filters, size, strides=2, padding="same",
                                                kernel_initializer=initializer, use_bias=False))  # fmt: skip
        result.add(keras.layers.BatchNormalization())
        result.add(keras.layers.ReLU())
        return result

    base_model = keras.applications.MobileNetV2(input_shape=[32, 32, 3], include_top=False, weights=None, alpha=0.35)
    names = ["block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu"]
    down_stack = keras.Model(base_model.input, [base_model.get_layer(n).output for n in [*names, "block_16_project"]])
    down_stack.trainable = False
    inputs = keras.layers.Input(shape=[32, 32, 3])
    skips = down_stack(inputs)
    x = skips[-1]
    for up, skip in zip([upsample(32, 3), upsample(16, 3), upsample(16, 3), upsample(8, 3)], reversed(skips[:-1])):
        x = keras.layers.Concatenate()([up(x), skip])
    return keras.Model(inputs, keras.layers.Conv2DTranspose(3, 3, strides=2, padding="same")(x))


def test_tensorflow_initializers_are_tensorflow_code_not_the_users(tfk, tmp_path):
    """tf_keras saves ``tf.random_normal_initializer`` under its TensorFlow module; the segmentation tutorial's
    model was refused as custom code without ``--unsafe``. TensorFlow's own initializers now load as Keras's do
    (any other TensorFlow module is still custom code)."""
    from deploykit.core.modelfile import is_custom

    model = _segmentation_tutorial(tfk)
    save_model(model, tmp_path / "unet.keras")
    loaded = load_model(tmp_path / "unet.keras")
    x = np.random.default_rng(5).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    want = model(x, training=False).numpy().reshape(4, -1)  # deploykit reads one output per row
    assert np.abs(loaded(x).numpy().reshape(4, -1) - want).max() <= 1e-5
    assert np.abs(_onnx_outputs(loaded, tmp_path / "unet.onnx", x).reshape(4, -1) - want).max() <= 1e-4
    assert is_custom({"module": "tensorflow.python.ops.io_ops", "class_name": "RandomNormal"})
    assert is_custom({"module": "tensorflow.python.ops.init_ops_v2", "class_name": "Initializer"})
